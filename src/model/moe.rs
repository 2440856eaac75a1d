//! The sparse mixture-of-experts block of Qwen3-MoE (transformers' `Qwen3MoeSparseMoeBlock`):
//! router logits → softmax over experts in f32 → top k → (renormalised) weights → the chosen
//! experts' SwiGLU outputs, weighted, summed.
//!
//! Rounding follows transformers 5.x's default experts path (`grouped_mm`): the logits and the
//! experts' products in the model dtype, the probabilities and their renormalisation in f32,
//! the weights cast to the model dtype and multiplied in it, each token's k weighted outputs
//! summed in f32 and rounded once. A chunk's (token, expert) pairs are grouped by expert
//! (`router.rs`), so each expert runs its rows as one matrix product, and an expert no token
//! chose is not read at all: a decode step touches only its k experts. [`SparseMoe::forward`]
//! is plain tensor operations (the CPU, and the reference on a GPU); the fused GPU layer runs
//! [`SparseMoe::add_fused`] instead: the routing on the device, every expert's product of a
//! projection as one grouped cuBLAS call (`moe_ops.rs`). The experts are held stacked, one
//! (E, 2·I, hidden) gate/up tensor and one (E, hidden, I) down tensor, each expert's [`Mlp`] a
//! view of its slice.

