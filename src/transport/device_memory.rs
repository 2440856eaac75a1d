//! Device addresses of candle CUDA tensors, for MPI on device memory.

use anyhow::{bail, Result};
use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtr};
use candle_core::{DType, Storage, Tensor};

/// The device address of `tensor`'s first element, once `stream` has seen every write to it
/// that was queued before this call (the stream waits for the tensor's last write event; the
/// host then waits for the stream). Only that stream is synchronised, never the device.
pub fn device_address(tensor: &Tensor, stream: &CudaStream) -> Result<u64> {
    let address = queued_address(tensor, stream)?;
    stream.synchronize()?;
    Ok(address)
}

/// The device address of `tensor`'s first element for work queued on `stream` (the stream
/// that wrote it): nothing is synchronised, the caller's copy runs in stream order.
pub fn queued_address(tensor: &Tensor, stream: &CudaStream) -> Result<u64> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        bail!("tensor is not on a GPU");
    };
    let base = match tensor.dtype() {
        DType::BF16 => cuda.as_cuda_slice::<half::bf16>()?.device_ptr(stream).0,
        DType::F16 => cuda.as_cuda_slice::<half::f16>()?.device_ptr(stream).0,
        DType::F32 => cuda.as_cuda_slice::<f32>()?.device_ptr(stream).0,
        other => bail!("no device copy for dtype {other:?}"),
    };
    Ok(base + (layout.start_offset() * tensor.dtype().size_in_bytes()) as u64)
}

/// A stream of its own on the tensor's device, for communication beside compute.
pub fn side_stream(device: &candle_core::Device) -> Result<std::sync::Arc<CudaStream>> {
    let cuda = device.as_cuda_device()?;
    Ok(cuda.cuda_stream().context().new_stream()?)
}

/// Copies `len` bytes at `byte_offset` into `tensor`'s memory to the host, on `stream`.
pub fn read_region(tensor: &Tensor, stream: &CudaStream, byte_offset: usize, len: usize) -> Result<Vec<u8>> {
    use candle_core::cuda_backend::cudarc::driver::result::memcpy_dtoh_async;
    let base = device_address(tensor, stream)?;
    let mut host = vec![0u8; len];
    // SAFETY: the region lies inside the tensor's allocation (the caller's bookkeeping), the
    // host buffer is `len` bytes, and the stream is synchronised before the buffer is used.
    unsafe { memcpy_dtoh_async(&mut host[..], base + byte_offset as u64, stream.cu_stream())? };
    stream.synchronize()?;
    Ok(host)
}

/// Copies `bytes` into `tensor`'s memory at `byte_offset`, on `stream`, in place.
pub fn write_region(tensor: &Tensor, stream: &CudaStream, byte_offset: usize, bytes: &[u8]) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::result::memcpy_htod_async;
    let base = device_address(tensor, stream)?;
    // SAFETY: as in read_region; `bytes` outlives the copy (synchronised below).
    unsafe { memcpy_htod_async(base + byte_offset as u64, bytes, stream.cu_stream())? };
    stream.synchronize()?;
    Ok(())
}

/// Environment override of the KV cache allocation on a GPU: `malloc` allocates it with plain
/// `cuMemAlloc`, which CUDA IPC can share, so a CUDA-aware MPI can move blocks GPU to GPU
/// directly (the default with `--transport device`); `pool` uses candle's stream-ordered pool
/// allocation, whose memory Open MPI 4.1 cannot map over IPC (it falls back to a slow path
/// through the host: 1-2 GB/s against 150-340 GB/s, measured on 2 x H200).
pub const KV_ALLOC_ENV: &str = "QWEN3_MPI_KV_ALLOC";

