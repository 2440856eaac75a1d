//! The decode step's matrix-vector products (`decode_step.rs`): each product's kernel (the one
//! `decode_gemv.rs` picks), its shape, grid and shared memory, and its launch.

use anyhow::{bail, Context, Result};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction};
use candle_core::cuda_backend::CudaDevice;
use candle_core::DType;

use super::decode_gemv::{GemvChoice, GemvKernel, GEMV_THREADS};
use super::gpu_tensors::{grid, launch_kernel, prefer_shared_memory};
use super::kernel_modules::function;
use super::kernel_modules::KernelModule::{DecodeGemvRing, DecodeOps};

/// One matrix-vector product of the step, out = epilogue(W · prologue(x)): its kernel, shape and
/// grid.
pub struct Gemv {
    func: CudaFunction,
    /// Output rows (N) and input length (K) of W (N, K).
    rows: usize,
    cols: usize,
    grid: u32,
    shared_bytes: u32,
}

impl Gemv {
    /// The product `kind` (`rmsnorm_store`, `copy_residual`, …: the kernel's prologue and
    /// epilogue) over W (rows, cols) of `dtype`, with the input (and the ring kernel's ring) in
    /// shared memory, on a GPU of `sms` multiprocessors.
    pub fn new(
        device: &CudaDevice,
        choice: &GemvChoice,
        kind: &str,
        (rows, cols): (usize, usize),
        dtype: DType,
        sms: usize,
    ) -> Result<Self> {
        let name = choice.function_name(kind, super::gpu_tensors::dtype_suffix(dtype)?);
        let func = match choice.kernel {
            GemvKernel::Register => function(device, DecodeOps, &name)?,
            GemvKernel::Ring(_) => {
                let func = function(device, DecodeGemvRing, &name)?;
                prefer_shared_memory(&func, &name)?;
                func
            }
        };
        let shared_bytes = choice.shared_bytes(cols, dtype.size_in_bytes()) as u32;
        let fit = max_blocks_per_sm(&func, GEMV_THREADS as u32, shared_bytes, &name)?;
        if fit == 0 {
            bail!("decode step: {name} with {cols} inputs does not fit a multiprocessor");
        }
        Ok(Self {
            func,
            rows,
            cols,
            grid: choice.grid(rows, fit, sms) as u32,
            shared_bytes,
        })
    }

    /// Bytes of W (2-byte elements), for the profile's bandwidth.
    pub fn weight_bytes(&self) -> f64 {
        (self.rows * self.cols * 2) as f64
    }

    /// Queues out = epilogue(W · prologue(x)): `norm` for the RMSNorm prologue, `residual` for
    /// the residual epilogue (0 where the kernel takes none), `overlapped` as the step's other
    /// kernels (`kernels/overlap.cuh`).
    ///
    /// # Safety
    /// `weight` is W (rows, cols); x, norm, residual and out are device buffers of the sizes the
    /// kernel reads and writes (cols inputs, twice that for the SwiGLU prologue; rows outputs),
    /// alive until the stream has run it.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn queue(
        &self,
        device: &CudaDevice,
        overlapped: bool,
        eps: f32,
        weight: u64,
        x: u64,
        norm: u64,
        residual: u64,
        out: u64,
    ) -> Result<()> {
        let config = grid(self.grid, GEMV_THREADS as u32, self.shared_bytes);
        // SAFETY: the caller's; the grid walks rows of W only.
        unsafe {
            launch_kernel!(
                overlapped if overlapped; device,
                &self.func,
                config,
                weight,
                self.rows as i32,
                self.cols as i32,
                x,
                norm,
                eps,
                residual,
                out
            )?;
        }
        Ok(())
    }
}

/// Blocks of `func` a multiprocessor holds at once with `threads` threads and `shared_bytes` of
/// dynamic shared memory (raising the kernel's dynamic shared memory limit to that first).
pub fn max_blocks_per_sm(func: &CudaFunction, threads: u32, shared_bytes: u32, name: &str) -> Result<usize> {
    func.set_attribute(
        sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        shared_bytes as i32,
    )
    .with_context(|| format!("decode step: {shared_bytes} bytes of shared memory for {name}"))?;
    let blocks = func
        .occupancy_max_active_blocks_per_multiprocessor(threads, shared_bytes as usize, None)
        .with_context(|| format!("decode step: occupancy of {name}"))?;
    Ok(blocks as usize)
}