use anyhow::{Context, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::Linear;

use super::config::{MoeConfig, Qwen3Config};
use super::layer_weights::LayerWeights;
use super::mlp::Mlp;
use super::router::{route, Routing};
use super::weight_names::{expert_key, fused_expert_specs, layer_prefix, ROUTER};

/// The most experts, and experts per token, the GPU kernels take (`kernels/moe_ops.cu`).
pub const GPU_MAX_EXPERTS: usize = 256;
pub const GPU_MAX_TOP_K: usize = 8;

pub struct SparseMoe {
    /// The router: (experts, hidden)
    gate: Linear,
    /// Every expert's gate and up projections: (E, 2·I, hidden), each expert's gate rows first
    gate_up: Tensor,
    /// Every expert's down projection: (E, hidden, I)
    down: Tensor,
    /// Each expert a SwiGLU MLP of `moe_intermediate_size`, over its slices of the two above.
    experts: Vec<Mlp>,
    top_k: usize,
    norm_topk_prob: bool,
    layer: usize,
}

impl SparseMoe {
    /// Layer `layer`'s router and experts, one tensor per expert and projection as published,
    /// or fused as transformers 5.x can also save them.
    pub fn load(w: &LayerWeights, cfg: &Qwen3Config, layer: usize) -> Result<Self> {
        let moe = cfg
            .moe
            .as_ref()
            .context("internal: a sparse layer in a dense model")?;
        let per_expert = format!("{}.{}.gate_proj.weight", layer_prefix(layer), expert_key(0));
        let (gate_up, down) = match fused_expert_specs(cfg, layer) {
            Some([gate_up, down]) if !w.contains(&per_expert)? && w.contains(&gate_up.name)? => {
                (w.tensor(&gate_up)?, w.tensor(&down)?) // (E, 2·I, hidden), (E, hidden, I)
            }
            _ => stack_experts(w, moe, cfg.hidden_size)
                .with_context(|| format!("layer {layer}: stacking the experts' weights"))?,
        };
        let experts = (0..moe.num_experts)
            .map(|e| Ok(Mlp::new(gate_up.get(e)?, down.get(e)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            gate: w.linear(ROUTER)?,
            gate_up,
            down,
            experts,
            top_k: moe.num_experts_per_tok,
            norm_topk_prob: moe.norm_topk_prob,
            layer,
        })
    }

    /// The router's weight: (E, hidden)
    pub fn router_weight(&self) -> &Tensor {
        self.gate.weight()
    }

    /// Every expert's gate/up weight (E, 2·I, hidden), gate rows first, and down weight
    /// (E, hidden, I).
    pub fn expert_weights(&self) -> (&Tensor, &Tensor) {
        (&self.gate_up, &self.down)
    }

    /// Experts per token, and whether their weights are renormalised.
    pub fn top_k(&self) -> (usize, bool) {
        (self.top_k, self.norm_topk_prob)
    }

    /// Which experts each token of `x` (L, hidden) goes to, with what weight.
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let logits = self.gate.forward(x)?; // (L, E), model dtype
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?; // (L, E), f32
        let experts = self.experts.len();
        let probs = probs.flatten_all()?.to_vec1::<f32>()?; // to the host: L·E values
        Ok(route(&probs, experts, self.top_k, self.norm_topk_prob))
    }

    /// x: (L, hidden) → (L, hidden)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (len, hidden) = x.dims2()?;
        let (dtype, device) = (x.dtype(), x.device());

        // 1. Router: each token's k experts and weights, the pairs grouped by expert
        let routing = self.route(x)?;
        let pairs = routing.rows.len(); // S = L·k

        // 2. Each chosen expert's rows through it as one product
        let rows = Tensor::from_slice(&routing.rows, pairs, device)?;
        let gathered = x.index_select(&rows, 0)?; // (S, hidden)
        let outputs = routing
            .groups
            .iter()
            .map(|g| {
                let expert = self.experts.get(g.expert).with_context(|| {
                    format!("internal: layer {}: router chose no such expert", self.layer)
                })?;
                expert.forward(&gathered.narrow(0, g.start, g.len)?) // (n_e, hidden)
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = Tensor::cat(&outputs, 0)?; // (S, hidden), rows in routing order

        // 3. Weighted in the model dtype; each token's k rows summed in f32, rounded once
        let weights = Tensor::from_slice(&routing.weights, (pairs, 1), device)?.to_dtype(dtype)?; // (S, 1)
        let weighted = outputs.broadcast_mul(&weights)?; // (S, hidden)
        let token_rows = Tensor::from_slice(&routing.token_rows, pairs, device)?;
        let per_token = weighted
            .index_select(&token_rows, 0)? // (L·k, hidden), token-major
            .reshape((len, self.top_k, hidden))?; // (L, k, hidden)
        Ok(per_token.to_dtype(DType::F32)?.sum(1)?.to_dtype(dtype)?) // (L, hidden)
    }

    /// The fused GPU layer's MoE block: x += MoE(normed), in place (`x` must be a tensor
    /// nothing else reads, as [`super::dense_gemm::add_product`]'s). One small copy to the host:
    /// each expert's row count, the grouped products' sizes. x, normed: (L, hidden)
    #[cfg(feature = "cuda")]
    pub fn add_fused(&self, x: &Tensor, normed: &Tensor) -> Result<()> {
        use super::moe_ops::{combine_into, expert_products, gather, ExpertGemm, ExpertLayout};
        let in_layer = || format!("layer {}: MoE block", self.layer);
        // 1. Router logits in the model dtype; each token's experts and weights on the device
        let logits = self.gate.forward(normed)?; // (L, E)
        let routing =
            super::moe_ops::route(&logits, self.top_k, self.norm_topk_prob).with_context(in_layer)?;
        drop(logits);
        let layout = ExpertLayout::new(&routing.counts, ExpertGemm::chosen()?, normed.device())
            .with_context(in_layer)?;

        // 2. Each expert's rows side by side, through its gate/up, SwiGLU and down products
        let gathered = gather(normed, &routing, &layout).with_context(in_layer)?; // (rows, hidden)
        let gate_up = expert_products(&gathered, &self.gate_up, &layout).with_context(in_layer)?; // (rows, 2·I)
        drop(gathered);
        let act = super::layer_ops::swiglu(&gate_up)?; // (rows, I)
        drop(gate_up);
        let out = expert_products(&act, &self.down, &layout).with_context(in_layer)?; // (rows, hidden)
        drop(act);

        // 3. x += each token's k outputs weighted in the model dtype, summed in f32, rounded once
        combine_into(x, &out, &routing, &layout).with_context(in_layer)?;
        Ok(())
    }
}

/// Every expert's published tensors copied into the two stacked ones, one expert at a time
/// (so that loading holds one expert's tensors beside them, not a second copy of all).
/// → gate/up (E, 2·I, hidden), gate rows first; down (E, hidden, I)
fn stack_experts(w: &LayerWeights, moe: &MoeConfig, hidden: usize) -> Result<(Tensor, Tensor)> {
    let (experts, inter) = (moe.num_experts, moe.moe_intermediate_size);
    let (dtype, device) = w.dtype_device();
    let gate_up = Tensor::zeros((experts * 2 * inter, hidden), dtype, device)?; // (E·2·I, hidden)
    let down = Tensor::zeros((experts * hidden, inter), dtype, device)?; // (E·hidden, I)
    for e in 0..experts {
        let key = expert_key(e);
        let gate = w.linear(&format!("{key}.gate_proj"))?; // (I, hidden)
        gate_up.slice_set(gate.weight(), 0, e * 2 * inter)?;
        let up = w.linear(&format!("{key}.up_proj"))?; // (I, hidden)
        gate_up.slice_set(up.weight(), 0, e * 2 * inter + inter)?;
        let expert_down = w.linear(&format!("{key}.down_proj"))?; // (hidden, I)
        down.slice_set(expert_down.weight(), 0, e * hidden)?;
    }
    Ok((
        gate_up.reshape((experts, 2 * inter, hidden))?,
        down.reshape((experts, hidden, inter))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layer_weights::WeightLoader;
    use crate::model::weights::SyntheticWeights;
    use candle_core::{Device, IndexOp};

    fn tiny_moe() -> Qwen3Config {
        let json = serde_json::from_str(crate::model::tiny::MOE_CONFIG_JSON).unwrap();
        Qwen3Config::from_json(&json).unwrap()
    }

    fn block(cfg: &Qwen3Config, layer: usize, dtype: DType) -> SparseMoe {
        let source = SyntheticWeights { seed: 5 };
        let loader = WeightLoader {
            source: &source,
            dtype,
            device: &Device::Cpu,
        };
        SparseMoe::load(&LayerWeights::new(loader, cfg, layer), cfg, layer).unwrap()
    }

    fn input(len: usize, hidden: usize) -> Tensor {
        let values: Vec<f32> = (0..len * hidden)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.7)
            .collect();
        Tensor::from_vec(values, (len, hidden), &Device::Cpu).unwrap()
    }

    /// Token by token, expert by expert: the definition, without grouping.
    fn per_token_reference(moe: &SparseMoe, x: &Tensor) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        for t in 0..x.dim(0).unwrap() {
            let row = x.i(t..t + 1).unwrap(); // (1, hidden)
            let routing = moe.route(&row).unwrap();
            let mut sum = vec![0f32; x.dim(1).unwrap()];
            for (g, &w) in routing.groups.iter().zip(&routing.weights) {
                let y: Vec<f32> = moe.experts[g.expert]
                    .forward(&row)
                    .unwrap()
                    .i(0)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for (s, v) in sum.iter_mut().zip(y) {
                    *s += v * w;
                }
            }
            out.push(sum);
        }
        out
    }

    #[test]
    fn grouped_by_expert_equals_each_token_through_its_experts() {
        let cfg = tiny_moe();
        let layer = (0..cfg.num_hidden_layers)
            .find(|&l| cfg.is_sparse_layer(l))
            .unwrap();
        let moe = block(&cfg, layer, DType::F32);
        let x = input(13, cfg.hidden_size);
        let grouped: Vec<Vec<f32>> = moe.forward(&x).unwrap().to_vec2().unwrap();
        let reference = per_token_reference(&moe, &x);
        let routing = moe.route(&x).unwrap();
        assert!(
            routing.groups.len() > cfg.moe.as_ref().unwrap().num_experts_per_tok,
            "one group"
        );
        for (t, (a, b)) in grouped.iter().zip(&reference).enumerate() {
            for (u, v) in a.iter().zip(b) {
                assert!((u - v).abs() <= 1e-6 * (1.0 + v.abs()), "token {t}: {u} vs {v}");
            }
        }
        // a chunk's rows do not depend on the other tokens in it
        let alone: Vec<f32> = moe
            .forward(&x.i(4..5).unwrap())
            .unwrap()
            .i(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (u, v) in alone.iter().zip(&grouped[4]) {
            assert!((u - v).abs() <= 1e-6 * (1.0 + v.abs()));
        }
    }

    #[test]
    fn tied_router_probabilities_give_the_same_output_whichever_expert_comes_first() {
        // experts 0 and 1 with identical router rows: swapping the two experts' weights must not
        // change a token that chose both (a tie inside the top k), and a tie at the k-th place
        // goes to expert 0
        let cfg = tiny_moe();
        let layer = (0..cfg.num_hidden_layers)
            .find(|&l| cfg.is_sparse_layer(l))
            .unwrap();
        let mut moe = block(&cfg, layer, DType::F32);
        let router = moe.gate.weight().clone();
        let row0 = router.i(0..1).unwrap();
        let tied = Tensor::cat(&[&row0, &row0, &router.i(2..).unwrap()], 0).unwrap(); // (E, hidden)
        moe.gate = Linear::new(tied, None);
        let x = input(64, cfg.hidden_size);
        let routing = moe.route(&x).unwrap();
        let k = moe.top_k;
        let chosen = |t: usize, e: usize| {
            routing.token_rows[t * k..(t + 1) * k].iter().any(|&row| {
                routing
                    .groups
                    .iter()
                    .any(|g| g.expert == e && (g.start..g.start + g.len).contains(&(row as usize)))
            })
        };
        let a: Vec<Vec<f32>> = moe.forward(&x).unwrap().to_vec2().unwrap();
        moe.experts.swap(0, 1);
        let b: Vec<Vec<f32>> = moe.forward(&x).unwrap().to_vec2().unwrap();
        let mut both = 0;
        for t in 0..64 {
            match (chosen(t, 0), chosen(t, 1)) {
                (false, true) => panic!("token {t}: the tie at the k-th place went to expert 1"),
                (true, false) => continue,
                (true, true) => both += 1,
                (false, false) => {}
            }
            for (u, v) in a[t].iter().zip(&b[t]) {
                assert!((u - v).abs() <= 1e-6 * (1.0 + v.abs()), "token {t}: {u} vs {v}");
            }
        }
        assert!(both > 0, "no token chose both tied experts");
    }

    #[test]
    fn bf16_rounds_like_f32_within_bf16_precision() {
        let cfg = tiny_moe();
        let layer = (0..cfg.num_hidden_layers)
            .find(|&l| cfg.is_sparse_layer(l))
            .unwrap();
        let x = input(5, cfg.hidden_size);
        let f32_out: Vec<f32> = block(&cfg, layer, DType::F32)
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let bf16 = block(&cfg, layer, DType::BF16);
        let out = bf16.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(out.dtype(), DType::BF16);
        let bf16_out: Vec<f32> = out
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = f32_out.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (u, v) in bf16_out.iter().zip(&f32_out) {
            assert!((u - v).abs() <= 0.05 * scale, "{u} vs {v}");
        }
    }
}
