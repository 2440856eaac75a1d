//! What a chunk costs one stage: a model of one decoder layer's time for a chunk of `n` prompt
//! positions starting at position `s`, and of a hidden state's hop to the next stage. The
//! chunk choice (`chunk_choice`) and the prefill prediction (`prefill_time`) are built on it.
//!
//! One layer, one chunk:
//!
//! ```text
//! t(n, s) = max(floor, fixed + max(products(n), weights / bandwidth) + attention(n, s))
//! products(n) = per_token · n · (1 + (fill_rows / rows)^1.5)      rows = n (dense)
//! attention(n, s) = per_pair · (n·s + n(n+1)/2) · max(1, attention_fill / (n · query heads))
//! ```
//!
//! - the matrix products (q/k/v, o, the MLP) cost `per_token` a position at full efficiency,
//!   and lose efficiency on few rows (tiles and waves that do not fill the GPU; `fill_rows` is
//!   the row count at which they run at half speed). An expert's products see only the rows
//!   routed to it, `n · k / experts` on average.
//! - they read every weight of the layer once per chunk, so no chunk is faster than streaming
//!   the layer's weights from memory.
//! - causal attention over the cache costs `per_pair` per (query, key) pair, and more on few
//!   queries: its blocks (a tile of queries of one head each) then leave multiprocessors idle,
//!   so below `attention_fill` query rows × heads its time stops shrinking with the queries.
//! - `fixed`: small kernels, per layer and chunk.
//! - `floor`: no layer runs faster than the host issues its kernels (a GPU waits for them when
//!   each is short); on long chunks the host runs ahead and this costs nothing.
//!
//! The rates ([`DeviceRates`]) are fitted on measured traces; each says where from.

use crate::model::weight_names::stage_parameter_count;
use crate::model::{Qwen3Config, StageParts};

/// A device class's rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceRates {
    /// Shown with the choice, e.g. "GPU (rates fitted on an H200)".
    pub name: &'static str,
    /// FLOP/s of a layer's matrix products at full efficiency, with the layer's elementwise work
    /// (norms, RoPE, SwiGLU) counted in.
    pub product_flops: f64,
    /// Rows at which a 4,096-wide model's products run at half speed.
    pub fill_rows: f64,
    /// Whether fill rows scale as 4,096 / the model's width: a GPU's products fill its many
    /// multiprocessors with tiles of rows × columns, so narrower products need more rows; a
    /// CPU's few cores fill at any width.
    pub fill_scales_with_width: bool,
    /// FLOP/s of causal attention (4 · query heads · head_dim FLOPs per pair).
    pub attention_flops: f64,
    /// Query rows × query heads at which causal attention runs at `attention_flops`; fewer
    /// run it slower in proportion (0: never).
    pub attention_fill: f64,
    /// Seconds below which no layer of one chunk runs (0: none).
    pub floor_s: f64,
    /// Bytes/s at which weights stream from memory.
    pub memory_bytes_per_s: f64,
    /// Seconds per layer and chunk that do not scale with its length.
    pub fixed_s: f64,
}

impl DeviceRates {
    /// One H200, bf16. Products, their fill rows and attention: the Qwen3-8B shape, 16K tokens
    /// in chunks of 128 to 4,096, one rank (`results/bench/2026-12-01-h200-session7`,
    /// `scripts/gpu_check/chunk_cost.sh`, `trace fit-cost` over 9,072 layer spans): products
    /// 5.99e-7 s a token (645 TFLOP/s), half speed at 148 rows, attention 3.07e-11 s a pair
    /// (533 TFLOP/s) and slower below 11,600 query rows × heads (362 rows of 32 heads); no fixed
    /// cost or floor that the 8B shape shows (its shortest chunks' layers take 0.23 ms). Each
    /// chunk length's mean layer time within 4 % of the fit. Floor: the 0.6B shape (hidden 1024,
    /// 16 query heads), 16K tokens in chunks of 128 and 1,024
    /// (`results/bench/2026-12-01-h200-session6`): 128-token chunks' layers take 0.11–0.12 ms
    /// near position 0 whatever their work. Memory: the card's measured copy rate, 4.1 TB/s.
    pub const GPU: Self = Self {
        name: "GPU (rates fitted on an H200)",
        product_flops: 645e12,
        fill_rows: 148.0,
        fill_scales_with_width: true,
        attention_flops: 533e12,
        attention_fill: 11600.0,
        floor_s: 115e-6,
        memory_bytes_per_s: 4.1e12,
        fixed_s: 0.0,
    };

