//! The prefill side of the MoE block on a GPU (`kernels/moe_ops.cu` and cuBLAS): a chunk routed
//! on the device with one copy of the experts' row counts to the host (the grouped product's
//! sizes), each expert's rows gathered side by side, every expert's product of a projection in
//! one grouped cuBLAS call, and each token's k outputs weighted and summed into the residual.
//! Inputs are contiguous bf16 or f16 tensors on one GPU; the roundings are `moe.rs`'s.
//!
//! `QWEN3_MPI_MOE_GEMM` picks how the experts' products run (read once):
//! - `grouped` (default): one `cublasGemmGroupedBatchedEx` per projection, one problem per expert
//!   that has rows;
//! - `padded`: one strided batched product over every expert, each padded to the largest
//!   expert's row count (where that at most doubles the rows; else `grouped`);
//! - `loop`: one `cublasGemmEx` per expert that has rows (the baseline the other two replace).

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, result::gemm_strided_batched_ex, sys};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{bail, DType, Device, Result, Tensor};

use super::gpu_tensors::{address, alloc, cuda_device, dtype_suffix, grid, launch_kernel, wrap};
use super::kernel_modules::{function, KernelModule};

use super::moe::{GPU_MAX_EXPERTS as MAX_EXPERTS, GPU_MAX_TOP_K as MAX_TOP_K};
const ROUTE_WARPS: u32 = 8;
const ROW_THREADS: u32 = 256;
pub const GEMM_ENV: &str = "QWEN3_MPI_MOE_GEMM";

/// How the experts' products run (`QWEN3_MPI_MOE_GEMM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertGemm {
    Grouped,
    Padded,
    Loop,
}

impl ExpertGemm {
    /// The process's choice, read once; an unknown value is an error naming the variable.
    pub fn chosen() -> Result<Self> {
        static CHOSEN: OnceLock<std::result::Result<ExpertGemm, String>> = OnceLock::new();
        CHOSEN
            .get_or_init(|| match std::env::var(GEMM_ENV).as_deref() {
                Err(_) | Ok("") | Ok("grouped") => Ok(Self::Grouped),
                Ok("padded") => Ok(Self::Padded),
                Ok("loop") => Ok(Self::Loop),
                Ok(other) => Err(format!("{GEMM_ENV}={other}: expected grouped, padded or loop")),
            })
            .clone()
            .map_err(candle_core::Error::Msg)
    }
}

/// A chunk of L tokens routed to its experts, on the device: pair `t·k + j` is token t's j-th
/// expert (ascending), each pair a row of that expert's group.
pub struct ChunkRouting {
    /// (L·k) i32 each: the expert, the pair's rank among that expert's rows
    expert: Tensor,
    rank: Tensor,
    /// (L·k) f32: the routing weight
    weight: Tensor,
    /// Rows of each expert (E), copied to the host.
    pub counts: Vec<usize>,
    pub top_k: usize,
}

/// Routes every token of `logits` (L, E), the router's output in the model dtype: softmax over
/// the experts in f32, the top `top_k`, renormalised when `normalize` (`router.rs`'s rule).
pub fn route(logits: &Tensor, top_k: usize, normalize: bool) -> Result<ChunkRouting> {
    let device = cuda_device(logits, "MoE routing")?;
    let (len, experts) = logits.dims2()?;
    if experts > MAX_EXPERTS || top_k == 0 || top_k > MAX_TOP_K.min(experts) {
        bail!("MoE routing kernel: {experts} experts (at most {MAX_EXPERTS}), top {top_k} (at most {MAX_TOP_K})");
    }
    let dtype = logits.dtype();
    let func = function(
        &device,
        KernelModule::MoeOps,
        &format!("moe_route_{}", dtype_suffix(dtype)?),
    )?;
    let pairs = len * top_k;
    let (expert, expert_at) = alloc(&device, DType::U32, pairs)?;
    let (rank, rank_at) = alloc(&device, DType::U32, pairs)?;
    let (weight, weight_at) = alloc(&device, DType::F32, pairs)?;
    let counts = Tensor::zeros(experts, DType::U32, logits.device())?; // (E)
    let config = grid((len as u32).div_ceil(ROUTE_WARPS), 32 * ROUTE_WARPS, 0);
    // SAFETY: one warp per token reads logits (L, E) with E ≤ MAX_EXPERTS and writes pairs
    // [t·k, t·k + k) of the three (L·k) buffers, and adds to counts (E) at expert indices < E.
    unsafe {
        launch_kernel!(
            device,
            &func,
            config,
            address(logits)?,
            len as i64,
            experts as i32,
            top_k as i32,
            normalize as i32,
            expert_at,
            rank_at,
            weight_at,
            address(&counts)?
        )?;
    }
    let counts = counts.to_vec1::<u32>()?; // the one copy to the host (waits for the routing)
    Ok(ChunkRouting {
        expert: wrap(&device, expert, pairs),
        rank: wrap(&device, rank, pairs),
        weight: wrap(&device, weight, pairs),
        counts: counts.into_iter().map(|c| c as usize).collect(),
        top_k,
    })
}

