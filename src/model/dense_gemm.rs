//! The fused layer's dense matrix products on a GPU, `out (L, N) = a (L, K) · w (N, K)ᵀ`, and
//! the same added into a residual: cuBLAS (candle's call for the plain product, one
//! `cublasGemmEx` with β = 1 for the residual one), or cuBLASLt through cudarc's `CudaBlasLT`
//! (the heuristic's first algorithm with NVIDIA's workspace size, 32 MiB on Hopper: what
//! PyTorch runs for a bf16 linear layer).
//!
//! `QWEN3_MPI_DENSE_GEMM` picks the library (read once): `blas` (default) or `lt`.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use candle_core::cuda_backend::cudarc::driver::{
    sys::CUdeviceptr, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop,
};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{bail, DType, Result, Tensor};

use super::gpu_tensors::{address, alloc, cuda_device, wrap};

pub const DENSE_GEMM_ENV: &str = "QWEN3_MPI_DENSE_GEMM";

/// Which library runs the dense products (`QWEN3_MPI_DENSE_GEMM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseGemm {
    Blas,
    Lt,
}

impl DenseGemm {
    /// The process's choice, read once; an unknown value is an error naming the variable.
    pub fn chosen() -> Result<Self> {
        static CHOSEN: OnceLock<std::result::Result<DenseGemm, String>> = OnceLock::new();
        CHOSEN
            .get_or_init(|| match std::env::var(DENSE_GEMM_ENV).as_deref() {
                Err(_) | Ok("") | Ok("blas") => Ok(Self::Blas),
                Ok("lt") => Ok(Self::Lt),
                Ok(other) => Err(format!("{DENSE_GEMM_ENV}={other}: expected blas or lt")),
            })
            .clone()
            .map_err(candle_core::Error::Msg)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Blas => "cuBLAS",
            Self::Lt => "cuBLASLt",
        }
    }
}

/// a (L, K) · w (N, K)ᵀ → (L, N), bf16 or f16, both contiguous on one GPU.
pub fn product(a: &Tensor, w: &Tensor) -> Result<Tensor> {
    if DenseGemm::chosen()? == DenseGemm::Blas {
        return a.matmul(&w.t()?);
    }
    let device = cuda_device(a, "dense product")?;
    let ((rows, k), (n, w_cols)) = (a.dims2()?, w.dims2()?);
    if w_cols != k || a.dtype() != w.dtype() {
        bail!("dense product: {:?} x {:?}ᵀ does not fit", a.shape(), w.shape());
    }
    let (slice, out_at) = alloc(&device, a.dtype(), rows * n)?;
    lt_product(&device, out_at, a, w, 0.0)?;
    Ok(wrap(&device, slice, (rows, n)))
}

/// acc += a · wᵀ in one product (β = 1): a residual add folded into the matrix product (one
/// rounding of the sum instead of two). `acc` must be a tensor nothing else reads (it is
/// updated in place). acc: (L, N); a: (L, K); w: (N, K), a Linear weight.
pub fn add_product(acc: &Tensor, a: &Tensor, w: &Tensor) -> Result<()> {
    use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, sys};
    let device = cuda_device(acc, "residual matrix product")?;
    let ((rows, n), (a_rows, k), (w_rows, w_cols)) = (acc.dims2()?, a.dims2()?, w.dims2()?);
    if a_rows != rows || w_rows != n || w_cols != k || a.dtype() != acc.dtype() || w.dtype() != acc.dtype() {
        bail!(
            "residual matrix product: {:?} += {:?} x {:?}ᵀ does not fit",
            acc.shape(),
            a.shape(),
            w.shape()
        );
    }
    if DenseGemm::chosen()? == DenseGemm::Lt {
        return lt_product(&device, address(acc)?, a, w, 1.0);
    }
    let data_type = match acc.dtype() {
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        other => bail!("residual matrix product takes bf16 or f16, not {other:?}"),
    };
    let (alpha, beta) = (1f32, 1f32);
    let blas = device.cublas_handle();
    let (acc_at, a_at, w_at) = (address(acc)?, address(a)?, address(w)?);
    // Row-major (L, N) = (L, K)·(N, K)ᵀ is column-major (N, L) = (K, N)ᵀ·(K, L).
    // SAFETY: the three buffers hold the shapes checked above; the handle runs on the device's
    // stream (candle set it), the stream our other work is on.
    unsafe {
        gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            rows as i32,
            k as i32,
            (&alpha as *const f32).cast(),
            w_at as *const std::ffi::c_void,
            data_type,
            k as i32,
            a_at as *const std::ffi::c_void,
            data_type,
            k as i32,
            (&beta as *const f32).cast(),
            acc_at as *mut std::ffi::c_void,
            data_type,
            n as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
    .map_err(|e| candle_core::Error::Msg(format!("residual matrix product: cuBLAS {e:?}")))?;
    Ok(())
}