/// A zeroed tensor in memory from `cuMemAlloc` (IPC-capable). The allocation lives until the
/// process ends: it is never freed through the pool allocator that did not make it.
pub fn ipc_capable_zeros(shape: &[usize], dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    use candle_core::cuda_backend::cudarc::driver::result::{malloc_sync, memset_d8_sync};
    use candle_core::cuda_backend::CudaStorage;
    let cuda = device.as_cuda_device()?;
    let elements: usize = shape.iter().product();
    let bytes = elements * dtype.size_in_bytes();
    let stream = cuda.cuda_stream();
    stream.context().bind_to_thread()?;
    // SAFETY: a fresh allocation of `bytes` bytes, zeroed before any use; the slices below
    // cover exactly it.
    let storage = unsafe {
        let ptr = malloc_sync(bytes)?;
        memset_d8_sync(ptr, 0, bytes)?;
        match dtype {
            DType::BF16 => CudaStorage::wrap_cuda_slice(
                stream.upgrade_device_ptr::<half::bf16>(ptr, elements),
                cuda.clone(),
            ),
            DType::F16 => CudaStorage::wrap_cuda_slice(
                stream.upgrade_device_ptr::<half::f16>(ptr, elements),
                cuda.clone(),
            ),
            DType::F32 => {
                CudaStorage::wrap_cuda_slice(stream.upgrade_device_ptr::<f32>(ptr, elements), cuda.clone())
            }
            other => bail!("no IPC-capable KV cache for dtype {other:?}"),
        }
    };
    let tensor = Tensor::from_storage(
        Storage::Cuda(storage),
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    );
    // Keep one handle forever, so the slice's drop (which would free through the pool) never runs.
    std::mem::forget(tensor.clone());
    Ok(tensor)
}

/// Page-locked host memory (not write-combined: MPI reads and writes it), for copies that run
/// asynchronously on a stream.
pub struct PinnedBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain host memory owned by this value; it is used by one thread at a time.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    pub fn new(len: usize) -> Result<Self> {
        use candle_core::cuda_backend::cudarc::driver::result::malloc_host;
        // SAFETY: a fresh page-locked allocation of `len` bytes (flags 0: cached, not portable).
        let ptr = unsafe { malloc_host(len.max(1), 0)? } as *mut u8;
        Ok(Self { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` addresses `len` bytes owned by this value.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Queues a copy of `len` bytes from device address `src` into the buffer at `at`.
    ///
    /// # Safety
    /// `src` must address `len` readable device bytes, and neither the buffer range nor the
    /// device range may be touched until `stream` has passed this copy.
    pub unsafe fn copy_from_device(
        &mut self,
        at: usize,
        src: u64,
        len: usize,
        stream: &CudaStream,
    ) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::result::memcpy_dtoh_async;
        memcpy_dtoh_async(&mut self.as_mut_slice()[at..at + len], src, stream.cu_stream())?;
        Ok(())
    }

    /// Queues a copy of `len` bytes of the buffer at `at` to device address `dst`.
    ///
    /// # Safety
    /// As for [`Self::copy_from_device`], with `dst` writable.
    pub unsafe fn copy_to_device(&self, at: usize, dst: u64, len: usize, stream: &CudaStream) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::result::memcpy_htod_async;
        memcpy_htod_async(dst, &self.as_slice()[at..at + len], stream.cu_stream())?;
        Ok(())
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        use candle_core::cuda_backend::cudarc::driver::result::free_host;
        // SAFETY: allocated by malloc_host in `new`; no copy is in flight once the owner drops it
        // (every user synchronises its stream before).
        let _ = unsafe { free_host(self.ptr as *mut std::ffi::c_void) };
    }
}

/// Host memory someone else allocated (a shared MPI window), page-locked in place with
/// `cuMemHostRegister` so copies to and from it run at full PCIe/C2C speed; unregistered on drop.
pub struct HostRegistration {
    ptr: *mut std::ffi::c_void,
    context: std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaContext>,
}

// SAFETY: the registration is a process-wide property of the range; this value only undoes it.
unsafe impl Send for HostRegistration {}

impl HostRegistration {
    /// Page-locks the whole pages around `[ptr, ptr + len)` (portable: for every context).
    ///
    /// # Safety
    /// The range must stay mapped until the value is dropped.
    pub unsafe fn new(ptr: *mut u8, len: usize, stream: &CudaStream) -> Result<Self> {
        use candle_core::cuda_backend::cudarc::driver::sys::{
            cuMemHostRegister_v2, CU_MEMHOSTREGISTER_PORTABLE,
        };
        let page = crate::transport::shared_window::page_bytes();
        let start = ptr as usize / page * page;
        let end = (ptr as usize + len).div_ceil(page) * page;
        stream.context().bind_to_thread()?;
        cuMemHostRegister_v2(start as *mut _, end - start, CU_MEMHOSTREGISTER_PORTABLE).result()?;
        Ok(Self {
            ptr: start as *mut _,
            context: stream.context().clone(),
        })
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        use candle_core::cuda_backend::cudarc::driver::sys::cuMemHostUnregister;
        // SAFETY: registered in `new`; the owner keeps the range mapped until after this drop
        // and no copy from or to it is in flight (its stream is synchronised after each call).
        let _ = self.context.bind_to_thread();
        let _ = unsafe { cuMemHostUnregister(self.ptr) }.result();
    }
}