/// Where each expert's rows lie in the gathered matrix: expert e's `counts[e]` rows from
/// `starts[e]`, `rows` in all (more than the pairs when padded).
pub struct ExpertLayout {
    pub starts: Vec<usize>,
    pub counts: Vec<usize>,
    pub rows: usize,
    /// The rows of every expert's slot when padded (one strided batched product).
    pub padded: Option<usize>,
    /// `starts` on the device: (E) i32
    base: Tensor,
}

impl ExpertLayout {
    /// The layout `gemm` needs for `counts` (the experts' rows side by side, or each padded).
    pub fn new(counts: &[usize], gemm: ExpertGemm, device: &Device) -> Result<Self> {
        let pairs: usize = counts.iter().sum();
        let largest = counts.iter().copied().max().unwrap_or(0);
        let padded = (gemm == ExpertGemm::Padded && largest * counts.len() <= 2 * pairs).then_some(largest);
        let starts: Vec<usize> = match padded {
            Some(slot) => (0..counts.len()).map(|e| e * slot).collect(),
            None => counts
                .iter()
                .scan(0, |next, &c| {
                    let start = *next;
                    *next += c;
                    Some(start)
                })
                .collect(),
        };
        let rows = padded.map_or(pairs, |slot| slot * counts.len());
        if rows > i32::MAX as usize {
            bail!("MoE block: {rows} expert rows are more than the kernels index");
        }
        let base: Vec<u32> = starts.iter().map(|&s| s as u32).collect();
        Ok(Self {
            base: Tensor::from_slice(&base, base.len(), device)?,
            starts,
            counts: counts.to_vec(),
            rows,
            padded,
        })
    }
}

/// Each pair's row of x: x (L, hidden) → (rows, hidden), expert e's rows from `starts[e]`
/// (padding rows unwritten).
pub fn gather(x: &Tensor, routing: &ChunkRouting, layout: &ExpertLayout) -> Result<Tensor> {
    let device = cuda_device(x, "MoE gather")?;
    let (len, hidden) = x.dims2()?;
    let pairs = len * routing.top_k;
    if hidden % 8 != 0 || routing.expert.dim(0)? != pairs {
        bail!(
            "MoE gather kernel: rows of {hidden} for {} pairs of {len} tokens",
            routing.expert.dim(0)?
        );
    }
    let dtype = x.dtype();
    let func = function(
        &device,
        KernelModule::MoeOps,
        &format!("moe_gather_{}", dtype_suffix(dtype)?),
    )?;
    let (out, out_at) = alloc(&device, dtype, layout.rows * hidden)?;
    // SAFETY: one block per pair reads x row pair / k < L and writes row starts[e] + rank of out,
    // which is below `rows` (ranks of expert e are < counts[e], its slot's size).
    unsafe {
        launch_kernel!(
            device,
            &func,
            grid(pairs as u32, ROW_THREADS, 0),
            address(x)?,
            address(&routing.expert)?,
            address(&routing.rank)?,
            address(&layout.base)?,
            routing.top_k as i32,
            hidden as i32,
            out_at
        )?;
    }
    Ok(wrap(&device, out, (layout.rows, hidden)))
}