    /// A rank on CPU cores (candle's f32 kernels): `trace fit-cost` on `--model tiny` traces of
    /// one rank, 1,024 tokens in chunks of 8 to 512, release build, on a 2-core machine like
    /// CI's (2026-12-01): products 8.1e-6 s a token a layer (15 GFLOP/s at that shape), half
    /// speed at 12 rows, attention 4.3e-8 s a pair. Fixed cost: the fit put it at zero; 20 µs
    /// stands for candle's per-op dispatch. Timings there vary by ±30 % run to run, and ranks
    /// that share cores slow each other down, which the model does not know: on the CPU the
    /// prediction is rough.
    pub const CPU: Self = Self {
        name: "CPU",
        product_flops: 15e9,
        fill_rows: 12.0,
        fill_scales_with_width: false,
        attention_flops: 12e9,
        attention_fill: 0.0,
        floor_s: 0.0,
        memory_bytes_per_s: 10e9,
        fixed_s: 20e-6,
    };
}

impl DeviceRates {
    /// Fill rows for a model `hidden` wide.
    pub fn fill_rows_at(&self, hidden: usize) -> f64 {
        match self.fill_scales_with_width {
            true => self.fill_rows * 4096.0 / hidden as f64,
            false => self.fill_rows,
        }
    }

    /// The `fill_rows` figure (at the 4,096 width) of `rows` seen on a model `hidden` wide.
    pub fn fill_rows_from(&self, rows: f64, hidden: usize) -> f64 {
        match self.fill_scales_with_width {
            true => rows * hidden as f64 / 4096.0,
            false => rows,
        }
    }
}

/// FLOPs of a dense decoder layer's matrix products a token (two per weight: q/k/v, o, MLP).
pub fn dense_layer_flops_per_token(cfg: &Qwen3Config) -> f64 {
    2.0 * (attention_params(cfg) + 3.0 * (cfg.hidden_size * cfg.intermediate_size) as f64)
}

/// FLOPs of causal attention a (query, key) pair: QKᵀ and PV over every query head.
pub fn attention_flops_per_pair(cfg: &Qwen3Config) -> f64 {
    4.0 * (cfg.num_attention_heads * cfg.head_dim) as f64
}

/// Weights of the q, k, v and o projections.
fn attention_params(cfg: &Qwen3Config) -> f64 {
    let q_width = cfg.num_attention_heads * cfg.head_dim;
    let kv_width = cfg.num_key_value_heads * cfg.head_dim;
    (cfg.hidden_size * (2 * q_width + 2 * kv_width)) as f64
}

/// A hidden state's hop from one stage to the next: `latency + bytes / bandwidth`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HopCost {
    pub name: &'static str,
    pub latency_s: f64,
    pub bytes_per_s: f64,
}

impl HopCost {
    /// GPU → page-locked host → MPI → GPU: 3–5 ms per 8 MiB hop measured on 4 x H200
    /// (`results/bench/NOTES.md`, 2026-11-26).
    pub const GPU_HOST: Self = Self {
        name: "host",
        latency_s: 200e-6,
        bytes_per_s: 2.2e9,
    };
    /// CUDA IPC into the next GPU's memory on a copy engine: assumed (the target of issue 19,
    /// ≤ 0.5 ms per 8 MiB) until `scripts/gpu_check/handoff_hops.sh` measures it between two
    /// GPUs. With 2–3 ranks sharing one H200 an 8 MiB hop took 0.63–0.81 ms (median per run,
    /// 2026-12-01 session 6), the ranks' contexts taking turns on the one GPU.
    pub const GPU_IPC: Self = Self {
        name: "ipc",
        latency_s: 30e-6,
        bytes_per_s: 50e9,
    };
    /// GPU to GPU by a CUDA-aware MPI (`--hidden-transport device`): assumed, an InfiniBand
    /// HDR link's rate (unmeasured).
    pub const GPU_MPI: Self = Self {
        name: "device",
        latency_s: 50e-6,
        bytes_per_s: 20e9,
    };
    /// Between CPU ranks (MPI through shared memory).
    pub const CPU: Self = Self {
        name: "mpi",
        latency_s: 20e-6,
        bytes_per_s: 5e9,
    };

