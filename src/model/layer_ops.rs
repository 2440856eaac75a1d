//! The elementwise steps of the fused GPU decoder layer (`kernels/layer_ops.cu`), one kernel
//! each: residual add with RMSNorm, q/k RMSNorm with RoPE and the chunk's K/V into the cache,
//! and SwiGLU. Inputs are contiguous bf16 or f16 tensors on one GPU.

use candle_core::cuda_backend::cudarc::driver::CudaFunction;
use candle_core::{bail, Result, Tensor};

use super::gpu_tensors::{address, alloc, cuda_device, dtype_suffix, grid, launch_kernel, wrap};
use super::kernel_modules::{function, KernelModule};

/// Head size the q/k kernel is written for (every Qwen3 size).
pub const HEAD_DIM: usize = 128;
/// Widest row the RMSNorm kernel holds in registers (`NORM_MAX_VECS` · 8 · 256).
pub const MAX_NORM_DIM: usize = 8192;
const NORM_THREADS: u32 = 256;
pub const QK_WARPS_PER_BLOCK: u32 = 8;
const SWIGLU_THREADS: u32 = 256;

/// (sum, normed): sum = x + delta (x itself when there is no delta), normed = RMSNorm(sum) · w.
/// x, delta: (L, dim); w: (dim) → each (L, dim)
pub fn residual_rms_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let device = cuda_device(x, "RMSNorm")?;
    let (rows, dim) = x.dims2()?;
    if dim % 8 != 0 || dim > MAX_NORM_DIM || w.dims1()? != dim {
        bail!("RMSNorm kernel: rows of {dim} with a weight of {:?}", w.shape());
    }
    if let Some(delta) = delta {
        if delta.dims2()? != (rows, dim) || delta.dtype() != x.dtype() {
            bail!(
                "RMSNorm kernel: residual {:?} and update {:?} differ",
                x.shape(),
                delta.shape()
            );
        }
    }
    let dtype = x.dtype();
    let func = function(
        &device,
        KernelModule::LayerOps,
        &format!("residual_rms_norm_{}", dtype_suffix(dtype)?),
    )?;
    let (normed, normed_at) = alloc(&device, dtype, rows * dim)?;
    let (sum, sum_at) = match delta {
        Some(_) => {
            let (slice, at) = alloc(&device, dtype, rows * dim)?;
            (Some(slice), at)
        }
        None => (None, 0),
    };
    let config = grid(rows as u32, NORM_THREADS, 0);
    let delta_at = delta.map(address).transpose()?.unwrap_or(0);
    // SAFETY: one block per row reads x/delta (rows, dim) and w (dim), writes sum and normed
    // (rows, dim); dim ≤ MAX_NORM_DIM and dim % 8 == 0 (checked above).
    unsafe {
        launch_kernel!(
            device,
            &func,
            config,
            address(x)?,
            delta_at,
            address(w)?,
            sum_at,
            normed_at,
            dim as i32,
            eps as f32
        )?;
    }
    let normed = wrap(&device, normed, (rows, dim));
    let sum = match sum {
        Some(slice) => wrap(&device, slice, (rows, dim)),
        None => x.clone(),
    };
    Ok((sum, normed))
}

/// The attention inputs of a chunk at positions `[start, start + L)` from the fused q/k/v
/// projection: returns q = RoPE(RMSNorm(q) · q_w) (L, H, D) and writes K = RoPE(RMSNorm(k) · k_w)
/// and V into `layer_kv` at those positions.
/// qkv: (L, (H + 2·KVH)·D); q_w, k_w: (D); cos, sin: (positions, D/2);
/// layer_kv: (capacity, 2, KVH, D), written in place.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope_cache(
    qkv: &Tensor,
    q_w: &Tensor,
    k_w: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    layer_kv: &Tensor,
    start: usize,
    heads: usize,
    kv_heads: usize,
    eps: f64,
) -> Result<Tensor> {
    let device = cuda_device(qkv, "q/k norm and RoPE")?;
    let (rows, width) = qkv.dims2()?;
    let (capacity, two, cache_heads, dim) = layer_kv.dims4()?;
    let (positions, half) = cos.dims2()?;
    if width != (heads + 2 * kv_heads) * HEAD_DIM || dim != HEAD_DIM || two != 2 || cache_heads != kv_heads {
        bail!(
            "q/k norm and RoPE kernel: projection {:?} for {heads} + 2 x {kv_heads} heads, cache {:?}",
            qkv.shape(),
            layer_kv.shape()
        );
    }
    if half != HEAD_DIM / 2 || sin.dims2()? != (positions, half) || q_w.dims1()? != dim || k_w.dims1()? != dim
    {
        bail!(
            "q/k norm and RoPE kernel: RoPE table {:?} or norm weights do not fit",
            cos.shape()
        );
    }
    if start + rows > capacity.min(positions) {
        bail!(
            "KV cache overflow: positions {start}..{} exceed its capacity of {}",
            start + rows,
            capacity.min(positions)
        );
    }
    let dtype = qkv.dtype();
    let func = function(
        &device,
        KernelModule::LayerOps,
        &format!("qk_norm_rope_cache_{}", dtype_suffix(dtype)?),
    )?;
    let (q, q_at) = alloc(&device, dtype, rows * heads * HEAD_DIM)?;
    let launch = QkNormRope {
        qkv: address(qkv)?,
        q_w: address(q_w)?,
        k_w: address(k_w)?,
        cos: address(cos)?,
        sin: address(sin)?,
        q_out: q_at,
        kv: address(layer_kv)?,
        rows,
        heads,
        kv_heads,
        start,
        start_at: 0, // no device-side start: it is `start`
        eps: eps as f32,
    };
    // SAFETY: the addresses are of the tensors checked above; positions [start, start + L) lie
    // inside the cache and the RoPE table (checked above).
    unsafe { launch.queue(&device, &func, false)? };
    Ok(wrap(&device, q, (rows, heads, HEAD_DIM)))
}