/// out (L, N) = a · wᵀ + β · out through cuBLASLt, the shapes checked by the caller.
fn lt_product(device: &CudaDevice, out_at: u64, a: &Tensor, w: &Tensor, beta: f32) -> Result<()> {
    let ((rows, k), (n, _)) = (a.dims2()?, w.dims2()?);
    let stream = device.cuda_stream();
    let lt = lt_handle(&stream)?;
    let region = |at: u64, len: usize| DeviceRegion {
        at,
        len,
        stream: stream.clone(),
    };
    let (a_in, w_in) = (region(address(a)?, rows * k), region(address(w)?, n * k));
    let mut out = region(out_at, rows * n);
    // Row-major (L, N) = (L, K)·(N, K)ᵀ is column-major (N, L) = (K, N)ᵀ·(K, L): cuBLASLt's A
    // is the weight, its B the activations.
    let cfg = MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: n as u64,
        n: rows as u64,
        k: k as u64,
        alpha: 1.0,
        lda: k as i64,
        ldb: k as i64,
        beta,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    // SAFETY: the three regions hold the shapes above (checked by the callers, contiguous by
    // `address`), and every call runs on the device's one stream, which orders it with
    // candle's work on those buffers.
    let done = match a.dtype() {
        DType::BF16 => unsafe { Matmul::<half::bf16>::matmul(&*lt, cfg, &w_in, &a_in, &mut out, None, None) },
        DType::F16 => unsafe { Matmul::<half::f16>::matmul(&*lt, cfg, &w_in, &a_in, &mut out, None, None) },
        other => bail!("dense product takes bf16 or f16, not {other:?}"),
    };
    done.map_err(|e| candle_core::Error::Msg(format!("dense product: cuBLASLt {e:?}")))
}

/// The process's cuBLASLt handle on `stream` (one per stream: a rank uses one device).
fn lt_handle(stream: &Arc<CudaStream>) -> Result<Arc<CudaBlasLT>> {
    static HANDLES: Mutex<Vec<(usize, Arc<CudaBlasLT>)>> = Mutex::new(Vec::new());
    let key = Arc::as_ptr(stream) as usize;
    let mut handles = HANDLES
        .lock()
        .map_err(|_| candle_core::Error::Msg("cuBLASLt handles poisoned".into()))?;
    if let Some((_, lt)) = handles.iter().find(|(k, _)| *k == key) {
        return Ok(lt.clone());
    }
    let lt = Arc::new(
        CudaBlasLT::new(stream.clone())
            .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt handle: {e:?}")))?,
    );
    handles.push((key, lt.clone()));
    Ok(lt)
}

/// `len` elements at device address `at`, kept alive by the tensor the caller holds: what
/// cudarc's cuBLASLt call takes for a candle tensor's buffer.
struct DeviceRegion {
    at: u64,
    len: usize,
    stream: Arc<CudaStream>,
}

impl<T> DeviceSlice<T> for DeviceRegion {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

// The tensors' uses are recorded by `address` on the same stream: nothing to wait for here.
impl<T> DevicePtr<T> for DeviceRegion {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.at, SyncOnDrop::Sync(None))
    }
}

impl<T> DevicePtrMut<T> for DeviceRegion {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.at, SyncOnDrop::Sync(None))
    }
}
