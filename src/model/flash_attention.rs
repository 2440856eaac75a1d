//! Chunked causal prefill attention on the GPU in one kernel (`kernels/attention.cu`):
//! scores never leave the chip, and K/V are read from the cache in place. bf16, head_dim 128
//! (every Qwen3 size); elsewhere the layer uses the reference path in `attention.rs`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));
}

pub const HEAD_DIM: usize = 128;
const Q_TILE: usize = 64;
const THREADS: u32 = 128;

/// Whether the kernel covers this shape and precision.
pub fn supported(q: &Tensor, head_dim: usize) -> bool {
    q.device().is_cuda() && q.dtype() == DType::BF16 && head_dim == HEAD_DIM
}

/// Attention of queries at positions `[start, start + L)` over cache positions
/// `[0, start + L)`.
/// q: (L, H, D) → (L, H, D); `layer_kv`: one layer of the cache, (capacity, 2, KVH, D).
pub fn prefill_attention(q: &Tensor, layer_kv: &Tensor, start: usize) -> candle_core::Result<Tensor> {
    let (_, heads, _) = q.dims3()?;
    let (_, _, kv_heads, _) = layer_kv.dims4()?;
    let op = FlashPrefill {
        start,
        heads,
        kv_heads,
        scale_log2: std::f32::consts::LOG2_E / (HEAD_DIM as f32).sqrt(),
    };
    q.contiguous()?.apply_op2_no_bwd(layer_kv, &op)
}

struct FlashPrefill {
    start: usize,
    heads: usize,
    kv_heads: usize,
    scale_log2: f32,
}

impl CustomOp2 for FlashPrefill {
    fn name(&self) -> &'static str {
        "flash-prefill"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash prefill attention runs on the GPU only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        kv: &CudaStorage,
        kv_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (CudaStorageSlice::BF16(q_all), CudaStorageSlice::BF16(kv_all)) = (&q.slice, &kv.slice) else {
            candle_core::bail!("flash prefill attention takes bf16")
        };
        let Some((q_begin, q_end)) = q_layout.contiguous_offsets() else {
            candle_core::bail!("flash prefill attention: queries must be contiguous")
        };
        let Some((kv_begin, kv_end)) = kv_layout.contiguous_offsets() else {
            candle_core::bail!("flash prefill attention: the cache layer must be contiguous")
        };
        let (len, heads, dim) = q_layout.shape().dims3()?;
        let capacity = kv_layout.shape().dims()[0];
        if heads != self.heads || dim != HEAD_DIM || heads % self.kv_heads != 0 {
            candle_core::bail!(
                "flash prefill attention: unsupported shape {:?}",
                q_layout.shape()
            );
        }
        if self.start + len > capacity {
            candle_core::bail!("flash prefill attention: positions beyond the cache");
        }
        let device = q.device();
        let q_view = q_all.slice(q_begin..q_end);
        let kv_view = kv_all.slice(kv_begin..kv_end);
        // SAFETY: every element is written by the kernel (each (row < L, head) once).
        let out = unsafe { device.alloc::<half::bf16>(len * heads * dim)? };
        let func = device.get_or_load_custom_func(
            "flash_attn_prefill_bf16",
            "qwen3_mpi_attention",
            ptx::ATTENTION,
        )?;
        let config = LaunchConfig {
            grid_dim: (len.div_ceil(Q_TILE) as u32, heads as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (len_i, start_i) = (len as i32, self.start as i32);
        let (heads_i, kv_heads_i) = (heads as i32, self.kv_heads as i32);
        let mut launch = func.builder();
        launch.arg(&q_view);
        launch.arg(&kv_view);
        launch.arg(&out);
        launch.arg(&len_i);
        launch.arg(&start_i);
        launch.arg(&heads_i);
        launch.arg(&kv_heads_i);
        launch.arg(&self.scale_log2);
        // SAFETY: argument types match the kernel's signature; the grid covers (L, H) and the
        // kernel reads q (L, H, D) and kv positions [0, start + L) < capacity (checked above).
        unsafe { launch.launch(config) }.w()?;
        let storage = CudaStorage {
            slice: CudaStorageSlice::BF16(out),
            device: device.clone(),
        };
        Ok((storage, Shape::from((len, heads, dim))))
    }
}