/// One launch of the q/k norm + RoPE + cache kernel, by device address (`qk_norm_rope_cache_*`
/// in `kernels/layer_ops.cu`): what [`qk_norm_rope_cache`] and the decode step queue.
pub struct QkNormRope {
    /// (rows, (H + 2·KVH)·D)
    pub qkv: u64,
    /// (D) each
    pub q_w: u64,
    pub k_w: u64,
    /// (positions, D/2) each
    pub cos: u64,
    pub sin: u64,
    /// (rows, H, D), written
    pub q_out: u64,
    /// (capacity, 2, KVH, D), rows written at positions start + row
    pub kv: u64,
    pub rows: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// The position of row 0, unless `start_at` (an i32 in device memory) is not 0.
    pub start: usize,
    pub start_at: u64,
    pub eps: f32,
}

impl QkNormRope {
    /// Queues the kernel on the device's stream: a half-warp per (row, head); `overlapped`
    /// lets it start while the kernel before it drains (`kernels/overlap.cuh`).
    ///
    /// # Safety
    /// Every address must hold its shape above, and positions `[start, start + rows)` must lie
    /// inside the cache and the RoPE table.
    pub unsafe fn queue(
        &self,
        device: &candle_core::cuda_backend::CudaDevice,
        func: &CudaFunction,
        overlapped: bool,
    ) -> Result<()> {
        let items = (self.rows * (self.heads + 2 * self.kv_heads)) as u32;
        // two heads a warp
        let config = grid(items.div_ceil(2 * QK_WARPS_PER_BLOCK), 32 * QK_WARPS_PER_BLOCK, 0);
        let args = (
            self.rows as i32,
            self.heads as i32,
            self.kv_heads as i32,
            self.start as i32,
        );
        // SAFETY: the caller's contract.
        unsafe {
            launch_kernel!(overlapped if overlapped; device, func, config, self.qkv, self.q_w, self.k_w, self.cos,
                self.sin, self.q_out, self.kv, args.0, args.1, args.2, args.3, self.start_at, self.eps)
        }
    }
}

/// SwiGLU of the fused gate/up projection: silu(gate) · up.
/// gate_up: (L, 2·I), gate in columns [0, I) → (L, I)
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    let device = cuda_device(gate_up, "SwiGLU")?;
    let (rows, width) = gate_up.dims2()?;
    let inter = width / 2;
    if width % 2 != 0 || inter % 8 != 0 {
        bail!("SwiGLU kernel: gate/up width {width} is not 2 x a multiple of 8");
    }
    let dtype = gate_up.dtype();
    let func = function(
        &device,
        KernelModule::LayerOps,
        &format!("swiglu_{}", dtype_suffix(dtype)?),
    )?;
    let (out, out_at) = alloc(&device, dtype, rows * inter)?;
    let vectors = (rows * inter / 8) as u32;
    let config = grid(vectors.div_ceil(SWIGLU_THREADS), SWIGLU_THREADS, 0);
    // SAFETY: one thread per 8 outputs reads gate_up (L, 2I) and writes out (L, I).
    unsafe {
        launch_kernel!(
            device,
            &func,
            config,
            address(gate_up)?,
            out_at,
            rows as i64,
            inter as i32
        )?;
    }
    Ok(wrap(&device, out, (rows, inter)))
}
