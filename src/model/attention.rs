//! Causal self-attention with per-head q/k RMSNorm, RoPE and grouped-query KV heads, reading
//! and writing the caller's KV cache.

use anyhow::Result;
use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, RmsNorm};

use super::config::Qwen3Config;
use super::kv_cache::KvCache;
use super::layer_weights::LayerWeights;
use super::rope::RotaryTable;

pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    layer: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn load(w: &LayerWeights, cfg: &Qwen3Config, layer: usize) -> Result<Self> {
        Ok(Self {
            q_proj: w.linear("self_attn.q_proj")?,
            k_proj: w.linear("self_attn.k_proj")?,
            v_proj: w.linear("self_attn.v_proj")?,
            o_proj: w.linear("self_attn.o_proj")?,
            q_norm: w.rms_norm("self_attn.q_norm")?,
            k_norm: w.rms_norm("self_attn.k_norm")?,
            layer,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// Attention of a chunk at positions `[start, start + L)` over cache positions
    /// `[0, start + L)`. Writes this chunk's K/V into `kv` first.
    /// x: (L, hidden) → (L, hidden)
    pub fn forward(&self, x: &Tensor, start: usize, rope: &RotaryTable, kv: &KvCache) -> Result<Tensor> {
        let len = x.dim(0)?;
        let end = start + len;
        let (h, kvh, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let group = h / kvh;

        // 1. Projections and per-head norms: (L, heads, D)
        let q = self
            .q_norm
            .forward(&self.q_proj.forward(x)?.reshape((len, h, d))?)?;
        let k = self
            .k_norm
            .forward(&self.k_proj.forward(x)?.reshape((len, kvh, d))?)?;
        let v = self.v_proj.forward(x)?.reshape((len, kvh, d))?;

        // 2. RoPE at the chunk's positions
        let q = rope.apply(&q, start)?; // (L, H, D)
        let k = rope.apply(&k, start)?; // (L, KVH, D)

        // 3. This chunk's K/V into the cache, then read the prefix [0, end)
        kv.write(self.layer, start, &k, &v)?;
        #[cfg(feature = "cuda")]
        if len > 1 && super::flash_attention::supported(&q, d) && !reference_attention() {
            let layer_kv = kv.layer(self.layer)?; // (capacity, 2, KVH, D)
            let out = super::flash_attention::prefill_attention(&q, &layer_kv, start)?; // (L, H, D)
            return Ok(self.o_proj.forward(&out.reshape((len, h * d))?)?); // (L, hidden)
        }
        #[cfg(feature = "cuda")]
        if super::flash_decode::supported(&q, d, h, kvh) && !reference_attention() {
            let layer_kv = kv.layer(self.layer)?; // (capacity, 2, KVH, D)
            let out = super::flash_decode::decode_attention(&q, &layer_kv, end)?; // (1, H, D)
            return Ok(self.o_proj.forward(&out.reshape((1, h * d))?)?); // (1, hidden)
        }
        let (k_all, v_all) = kv.prefix(self.layer, end)?; // (end, KVH, D)
        let k_all = k_all.transpose(0, 1)?.contiguous()?; // (KVH, end, D)
        let v_all = v_all.transpose(0, 1)?.contiguous()?; // (KVH, end, D)

        // 4. Scores per KV head; the `group` query heads that share a KV head are stacked:
        //    (H, L, D) → (KVH, G*L, D)
        let q = q.transpose(0, 1)?.contiguous()?.reshape((kvh, group * len, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k_all.t()?)? * scale)?; // (KVH, G*L, end)
        let scores = scores.to_dtype(DType::F32)?;
        let scores = if len > 1 {
            let mask = causal_mask(start, len, x.device())?; // (L, end)
            scores
                .reshape((kvh, group, len, end))?
                .broadcast_add(&mask)?
                .reshape((kvh, group * len, end))?
        } else {
            scores // one query at the newest position sees every cached key
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v_all.dtype())?;

        // 5. Weighted values, heads back to the hidden layout
        let out = probs.matmul(&v_all)?; // (KVH, G*L, D)
        let out = out.reshape((h, len, d))?.transpose(0, 1)?.reshape((len, h * d))?; // (L, H*D)
        Ok(self.o_proj.forward(&out)?) // (L, hidden)
    }
}

/// `QWEN3_MPI_ATTENTION=reference` keeps prefill and decode on the GPU on the unfused path (checks).
#[cfg(feature = "cuda")]
fn reference_attention() -> bool {
    static REFERENCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFERENCE.get_or_init(|| std::env::var("QWEN3_MPI_ATTENTION").as_deref() == Ok("reference"))
}

/// Additive causal mask for queries at `[start, start + len)` over keys `[0, start + len)`:
/// 0 where key ≤ query, −∞ elsewhere. (L, end), f32, built on `device` (no host copy).
fn causal_mask(start: usize, len: usize, device: &candle_core::Device) -> Result<Tensor> {
    let end = start + len;
    let queries = Tensor::arange(start as u32, end as u32, device)?.reshape((len, 1))?; // (L, 1)
    let keys = Tensor::arange(0u32, end as u32, device)?.reshape((1, end))?; // (1, end)
    let visible = keys.broadcast_le(&queries)?; // (L, end), u8
    let zero = Tensor::zeros((len, end), DType::F32, device)?;
    let hidden = Tensor::full(f32::NEG_INFINITY, (len, end), device)?;
    Ok(visible.where_cond(&zero, &hidden)?)
}