    pub fn seconds(&self, bytes: f64) -> f64 {
        self.latency_s + bytes / self.bytes_per_s
    }
}

/// A group of matrix products of a layer: `per_token_s` a position at full efficiency, on
/// `rows_share · n` rows of a chunk of `n` (1 for dense products, k / experts for experts).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Products {
    per_token_s: f64,
    rows_share: f64,
}

/// One decoder layer's cost model (the module docs' formula).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerCost {
    fixed_s: f64,
    fill_rows: f64,
    groups: Vec<Products>,
    /// Streaming the layer's weights once.
    weights_s: f64,
    per_pair_s: f64,
    /// Query rows below which attention runs slower in proportion (the rates' fill over this
    /// model's query heads).
    attention_fill_rows: f64,
    floor_s: f64,
}

impl LayerCost {
    /// Decoder layer `layer` of `cfg` at `rates`, weights of `dtype_bytes` each.
    pub fn new(cfg: &Qwen3Config, layer: usize, rates: &DeviceRates, dtype_bytes: usize) -> Self {
        let per_token = |flops: f64| flops / rates.product_flops;
        let groups = match cfg.moe.as_ref().filter(|moe| moe.is_sparse(layer)) {
            Some(moe) => {
                let hidden = cfg.hidden_size as f64;
                let expert = 3.0 * hidden * moe.moe_intermediate_size as f64;
                let router = hidden * moe.num_experts as f64;
                let k = moe.num_experts_per_tok as f64;
                vec![
                    Products {
                        per_token_s: per_token(2.0 * (attention_params(cfg) + router)),
                        rows_share: 1.0,
                    },
                    Products {
                        per_token_s: per_token(2.0 * k * expert),
                        rows_share: k / moe.num_experts as f64,
                    },
                ]
            }
            None => vec![Products {
                per_token_s: per_token(dense_layer_flops_per_token(cfg)),
                rows_share: 1.0,
            }],
        };
        // every weight of the layer, each expert included, read once a chunk
        let no_parts = StageParts {
            embed: false,
            head: false,
        };
        let weights = stage_parameter_count(cfg, layer..layer + 1, no_parts) as f64;
        Self {
            fixed_s: rates.fixed_s,
            fill_rows: rates.fill_rows_at(cfg.hidden_size),
            groups,
            weights_s: weights * dtype_bytes as f64 / rates.memory_bytes_per_s,
            per_pair_s: attention_flops_per_pair(cfg) / rates.attention_flops,
            attention_fill_rows: rates.attention_fill / cfg.num_attention_heads.max(1) as f64,
            floor_s: rates.floor_s,
        }
    }

    /// Seconds for a chunk of `len` positions starting at `start`.
    pub fn chunk_s(&self, len: usize, start: usize) -> f64 {
        if len == 0 {
            return 0.0;
        }
        let n = len as f64;
        let products: f64 = self
            .groups
            .iter()
            .map(|g| {
                let rows = (n * g.rows_share).max(1.0);
                g.per_token_s * n * (1.0 + (self.fill_rows / rows).powf(1.5))
            })
            .sum();
        let pairs = n * start as f64 + n * (n + 1.0) / 2.0;
        let attention_slowdown = (self.attention_fill_rows / n).max(1.0);
        let work = self.fixed_s + products.max(self.weights_s) + self.per_pair_s * pairs * attention_slowdown;
        work.max(self.floor_s)
    }

