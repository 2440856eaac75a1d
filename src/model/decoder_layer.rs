//! One Qwen3 decoder layer: pre-norm attention and a pre-norm feed-forward block, both
//! residual. The block is the dense SwiGLU MLP, or in a Qwen3-MoE sparse layer the MoE block;
//! both run on the fused GPU layer (`fused_layer.rs`: the same attention half, the block's own
//! feed-forward half) where the plan says so.

use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::RmsNorm;

use super::attention::Attention;
use super::config::Qwen3Config;
use super::kv_cache::KvCache;
use super::layer_plan::LayerPlan;
use super::layer_probe::{LayerPart, LayerProbe};
use super::layer_weights::{LayerWeights, WeightLoader};
use super::mlp::Mlp;
use super::moe::SparseMoe;
use super::rope::RotaryTable;

/// The feed-forward half of a layer: x (L, hidden) → (L, hidden).
pub trait FeedForward {
    /// The part of the layer it is in a trace's `--op-spans` (none: not timed on its own).
    const PART: Option<LayerPart>;
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// The fused GPU layer's feed-forward half: x += block(normed), in place (`x` is a tensor
    /// nothing else reads); `probe` sees its parts. x, normed: (L, hidden)
    #[cfg(feature = "cuda")]
    fn add_fused(&self, x: &Tensor, normed: Tensor, probe: Option<&dyn LayerProbe>) -> Result<()>;
}

impl FeedForward for Mlp {
    const PART: Option<LayerPart> = None;
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Mlp::forward(self, x)
    }

    #[cfg(feature = "cuda")]
    fn add_fused(&self, x: &Tensor, normed: Tensor, probe: Option<&dyn LayerProbe>) -> Result<()> {
        super::fused_layer::dense_mlp_into(self, x, normed, probe)
    }
}

impl FeedForward for SparseMoe {
    const PART: Option<LayerPart> = Some(LayerPart::Moe);
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        SparseMoe::forward(self, x)
    }

    #[cfg(feature = "cuda")]
    fn add_fused(&self, x: &Tensor, normed: Tensor, probe: Option<&dyn LayerProbe>) -> Result<()> {
        probe.map_or(Ok(()), |p| p.enter(Some(LayerPart::Moe)))?;
        SparseMoe::add_fused(self, x, &normed)
    }
}

/// A decoder layer with feed-forward block `F` (the dense MLP unless named).
pub struct DecoderLayer<F = Mlp> {
    pub(super) input_layernorm: RmsNorm,
    pub(super) self_attn: Attention,
    pub(super) post_attention_layernorm: RmsNorm,
    pub(super) mlp: F,
}

/// A layer of the model as its config makes it.
pub enum Layer {
    Dense(DecoderLayer),
    /// A Qwen3-MoE sparse layer.
    Sparse(DecoderLayer<SparseMoe>),
}

impl Layer {
    /// Loads layer `layer`: sparse where the config says so.
    pub fn load(loader: WeightLoader, cfg: &Qwen3Config, layer: usize) -> Result<Self> {
        let w = LayerWeights::new(loader, cfg, layer);
        Ok(if cfg.is_sparse_layer(layer) {
            let moe = SparseMoe::load(&w, cfg, layer)?;
            Self::Sparse(DecoderLayer::load_with(&w, cfg, layer, moe)?)
        } else {
            Self::Dense(DecoderLayer::load_with(&w, cfg, layer, Mlp::load(&w)?)?)
        })
    }

    /// The layer's norms and attention: (input norm, attention, post-attention norm).
    pub fn attention(&self) -> (&RmsNorm, &Attention, &RmsNorm) {
        match self {
            Self::Dense(l) => (&l.input_layernorm, &l.self_attn, &l.post_attention_layernorm),
            Self::Sparse(l) => (&l.input_layernorm, &l.self_attn, &l.post_attention_layernorm),
        }
    }

    /// x: (L, hidden) at positions `[start, start + L)` → (L, hidden). Writes the chunk's K/V
    /// into `kv`. `probe` (if any) sees where each part of the fused layer's work begins, and
    /// a sparse layer's MoE block.
    pub fn forward(
        &self,
        x: &Tensor,
        start: usize,
        rope: &RotaryTable,
        kv: &KvCache,
        plan: &LayerPlan,
        probe: Option<&dyn LayerProbe>,
    ) -> Result<Tensor> {
        match self {
            Self::Dense(layer) => layer.forward(x, start, rope, kv, plan, probe),
            Self::Sparse(layer) => layer.forward(x, start, rope, kv, plan, probe),
        }
    }
}

impl<F: FeedForward> DecoderLayer<F> {
    fn load_with(w: &LayerWeights, cfg: &Qwen3Config, layer: usize, mlp: F) -> Result<Self> {
        Ok(Self {
            input_layernorm: w.rms_norm("input_layernorm")?,
            self_attn: Attention::load(w, cfg, layer)?,
            post_attention_layernorm: w.rms_norm("post_attention_layernorm")?,
            mlp,
        })
    }

    /// The unfused reference in plain tensor operations; `probe` sees the feed-forward block
    /// where it is a part of its own ([`FeedForward::PART`]). x: (L, hidden) → (L, hidden)
    pub fn forward_unfused(
        &self,
        x: &Tensor,
        start: usize,
        rope: &RotaryTable,
        kv: &KvCache,
        probe: Option<&dyn LayerProbe>,
    ) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, start, rope, kv)?;
        let x = (x + attn)?;
        let normed = self.post_attention_layernorm.forward(&x)?;
        let probe = probe.filter(|_| F::PART.is_some());
        probe.map_or(Ok(()), |p| p.enter(F::PART))?;
        let mlp = self.mlp.forward(&normed)?;
        probe.map_or(Ok(()), |p| p.enter(None))?;
        Ok((x + mlp)?)
    }

    /// As [`Layer::forward`], on the fused GPU layer where the plan says so.
    pub fn forward(
        &self,
        x: &Tensor,
        start: usize,
        rope: &RotaryTable,
        kv: &KvCache,
        plan: &LayerPlan,
        probe: Option<&dyn LayerProbe>,
    ) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if plan.fused {
            return super::fused_layer::forward(self, x, start, rope, kv, &plan.prefill, probe);
        }
        let _ = plan;
        self.forward_unfused(x, start, rope, kv, probe)
    }
}
