//! What our attention kernels take from candle: bf16 device views of contiguous queries and of
//! one contiguous layer of the KV cache, with their shapes.

use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice};
use candle_core::Layout;

pub struct AttentionInputs<'a> {
    /// (L, H, D)
    pub q: CudaView<'a, half::bf16>,
    /// (capacity, 2, KVH, D)
    pub kv: CudaView<'a, half::bf16>,
    /// (L, H, D)
    pub q_dims: (usize, usize, usize),
    /// Positions the cache layer holds.
    pub capacity: usize,
}

/// The kernel inputs, or an error naming `kernel` when they are not bf16 or not contiguous.
pub fn attention_inputs<'a>(
    kernel: &str,
    q: &'a CudaStorage,
    q_layout: &Layout,
    kv: &'a CudaStorage,
    kv_layout: &Layout,
) -> candle_core::Result<AttentionInputs<'a>> {
    let (CudaStorageSlice::BF16(q_all), CudaStorageSlice::BF16(kv_all)) = (&q.slice, &kv.slice) else {
        candle_core::bail!("{kernel} attention takes bf16")
    };
    let Some((q_begin, q_end)) = q_layout.contiguous_offsets() else {
        candle_core::bail!("{kernel} attention: queries must be contiguous")
    };
    let Some((kv_begin, kv_end)) = kv_layout.contiguous_offsets() else {
        candle_core::bail!("{kernel} attention: the cache layer must be contiguous")
    };
    Ok(AttentionInputs {
        q: q_all.slice(q_begin..q_end),
        kv: kv_all.slice(kv_begin..kv_end),
        q_dims: q_layout.shape().dims3()?,
        capacity: kv_layout.shape().dims4()?.0,
    })
}