/// Each expert's rows through its matrix: out rows of expert e = a rows of e · w[e]ᵀ, all experts
/// in one cuBLAS call (`ExpertGemm`). a: (rows, K); w: (E, N, K) → (rows, N), in the model dtype
/// (f32 accumulation).
pub fn expert_products(a: &Tensor, w: &Tensor, layout: &ExpertLayout) -> Result<Tensor> {
    let device = cuda_device(a, "MoE expert products")?;
    let ((rows, k), (experts, n, w_k)) = (a.dims2()?, w.dims3()?);
    if rows != layout.rows || w_k != k || experts != layout.counts.len() || a.dtype() != w.dtype() {
        bail!(
            "MoE expert products: {:?} by experts {:?} for {} rows of {} experts",
            a.shape(),
            w.shape(),
            layout.rows,
            layout.counts.len()
        );
    }
    let data_type = match a.dtype() {
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        other => bail!("MoE expert products take bf16 or f16, not {other:?}"),
    };
    let elem = 2u64;
    let (out, out_at) = alloc(&device, a.dtype(), rows * n)?;
    let (a_at, w_at) = (address(a)?, address(w)?);
    let shapes = Products { n, k, data_type };
    // (expert, first row, rows) of every expert that has rows
    let problems: Vec<(usize, usize, usize)> = (0..experts)
        .filter(|&e| layout.counts[e] > 0)
        .map(|e| (e, layout.starts[e], layout.counts[e]))
        .collect();
    let weight_of = |e: usize| w_at + (e * n * k) as u64 * elem;
    let a_of = |row: usize| a_at + (row * k) as u64 * elem;
    let out_of = |row: usize| out_at + (row * n) as u64 * elem;
    match (layout.padded, ExpertGemm::chosen()?) {
        _ if problems.is_empty() => {}
        (Some(slot), _) => {
            // SAFETY: w holds E (N, K) matrices, a and out E slots of `slot` rows (rows = E·slot).
            unsafe { shapes.strided(&device, w_at, a_at, out_at, slot, experts)? }
        }
        (None, ExpertGemm::Loop) => {
            for &(e, start, count) in &problems {
                // SAFETY: expert e's matrix and its `count` rows from `start` lie inside w, a, out.
                unsafe { shapes.one(&device, weight_of(e), a_of(start), out_of(start), count)? }
            }
        }
        (None, _) => {
            let mut pointers = Vec::with_capacity(3 * problems.len());
            pointers.extend(problems.iter().map(|&(e, _, _)| weight_of(e) as i64));
            pointers.extend(problems.iter().map(|&(_, start, _)| a_of(start) as i64));
            pointers.extend(problems.iter().map(|&(_, start, _)| out_of(start) as i64));
            let pointers = Tensor::from_slice(&pointers, pointers.len(), a.device())?; // (3·G) on the device
            let counts: Vec<i32> = problems.iter().map(|&(_, _, c)| c as i32).collect();
            // SAFETY: each problem's matrix and rows lie inside w, a and out (as for `one`); the
            // pointer arrays are on the device and alive until the call is queued (their memory
            // is freed in stream order after it).
            unsafe { shapes.grouped(&device, address(&pointers)?, &counts)? }
        }
    }
    Ok(wrap(&device, out, (rows, n)))
}

/// x += each token's k expert outputs, each rounded, weighted in the model dtype and summed in
/// f32 (ascending expert), the sum rounded once: x = T(x + T(Σ_j T(y_j · T(w_j)))). `x` is
/// updated in place (nothing else may read it). x: (L, hidden); y: (rows, hidden)
pub fn combine_into(x: &Tensor, y: &Tensor, routing: &ChunkRouting, layout: &ExpertLayout) -> Result<()> {
    let device = cuda_device(x, "MoE weighted sum")?;
    let ((len, hidden), (rows, y_hidden)) = (x.dims2()?, y.dims2()?);
    if hidden % 8 != 0
        || y_hidden != hidden
        || rows != layout.rows
        || routing.expert.dim(0)? != len * routing.top_k
    {
        bail!(
            "MoE weighted sum kernel: residual {:?}, expert outputs {:?}",
            x.shape(),
            y.shape()
        );
    }
    let func = function(
        &device,
        KernelModule::MoeOps,
        &format!("moe_combine_{}", dtype_suffix(x.dtype())?),
    )?;
    // SAFETY: one block per token updates its row of x (L, hidden) from rows starts[e] + rank
    // < rows of y and its k pairs' entries.
    unsafe {
        launch_kernel!(
            device,
            &func,
            grid(len as u32, ROW_THREADS, 0),
            address(x)?,
            address(y)?,
            address(&routing.expert)?,
            address(&routing.rank)?,
            address(&routing.weight)?,
            address(&layout.base)?,
            routing.top_k as i32,
            hidden as i32
        )?;
    }
    Ok(())
}

/// The shape every expert's product shares: out (count, N) = a (count, K) · W (N, K)ᵀ, which in
/// cuBLAS's column-major terms is (N, count) = (K, N)ᵀ · (K, count).
struct Products {
    n: usize,
    k: usize,
    data_type: sys::cudaDataType,
}

