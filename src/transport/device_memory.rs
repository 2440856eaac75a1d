//! Device addresses of candle CUDA tensors, for MPI on device memory.

use anyhow::{bail, Result};
use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtr};
use candle_core::{DType, Storage, Tensor};

/// The device address of `tensor`'s first element, once `stream` has seen every write to it
/// that was queued before this call (the stream waits for the tensor's last write event; the
/// host then waits for the stream). Only that stream is synchronised, never the device.
pub fn device_address(tensor: &Tensor, stream: &CudaStream) -> Result<u64> {
    let address = {
        let (storage, layout) = tensor.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else {
            bail!("tensor is not on a GPU");
        };
        let base = match tensor.dtype() {
            DType::BF16 => cuda.as_cuda_slice::<half::bf16>()?.device_ptr(stream).0,
            DType::F16 => cuda.as_cuda_slice::<half::f16>()?.device_ptr(stream).0,
            DType::F32 => cuda.as_cuda_slice::<f32>()?.device_ptr(stream).0,
            other => bail!("no device transport for dtype {other:?}"),
        };
        base + (layout.start_offset() * tensor.dtype().size_in_bytes()) as u64
    };
    stream.synchronize()?;
    Ok(address)
}

/// A stream of its own on the tensor's device, for communication beside compute.
pub fn side_stream(device: &candle_core::Device) -> Result<std::sync::Arc<CudaStream>> {
    let cuda = device.as_cuda_device()?;
    Ok(cuda.cuda_stream().context().new_stream()?)
}