    /// The position at which a token's attention costs as much as its matrix products (at
    /// full efficiency): balanced chunking's scale.
    pub fn attention_scale(&self) -> f64 {
        let per_token: f64 = self.groups.iter().map(|g| g.per_token_s).sum();
        per_token / self.per_pair_s
    }
}

/// Everything the chunk choice needs about the job: each layer's cost, the hop, the head.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCost {
    pub rates: DeviceRates,
    pub hop: HopCost,
    /// Index = decoder layer.
    pub layers: Vec<LayerCost>,
    /// Bytes of one position's hidden state on a hop.
    pub hidden_bytes: f64,
    /// The last rank's logits of the last position (reading the head's weights once).
    pub head_s: f64,
}

impl JobCost {
    pub fn new(cfg: &Qwen3Config, rates: DeviceRates, hop: HopCost, dtype_bytes: usize) -> Self {
        let layers = (0..cfg.num_hidden_layers)
            .map(|layer| LayerCost::new(cfg, layer, &rates, dtype_bytes))
            .collect();
        let head_bytes = (cfg.vocab_size * cfg.hidden_size * dtype_bytes) as f64;
        Self {
            rates,
            hop,
            layers,
            hidden_bytes: (cfg.hidden_size * dtype_bytes) as f64,
            head_s: head_bytes / rates.memory_bytes_per_s,
        }
    }

    /// Seconds for `layers` to run a chunk.
    pub fn layers_s(&self, layers: std::ops::Range<usize>, len: usize, start: usize) -> f64 {
        self.layers[layers].iter().map(|l| l.chunk_s(len, start)).sum()
    }

    /// A hidden state of `len` positions, one hop.
    pub fn hop_s(&self, len: usize) -> f64 {
        self.hop.seconds(len as f64 * self.hidden_bytes)
    }

