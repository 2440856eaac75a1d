//! What our own kernels need from candle on a GPU: the device address of a tensor's view, new
//! device buffers wrapped as tensors, and one launch helper. Addresses are plain `u64`s pushed as
//! kernel arguments; every launch goes on the tensors' device stream, which is the stream candle
//! queues its own work on, so ordering with candle's ops is the stream's order.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, DevicePtr, LaunchConfig};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice};
use candle_core::op::BackpropOp;
use candle_core::{bail, DType, Device, Result, Shape, Storage, Tensor};

/// The CUDA device of `t`, or an error naming `what` when it is not on one.
pub fn cuda_device(t: &Tensor, what: &str) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(device) => Ok(device.clone()),
        _ => bail!("{what}: the tensor is not on a GPU"),
    }
}

/// Device address of the first element of `t`, which must be contiguous and on a GPU.
/// The address is valid while `t` (or another handle on its storage) is alive.
pub fn address(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        bail!("a kernel input is not on a GPU")
    };
    let Some((begin, _)) = layout.contiguous_offsets() else {
        bail!("a kernel input is not contiguous")
    };
    let stream = cuda.device().cuda_stream();
    // The guards record a use of the allocation on the compute stream when they drop, which is
    // the stream the caller launches on.
    let (base, elem) = match &cuda.slice {
        CudaStorageSlice::BF16(s) => (s.device_ptr(&stream).0, 2),
        CudaStorageSlice::F16(s) => (s.device_ptr(&stream).0, 2),
        CudaStorageSlice::F32(s) => (s.device_ptr(&stream).0, 4),
        CudaStorageSlice::U32(s) => (s.device_ptr(&stream).0, 4),
        CudaStorageSlice::I32(s) => (s.device_ptr(&stream).0, 4),
        CudaStorageSlice::I64(s) => (s.device_ptr(&stream).0, 8),
        CudaStorageSlice::U8(s) => (s.device_ptr(&stream).0, 1),
        _ => bail!(
            "a kernel input has dtype {:?}, not one our kernels take",
            t.dtype()
        ),
    };
    Ok(base + (begin * elem) as u64)
}

/// A new uninitialised buffer of `len` elements of `dtype` on `device`, with its address.
/// The caller's kernel must write every element before the tensor made of it is read.
pub fn alloc(device: &CudaDevice, dtype: DType, len: usize) -> Result<(CudaStorageSlice, u64)> {
    let stream = device.cuda_stream();
    // SAFETY (all arms): uninitialised device memory; see the function's contract.
    let slice = match dtype {
        DType::BF16 => CudaStorageSlice::BF16(unsafe { device.alloc::<half::bf16>(len)? }),
        DType::F16 => CudaStorageSlice::F16(unsafe { device.alloc::<half::f16>(len)? }),
        DType::F32 => CudaStorageSlice::F32(unsafe { device.alloc::<f32>(len)? }),
        DType::U32 => CudaStorageSlice::U32(unsafe { device.alloc::<u32>(len)? }),
        other => bail!("no kernel output of dtype {other:?}"),
    };
    let addr = match &slice {
        CudaStorageSlice::BF16(s) => s.device_ptr(&stream).0,
        CudaStorageSlice::F16(s) => s.device_ptr(&stream).0,
        CudaStorageSlice::F32(s) => s.device_ptr(&stream).0,
        CudaStorageSlice::U32(s) => s.device_ptr(&stream).0,
        _ => unreachable!("allocated above"),
    };
    Ok((slice, addr))
}

/// A tensor of `shape` (contiguous) over a buffer from [`alloc`].
pub fn wrap(device: &CudaDevice, slice: CudaStorageSlice, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage {
        slice,
        device: device.clone(),
    });
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// Kernel-name suffix of a dtype our kernels are instantiated for.
/// Asks that `func`'s blocks run with all of a multiprocessor's unified L1 as shared memory (a
/// carveout of 100 %), so that blocks of neighbouring kernels that use much of it can sit on one
/// multiprocessor together (a multiprocessor changes its split only when it drains).
pub fn prefer_shared_memory(func: &CudaFunction, name: &str) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
    func.set_attribute(
        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
        100,
    )
    .map_err(|e| candle_core::Error::Msg(format!("{name}: shared memory carveout: {e}")))
}

