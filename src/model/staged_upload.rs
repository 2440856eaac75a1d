//! Weights to the GPU through page-locked staging buffers on a stream of their own
//! (`QWEN3_MPI_WEIGHT_LOAD=staged`, for the load beside the prefill).
//!
//! candle's upload of a host tensor queues a copy from pageable memory on the device's one
//! stream, the one the prefill computes on, and then waits for that stream: the load's copies
//! sit between the prefill's kernels, the loading thread waits for the prefill, and the driver
//! stages the pageable bytes through its own buffers. Here the loading thread copies each
//! tensor's bytes into one of two page-locked buffers, and the copy engine moves them on the
//! loader's stream while the thread fills the other buffer.
//!
//! The tensor belongs to the compute stream (it is allocated there): its first use there waits
//! for its last copy (cudarc's write event on the allocation, recorded on the loader's stream).
//! The loading thread also returns it only once its copies have landed, so that this wait never
//! holds the prefill's kernels behind the copy engine (the thread waits instead, off the compute
//! path). Why not the loader's stream: candle orders a copy kernel (`Tensor::cat`,
//! `slice_set`: what stacks the q/k/v weights and a layer's experts) by the stream of the
//! source's allocation, not by the stream the kernel runs on: a tensor allocated on the loader's
//! stream would be read by the compute stream before its copy arrived, and freed, and its memory
//! refilled with the next tensor's bytes, while that read was still queued. The tenth session's
//! 3 ranks decoding different tokens on the MoE shape (whose experts are stacked so) came from
//! exactly that.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaEvent, CudaStream, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice};
use candle_core::{DType, Device, Tensor};

use super::gpu_tensors::wrap;
use super::weight_names::TensorSpec;
use super::weights::WeightSource;
use crate::transport::device_memory::PinnedBuffer;

/// Bytes of one staging buffer: large enough that a copy's fixed cost is small next to it.
const PIECE_BYTES: usize = 32 << 20;

/// A weight source whose tensors go to the GPU through staging buffers (others, and sources
/// without host bytes, load as `inner` loads them).
pub struct StagedSource {
    inner: Arc<dyn WeightSource>,
    stream: Arc<CudaStream>,
    staging: Mutex<Staging>,
}

/// Two page-locked buffers, each with the event of the last copy out of it (the host sleeps on
/// it rather than spinning: the prefill's threads need the cores).
struct Staging {
    buffers: [PinnedBuffer; 2],
    copied: [CudaEvent; 2],
    next: usize,
}

impl StagedSource {
    pub fn new(inner: Arc<dyn WeightSource>, device: &CudaDevice) -> Result<Self> {
        let context = device.cuda_stream().context().clone();
        let event = || context.new_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC));
        Ok(Self {
            inner,
            stream: context.new_stream()?,
            staging: Mutex::new(Staging {
                buffers: [PinnedBuffer::new(PIECE_BYTES)?, PinnedBuffer::new(PIECE_BYTES)?],
                copied: [event()?, event()?],
                next: 0,
            }),
        })
    }

    /// `bytes` (of `dtype`, `shape`) as a new tensor on `device`.
    fn upload(&self, bytes: &[u8], dtype: DType, shape: &[usize], device: &CudaDevice) -> Result<Tensor> {
        let elems: usize = shape.iter().product();
        if bytes.len() != elems * dtype.size_in_bytes() {
            bail!(
                "staged upload: {} bytes for {elems} elements of {dtype:?}",
                bytes.len()
            );
        }
        let compute = device.cuda_stream();
        // SAFETY (each arm): uninitialised device memory; every byte is written by the copies below
        // before the tensor is returned.
        let mut slice = match dtype {
            DType::BF16 => CudaStorageSlice::BF16(unsafe { compute.alloc::<half::bf16>(elems)? }),
            DType::F16 => CudaStorageSlice::F16(unsafe { compute.alloc::<half::f16>(elems)? }),
            DType::F32 => CudaStorageSlice::F32(unsafe { compute.alloc::<f32>(elems)? }),
            other => bail!("staged upload: no {other:?} weights"),
        };
        // the memory is the compute stream's from this point of its queue on (a pool allocation:
        // kernels queued before may still use it under an earlier owner)
        let allocated = compute.record_event(None)?;
        let stream = &self.stream;
        stream.wait(&allocated)?;
        let mut staging = self
            .staging
            .lock()
            .map_err(|_| anyhow!("staging buffers poisoned"))?;
        {
            // the guard records the allocation's write event on the loader's stream when it drops:
            // after the last copy
            let (base, _written) = match &mut slice {
                CudaStorageSlice::BF16(s) => s.device_ptr_mut(stream),
                CudaStorageSlice::F16(s) => s.device_ptr_mut(stream),
                CudaStorageSlice::F32(s) => s.device_ptr_mut(stream),
                _ => unreachable!("allocated above"),
            };
            for (i, piece) in bytes.chunks(PIECE_BYTES).enumerate() {
                staging.copy(piece, base + (i * PIECE_BYTES) as u64, stream)?;
            }
        }
        // the ordering is the write event's; this wait keeps the compute stream from stalling on it
        staging.drain()?;
        Ok(wrap(device, slice, shape))
    }
}

impl Staging {
    /// Copies `piece` into the next buffer (once its previous copy has left it) and queues the
    /// copy from there to device address `dst`.
    fn copy(&mut self, piece: &[u8], dst: u64, stream: &Arc<CudaStream>) -> Result<()> {
        let k = self.next;
        self.next = 1 - k;
        self.copied[k].synchronize()?; // (an event never recorded has passed)
        self.buffers[k].as_mut_slice()[..piece.len()].copy_from_slice(piece);
        // SAFETY: `dst` addresses `piece.len()` bytes of the allocation being filled; the
        // buffer's range is not written again before this copy's event has passed (above).
        unsafe { self.buffers[k].copy_to_device(0, dst, piece.len(), stream)? };
        self.copied[k].record(stream)?;
        Ok(())
    }

    /// Waits (sleeping) until both buffers' last copies have landed.
    fn drain(&self) -> Result<()> {
        for copied in &self.copied {
            copied.synchronize()?;
        }
        Ok(())
    }
}

impl Drop for StagedSource {
    fn drop(&mut self) {
        // no copy may still read a staging buffer when it is freed
        let _ = self.stream.synchronize();
    }
}

impl WeightSource for StagedSource {
    fn load(&self, spec: &TensorSpec, dtype: DType, device: &Device) -> Result<Tensor> {
        let Device::Cuda(cuda) = device else {
            return self.inner.load(spec, dtype, device);
        };
        if spec.shape.contains(&0) {
            return self.inner.load(spec, dtype, device); // nothing to copy
        }
        let mut upload = |bytes: &[u8], found: DType| self.upload(bytes, found, &spec.shape, cuda);
        match self.inner.with_host_bytes(spec, &mut upload)? {
            Some(tensor) => Ok(tensor.to_dtype(dtype)?),
            None => self.inner.load(spec, dtype, device),
        }
    }

    fn contains(&self, name: &str) -> Result<bool> {
        self.inner.contains(name)
    }
}
