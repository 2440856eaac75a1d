//! Causal self-attention with per-head q/k RMSNorm, RoPE and grouped-query KV heads, reading
//! and writing the caller's KV cache: the weights, and the unfused reference computation. The
//! fused GPU layer (`fused_layer.rs`) uses the same weights with its own kernels.

use anyhow::Result;
use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, RmsNorm};

use super::config::Qwen3Config;
use super::kv_cache::KvCache;
use super::layer_weights::LayerWeights;
use super::rope::RotaryTable;

pub struct Attention {
    /// q, k and v projections as one: (H·D + 2·KVH·D, hidden)
    qkv_proj: Linear,
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
            qkv_proj: w.stacked_linear(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])?,
            o_proj: w.linear("self_attn.o_proj")?,
            q_norm: w.rms_norm("self_attn.q_norm")?,
            k_norm: w.rms_norm("self_attn.k_norm")?,
            layer,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// The fused q/k/v projection: x (L, hidden) → (L, (H + 2·KVH)·D)
    pub fn qkv(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.qkv_proj.forward(x)?)
    }

    /// attn (L, H·D) → (L, hidden)
    pub fn output(&self, attn: &Tensor) -> Result<Tensor> {
        Ok(self.o_proj.forward(attn)?)
    }

    /// (H·D + 2·KVH·D, hidden)
    pub fn qkv_weight(&self) -> &Tensor {
        self.qkv_proj.weight()
    }

    /// (hidden, H·D)
    pub fn o_weight(&self) -> &Tensor {
        self.o_proj.weight()
    }

    /// The per-head norms' weights, each (D), and their epsilon.
    pub fn qk_norms(&self) -> (&Tensor, &Tensor, f64) {
        (self.q_norm.weight(), self.k_norm.weight(), self.q_norm.eps())
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    /// (H, KVH, D)
    pub fn heads(&self) -> (usize, usize, usize) {
        (self.n_heads, self.n_kv_heads, self.head_dim)
    }

    /// The unfused reference (the CPU path, and `QWEN3_MPI_ATTENTION=reference` on a GPU):
    /// attention of a chunk at positions `[start, start + L)` over cache positions
    /// `[0, start + L)`. Writes this chunk's K/V into `kv` first.
    /// x: (L, hidden) → (L, hidden)
    pub fn forward(&self, x: &Tensor, start: usize, rope: &RotaryTable, kv: &KvCache) -> Result<Tensor> {
        let len = x.dim(0)?;
        let (h, kvh, d) = (self.n_heads, self.n_kv_heads, self.head_dim);

        // 1. Projections and per-head norms: (L, heads, D)
        let qkv = self.qkv(x)?; // (L, (H + 2·KVH)·D)
        let q = qkv.narrow(1, 0, h * d)?.contiguous()?.reshape((len, h, d))?;
        let k = qkv
            .narrow(1, h * d, kvh * d)?
            .contiguous()?
            .reshape((len, kvh, d))?;
        let v = qkv
            .narrow(1, (h + kvh) * d, kvh * d)?
            .contiguous()?
            .reshape((len, kvh, d))?;
        let q = self.q_norm.forward(&q)?;
        let k = self.k_norm.forward(&k)?;

        // 2. RoPE at the chunk's positions
        let q = rope.apply(&q, start)?; // (L, H, D)
        let k = rope.apply(&k, start)?; // (L, KVH, D)

        // 3. This chunk's K/V into the cache, then attention over the prefix [0, end)
        kv.write(self.layer, start, &k, &v)?;
        let out = reference_attention(&q, kv, self.layer, start)?; // (L, H, D)
        self.output(&out.reshape((len, h * d))?) // (L, hidden)
    }
}

/// Attention of queries q at positions `[start, start + L)` over cache positions
/// `[0, start + L)` of `layer`, in plain tensor operations (scores materialised in f32).
/// q: (L, H, D) → (L, H, D)
pub fn reference_attention(q: &Tensor, kv: &KvCache, layer: usize, start: usize) -> Result<Tensor> {
    let (len, h, d) = q.dims3()?;
    let end = start + len;
    let (k_all, v_all) = kv.prefix(layer, end)?; // (end, KVH, D)
    let kvh = k_all.dim(1)?;
    let group = h / kvh;
    let k_all = k_all.transpose(0, 1)?.contiguous()?; // (KVH, end, D)
    let v_all = v_all.transpose(0, 1)?.contiguous()?; // (KVH, end, D)

    // Scores per KV head; the `group` query heads that share a KV head are stacked:
    // (H, L, D) → (KVH, G·L, D)
    let q = q.transpose(0, 1)?.contiguous()?.reshape((kvh, group * len, d))?;
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&k_all.t()?)? * scale)?; // (KVH, G·L, end)
    let scores = scores.to_dtype(DType::F32)?;
    let scores = if len > 1 {
        let mask = causal_mask(start, len, q.device())?; // (L, end)
        scores
            .reshape((kvh, group, len, end))?
            .broadcast_add(&mask)?
            .reshape((kvh, group * len, end))?
    } else {
        scores // one query at the newest position sees every cached key
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v_all.dtype())?;

    // Weighted values, heads back to the query layout
    let out = probs.matmul(&v_all)?; // (KVH, G·L, D)
    Ok(out.reshape((h, len, d))?.transpose(0, 1)?.contiguous()?) // (L, H, D)
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