    /// Balanced chunking's scale (the first layer's: every layer's attention is the same).
    pub fn attention_scale(&self) -> f64 {
        self.layers
            .first()
            .map_or(f64::INFINITY, LayerCost::attention_scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::shapes::{
        qwen3_0_6b as qwen3_0_6b_config, qwen3_30b_a3b as qwen3_30b_a3b_config, qwen3_8b as qwen3_8b_config,
    };

    /// The H200 traces the GPU rates were fitted on (`results/bench/2026-12-01-h200-session7`,
    /// Qwen3-8B shape, 16K tokens in chunks of each length, one rank): the mean ms a layer over
    /// every chunk of the prompt, and the first chunk's median (position 0).
    const H200_8B_CHUNKED_LAYER_MS: [(usize, f64, f64); 6] = [
        (128, 0.265, 0.233),
        (256, 0.313, 0.203),
        (512, 0.480, 0.331),
        (1024, 0.934, 0.668),
        (2048, 1.824, 1.308),
        (4096, 3.644, 2.761),
    ];

    /// Within 6 % on every chunk length's mean, and on the first chunk from 1,024 tokens (the
    /// shortest first chunks take their time in launches, which the mean hides: 256-token
    /// first chunks ran faster than 128-token ones).
    #[test]
    fn gpu_rates_reproduce_the_h200_layer_times_they_were_fitted_on() {
        let cost = LayerCost::new(&qwen3_8b_config(), 0, &DeviceRates::GPU, 2);
        for (len, mean, first) in H200_8B_CHUNKED_LAYER_MS {
            let starts = (0..16384).step_by(len);
            let predicted =
                starts.clone().map(|s| cost.chunk_s(len, s)).sum::<f64>() * 1e3 / starts.count() as f64;
            assert!(
                (predicted / mean - 1.0).abs() < 0.06,
                "{len}: predicted {predicted:.3} ms, measured {mean:.3} ms (mean)"
            );
            let predicted_first = cost.chunk_s(len, 0) * 1e3;
            assert!(
                len < 1024 || (predicted_first / first - 1.0).abs() < 0.06,
                "{len} at 0: predicted {predicted_first:.3} ms, measured {first:.3} ms"
            );
        }
    }

    /// Earlier one-chunk prefills of the 8B shape on an H200, another build
    /// (`results/bench/2026-12-01-h200-session2` and `2026-12-01-h200`, per-layer median):
    /// (chunk length, start, ms). The rates were not fitted on them.
    const H200_ONE_CHUNK_LAYER_MS: [(usize, usize, f64); 4] = [
        (4096, 0, 2.677),
        (16384, 0, 14.12),
        (8192, 0, 6.11),
        (8192, 8192, 8.386),
    ];

    #[test]
    fn gpu_rates_predict_earlier_one_chunk_prefills() {
        let cost = LayerCost::new(&qwen3_8b_config(), 0, &DeviceRates::GPU, 2);
        for (len, start, measured) in H200_ONE_CHUNK_LAYER_MS {
            let predicted = cost.chunk_s(len, start) * 1e3;
            assert!(
                (predicted / measured - 1.0).abs() < 0.06,
                "{len} at {start}: predicted {predicted:.3} ms, measured {measured:.3} ms"
            );
        }
    }

    /// This session's H200 run of the 0.6B shape (`results/bench/2026-12-01-h200-session6`,
    /// `trace fit-cost` of `scripts/gpu_check/chunk_cost.sh`): 16K tokens in chunks of each
    /// length, mean ms a layer over every chunk of the prompt.
    const H200_06B_LAYER_MS: [(usize, f64); 6] = [
        (128, 0.173),
        (256, 0.206),
        (512, 0.178),
        (1024, 0.223),
        (2048, 0.390),
        (4096, 0.759),
    ];

    /// Within 30 % on every length (the products and attention rates come from the 8B shape;
    /// 256-token chunks, which ran slower than 512-token ones there, are the worst), within 10 %
    /// from 1,024 tokens. Without the floor and attention's slowdown on few queries
    /// the model put 128-token chunks at a third of their time.
    #[test]
    fn gpu_rates_follow_the_small_models_short_chunks() {
        let cost = LayerCost::new(&qwen3_0_6b_config(), 0, &DeviceRates::GPU, 2);
        for (len, measured) in H200_06B_LAYER_MS {
            let starts = (0..16384).step_by(len);
            let predicted =
                starts.clone().map(|s| cost.chunk_s(len, s)).sum::<f64>() * 1e3 / starts.count() as f64;
            let tolerance = if len >= 1024 { 0.1 } else { 0.3 };
            assert!(
                (predicted / measured - 1.0).abs() < tolerance,
                "{len}: predicted {predicted:.3} ms, measured {measured:.3} ms"
            );
        }
    }

    #[test]
    fn short_chunks_cost_more_per_token_and_later_ones_more_for_attention() {
        let cost = LayerCost::new(&qwen3_8b_config(), 0, &DeviceRates::GPU, 2);
        let per_token = |len: usize| cost.chunk_s(len, 0) / len as f64;
        assert!(per_token(64) > 2.0 * per_token(1024));
        assert!(per_token(256) > per_token(512) && per_token(512) > per_token(1024));
        // streaming the weights bounds a chunk of one token
        assert!(cost.chunk_s(1, 0) >= cost.weights_s);
        assert!(cost.chunk_s(1024, 15360) > 1.5 * cost.chunk_s(1024, 0));
    }

    #[test]
    fn experts_see_a_share_of_the_rows_and_every_expert_is_streamed() {
        let cfg = qwen3_30b_a3b_config();
        let sparse = LayerCost::new(&cfg, 0, &DeviceRates::GPU, 2);
        assert_eq!(sparse.groups.len(), 2);
        assert!((sparse.groups[1].rows_share - 8.0 / 128.0).abs() < 1e-12);
        // 128 experts of 3 x 2048 x 768 bf16 weights, streamed once a chunk
        let expert_bytes = 128.0 * 3.0 * 2048.0 * 768.0 * 2.0;
        assert!(sparse.weights_s > expert_bytes / DeviceRates::GPU.memory_bytes_per_s);
        // an expert's products on 64 rows a chunk (1,024 tokens) are far from full speed
        let dense_like = sparse.groups[1].per_token_s * 1024.0;
        assert!(sparse.chunk_s(1024, 0) > 1.3 * dense_like);
    }
}