const ALPHA: f32 = 1.0;
const BETA: f32 = 0.0;

impl Products {
    /// One expert's product with cublasGemmEx.
    ///
    /// # Safety
    /// `w` holds an (N, K) matrix, `a` `count` rows of K, `out` `count` rows of N.
    unsafe fn one(&self, device: &CudaDevice, w: u64, a: u64, out: u64, count: usize) -> Result<()> {
        let (n, k) = (self.n as i32, self.k as i32);
        // SAFETY: the caller's contract; candle's handle runs on the device's stream.
        unsafe {
            gemm_ex(
                *device.cublas_handle().handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n,
                count as i32,
                k,
                (&ALPHA as *const f32).cast(),
                w as *const std::ffi::c_void,
                self.data_type,
                k,
                a as *const std::ffi::c_void,
                self.data_type,
                k,
                (&BETA as *const f32).cast(),
                out as *mut std::ffi::c_void,
                self.data_type,
                n,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .map_err(|e| candle_core::Error::Msg(format!("MoE expert product: cuBLAS {e:?}")))
    }

    /// Every expert's slot of `slot` rows in one strided batched product.
    ///
    /// # Safety
    /// `w` holds `experts` (N, K) matrices, `a` and `out` `experts` slots of `slot` rows of K and N.
    unsafe fn strided(
        &self,
        device: &CudaDevice,
        w: u64,
        a: u64,
        out: u64,
        slot: usize,
        experts: usize,
    ) -> Result<()> {
        let (n, k) = (self.n as i32, self.k as i32);
        // SAFETY: the caller's contract; candle's handle runs on the device's stream.
        unsafe {
            gemm_strided_batched_ex(
                *device.cublas_handle().handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n,
                slot as i32,
                k,
                (&ALPHA as *const f32).cast(),
                w as *const std::ffi::c_void,
                self.data_type,
                k,
                (self.n * self.k) as i64,
                a as *const std::ffi::c_void,
                self.data_type,
                k,
                (slot * self.k) as i64,
                (&BETA as *const f32).cast(),
                out as *mut std::ffi::c_void,
                self.data_type,
                n,
                (slot * self.n) as i64,
                experts as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .map_err(|e| candle_core::Error::Msg(format!("MoE expert products (padded): cuBLAS {e:?}")))
    }

    /// One problem per expert in one grouped product: `pointers` (device) holds the G weight
    /// addresses, then the G input row addresses, then the G output row addresses; `counts` the
    /// G row counts.
    ///
    /// # Safety
    /// Each problem's addresses hold its matrix and rows as for [`Self::one`]; `pointers` is a
    /// device array of 3·G addresses alive until the call is queued.
    unsafe fn grouped(&self, device: &CudaDevice, pointers: u64, counts: &[i32]) -> Result<()> {
        let groups = counts.len();
        let (n, k) = (self.n as i32, self.k as i32);
        let transa = vec![sys::cublasOperation_t::CUBLAS_OP_T; groups];
        let transb = vec![sys::cublasOperation_t::CUBLAS_OP_N; groups];
        let (ms, ks, ones) = (vec![n; groups], vec![k; groups], vec![1i32; groups]);
        let (alphas, betas) = (vec![ALPHA; groups], vec![BETA; groups]);
        let lds_n = vec![n; groups];
        let at = |i: usize| (pointers + (i * groups * 8) as u64) as *const *const std::ffi::c_void;
        // SAFETY: the caller's contract; the host arrays hold one entry per group and outlive
        // the call (cuBLAS reads them while queuing); candle's handle runs on the device's stream.
        unsafe {
            sys::cublasGemmGroupedBatchedEx(
                *device.cublas_handle().handle(),
                transa.as_ptr(),
                transb.as_ptr(),
                ms.as_ptr(),
                counts.as_ptr(),
                ks.as_ptr(),
                alphas.as_ptr().cast(),
                at(0),
                self.data_type,
                ks.as_ptr(),
                at(1),
                self.data_type,
                ks.as_ptr(),
                betas.as_ptr().cast(),
                at(2) as *const *mut std::ffi::c_void,
                self.data_type,
                lds_n.as_ptr(),
                groups as i32,
                ones.as_ptr(),
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )
            .result()
        }
        .map_err(|e| candle_core::Error::Msg(format!("MoE expert products (grouped): cuBLAS {e:?}")))
    }
}
