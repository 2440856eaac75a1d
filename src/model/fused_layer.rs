//! The decoder layer on a GPU in as few passes over memory as its math allows: four matrix
//! products (cuBLAS; q/k/v as one, gate/up as one), one attention kernel over the cache, and our
//! elementwise kernels between them (`layer_ops.rs`). Computes what the unfused reference in
//! `decoder_layer.rs` computes, rounding where transformers rounds, but for the last residual
//! add, which the down product folds in (one rounding of the sum, not two). The attention half
//! is the same for every layer; the feed-forward half is the block's own
//! ([`FeedForward::add_fused`]): the dense MLP below ([`dense_mlp_into`]), or a Qwen3-MoE sparse
//! layer's grouped expert products (`moe.rs`, `moe_ops.rs`), whose residual add rounds as the
//! reference's does.

use anyhow::Result;
use candle_core::Tensor;

use super::decoder_layer::{DecoderLayer, FeedForward};
use super::dense_gemm::{add_product, product};
use super::kv_cache::KvCache;
use super::layer_ops::{qk_norm_rope_cache, residual_rms_norm, swiglu};
use super::layer_plan::PrefillAttention;
use super::layer_probe::{LayerPart, LayerProbe};
use super::mlp::Mlp;
use super::rope::RotaryTable;

/// x: (L, hidden) at positions `[start, start + L)` → (L, hidden); the chunk's K/V go into `kv`.
pub fn forward<F: FeedForward>(
    layer: &DecoderLayer<F>,
    x: &Tensor,
    start: usize,
    rope: &RotaryTable,
    kv: &KvCache,
    prefill: &PrefillAttention,
    probe: Option<&dyn LayerProbe>,
) -> Result<Tensor> {
    let attn = &layer.self_attn;
    // trace lines name the part a rank is in when it stops (RUST_LOG=qwen3_mpi::model::fused_layer=trace)
    let enter = |part: LayerPart| {
        tracing::trace!("layer {}: {part:?}", attn.layer());
        probe.map_or(Ok(()), |p| p.enter(Some(part)))
    };
    let (heads, kv_heads, head_dim) = attn.heads();
    let len = x.dim(0)?;
    let norm_eps = layer.input_layernorm.eps();

    // Each intermediate is dropped as soon as it is used, so that the memory pool can reuse it
    // within the layer (at 16K tokens of Qwen3-8B they are 0.1-0.8 GB each).
    // 1. RMSNorm, then q, k, v in one product
    enter(LayerPart::Elementwise)?;
    let (_, normed) = residual_rms_norm(x, None, layer.input_layernorm.weight(), norm_eps)?; // (L, hidden)
    enter(LayerPart::Gemm)?;
    let qkv = product(&normed, attn.qkv_weight())?; // (L, (H + 2·KVH)·D)
    drop(normed);

    // 2. q/k norms and RoPE; the chunk's K and V into the cache
    enter(LayerPart::Elementwise)?;
    let layer_kv = kv.layer(attn.layer())?; // (capacity, 2, KVH, D)
    let (cos, sin) = rope.tables();
    let (q_w, k_w, qk_eps) = attn.qk_norms();
    let q = qk_norm_rope_cache(
        &qkv, q_w, k_w, cos, sin, &layer_kv, start, heads, kv_heads, qk_eps,
    )?; // (L, H, D)
    drop(qkv);

    // 3. Attention over cache positions [0, start + L)
    enter(LayerPart::Attention)?;
    let out = attention(&q, kv, &layer_kv, attn.layer(), start, prefill)?; // (L, H, D)
    drop(q);

    // 4. Output projection; residual add and the MLP's RMSNorm in one kernel
    enter(LayerPart::Gemm)?;
    let o = product(&out.reshape((len, heads * head_dim))?, attn.o_weight())?; // (L, hidden)
    drop(out);
    enter(LayerPart::Elementwise)?;
    let post = &layer.post_attention_layernorm;
    let (x, normed) = residual_rms_norm(x, Some(&o), post.weight(), post.eps())?; // (L, hidden) each
    drop(o);

    // 5. The feed-forward block, added into the residual
    layer.mlp.add_fused(&x, normed, probe)?;
    probe.map_or(Ok(()), |p| p.enter(None))?;
    Ok(x)
}

/// The dense SwiGLU MLP of the fused layer: gate and up in one product; the down product adds
/// into the residual x (in place: nothing else may read it). x, normed: (L, hidden)
pub fn dense_mlp_into(mlp: &Mlp, x: &Tensor, normed: Tensor, probe: Option<&dyn LayerProbe>) -> Result<()> {
    let enter = |part: LayerPart| {
        tracing::trace!("MLP: {part:?}");
        probe.map_or(Ok(()), |p| p.enter(Some(part)))
    };
    enter(LayerPart::Gemm)?;
    let gate_up = product(&normed, mlp.gate_up_weight())?; // (L, 2·I)
    drop(normed);
    enter(LayerPart::Elementwise)?;
    let act = swiglu(&gate_up)?; // (L, I)
    drop(gate_up);
    enter(LayerPart::Gemm)?;
    add_product(x, &act, mlp.down_weight())?; // x += act · W_downᵀ: (L, hidden)
    Ok(())
}

/// q (L, H, D) at positions `[start, start + L)` over cache positions `[0, start + L)` →
/// (L, H, D), with the plan's prefill kernel (a single query: the flash-decoding kernel).
fn attention(
    q: &Tensor,
    kv: &KvCache,
    layer_kv: &Tensor,
    layer: usize,
    start: usize,
    prefill: &PrefillAttention,
) -> Result<Tensor> {
    let (len, heads, head_dim) = q.dims3()?;
    let kv_heads = layer_kv.dim(2)?;
    if len == 1 && super::flash_decode::supported(q, head_dim, heads, kv_heads) {
        return Ok(super::flash_decode::decode_attention(q, layer_kv, start + 1)?);
    }
    match prefill {
        #[cfg(feature = "cudnn")]
        PrefillAttention::Cudnn(cudnn) => Ok(cudnn.prefill_attention(q, layer_kv, start)?),
        PrefillAttention::Flash if super::flash_attention::supported(q, head_dim) => {
            Ok(super::flash_attention::prefill_attention(q, layer_kv, start)?)
        }
        _ => super::attention::reference_attention(q, kv, layer, start),
    }
}