pub fn dtype_suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => bail!("our kernels take bf16 or f16, not {other:?}"),
    }
}

/// A one-dimensional launch: `blocks` blocks of `threads` threads, `shared` bytes of dynamic
/// shared memory each.
pub fn grid(
    blocks: u32,
    threads: u32,
    shared: u32,
) -> candle_core::cuda_backend::cudarc::driver::LaunchConfig {
    candle_core::cuda_backend::cudarc::driver::LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// Queues `func` on the device's stream so that it may start while the kernel before it is still
/// running (programmatic dependent launch); below sm_90 the driver queues it as usual.
///
/// # Safety
/// `params` holds a pointer to each of the kernel's arguments, in order, alive for the call; the
/// kernel follows the rules of `kernels/overlap.cuh` (it waits for the previous kernel before it
/// touches anything that kernel may read or write), and the launch's own contract holds.
pub unsafe fn launch_overlapped(
    device: &CudaDevice,
    func: &CudaFunction,
    config: LaunchConfig,
    params: &mut [*mut std::ffi::c_void],
) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::WrapErr as _;
    let stream = device.cuda_stream();
    stream.context().bind_to_thread().w()?;
    // SAFETY: a zeroed attribute is a valid value of the plain-data union; the id and the one
    // field it selects are set next.
    let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attribute.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attribute.value.programmaticStreamSerializationAllowed = 1;
    let launch = sys::CUlaunchConfig {
        gridDimX: config.grid_dim.0,
        gridDimY: config.grid_dim.1,
        gridDimZ: config.grid_dim.2,
        blockDimX: config.block_dim.0,
        blockDimY: config.block_dim.1,
        blockDimZ: config.block_dim.2,
        sharedMemBytes: config.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attribute,
        numAttrs: 1,
    };
    // SAFETY: the caller's contract; `launch` and `attribute` outlive the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &launch,
            func.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
        .w()
    }
}

/// Launches a kernel on the device's stream: `launch_kernel!(device, func, config, args...)`,
/// each argument a value (addresses as `u64`, sizes as `i32`/`i64`, scalars as `f32`) that lives
/// until the launch is queued. Evaluates to `candle_core::Result<()>`.
///
/// The caller wraps it in `unsafe`: the arguments must match the kernel's signature, and every
/// address the kernel touches under `config` must lie inside live allocations of the right size.
///
/// `launch_kernel!(overlapped: device, func, config, args...)` queues it with
/// [`launch_overlapped`] instead (the kernel must follow `kernels/overlap.cuh`), and
/// `launch_kernel!(overlapped if FLAG: device, func, config, args...)` one way or the other.
macro_rules! launch_kernel {
    (overlapped if $overlap:expr; $device:expr, $func:expr, $config:expr, $($arg:expr),* $(,)?) => {
        if $overlap {
            launch_kernel!(overlapped: $device, $func, $config, $($arg),*)
        } else {
            launch_kernel!($device, $func, $config, $($arg),*)
        }
    };
    (overlapped: $device:expr, $func:expr, $config:expr, $($arg:expr),* $(,)?) => {{
        let mut params: Vec<*mut std::ffi::c_void> = Vec::new();
        // each argument in a binding of its own, alive (though shadowed) until the launch
        $(
            let arg = $arg;
            params.push(std::ptr::addr_of!(arg) as *mut std::ffi::c_void);
        )*
        $crate::model::gpu_tensors::launch_overlapped(&$device, $func, $config, &mut params)
    }};
    ($device:expr, $func:expr, $config:expr, $($arg:expr),* $(,)?) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
        use candle_core::cuda_backend::WrapErr as _;
        let stream = $device.cuda_stream();
        let mut builder = stream.launch_builder($func);
        $(
            let arg = $arg;
            builder.arg(&arg);
        )*
        builder.launch($config).map(|_| ()).w()
    }};
}
pub(crate) use launch_kernel;
