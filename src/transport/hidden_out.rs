//! A chunk's hidden state on its way to the next stage. On a GPU the copy to page-locked host
//! memory is queued on the compute stream behind the kernels that produced it, and the compute
//! thread goes on queueing the next chunk; the send is posted once the copy's event has passed.
//! On the CPU the bytes are copied at once. Buffers are made once per job, one per chunk, so no
//! allocation or page pinning happens inside the prefill.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// Host memory for one chunk's hidden state (page-locked on a GPU).
pub enum HostBuffer {
    Plain(Vec<u8>),
    #[cfg(feature = "cuda")]
    Pinned(super::device_memory::PinnedBuffer),
}

impl HostBuffer {
    /// Plain host memory (for messages that only announce a hidden state pushed to the GPU).
    pub fn plain(len: usize) -> Self {
        Self::Plain(vec![0u8; len])
    }

    pub fn new(len: usize, device: &Device) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if device.is_cuda() {
            return Ok(Self::Pinned(super::device_memory::PinnedBuffer::new(len)?));
        }
        let _ = device;
        Ok(Self::Plain(vec![0u8; len]))
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Self::Plain(v) => v,
            #[cfg(feature = "cuda")]
            Self::Pinned(p) => p.as_mut_slice(),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Plain(v) => v,
            #[cfg(feature = "cuda")]
            Self::Pinned(p) => p.as_slice(),
        }
    }
}

/// A staged hidden state: its bytes are in `buffer` once `is_ready` (or, pushed to the next
/// rank's GPU, in its memory, with `buffer` the message that says so).
pub struct StagedHidden<'a> {
    pub buffer: &'a HostBuffer,
    /// Bytes of the hidden state itself.
    pub payload_bytes: usize,
    /// Kept alive until the copy has read it.
    _hidden: Tensor,
    #[cfg(feature = "cuda")]
    copied: Option<candle_core::cuda_backend::cudarc::driver::CudaEvent>,
}

impl<'a> StagedHidden<'a> {
    /// Starts moving `hidden` (contiguous) into `buffer`.
    pub fn stage(hidden: &Tensor, buffer: &'a mut HostBuffer) -> Result<Self> {
        let hidden = hidden.contiguous()?;
        let len = hidden.elem_count() * hidden.dtype().size_in_bytes();
        match buffer {
            HostBuffer::Plain(bytes) => {
                if bytes.len() != len {
                    bail!("hidden state of {len} bytes for a buffer of {}", bytes.len());
                }
                *bytes = super::host_bytes::tensor_to_bytes(&hidden)?;
                Ok(Self {
                    buffer,
                    payload_bytes: len,
                    _hidden: hidden,
                    #[cfg(feature = "cuda")]
                    copied: None,
                })
            }
            #[cfg(feature = "cuda")]
            HostBuffer::Pinned(pinned) => {
                if pinned.len() != len {
                    bail!("hidden state of {len} bytes for a buffer of {}", pinned.len());
                }
                let stream = hidden.device().as_cuda_device()?.cuda_stream();
                let address = super::device_memory::queued_address(&hidden, &stream)?;
                // SAFETY: `address` holds `len` bytes of `hidden`, which this value keeps alive;
                // the buffer is read (by the send) only after `copied` has passed.
                unsafe { pinned.copy_from_device(0, address, len, &stream)? };
                let copied = Some(stream.record_event(None)?);
                Ok(Self {
                    buffer,
                    payload_bytes: len,
                    _hidden: hidden,
                    copied,
                })
            }
        }
    }

    /// Starts pushing `hidden` into rows `[start, …)` of the next rank's GPU buffer; `note`
    /// (8 bytes) is the message to send once the copy has passed: the hidden state's bytes.
    pub fn push(
        hidden: &Tensor,
        start: usize,
        ipc: &super::hidden_ipc::HiddenIpc,
        note: &'a mut HostBuffer,
    ) -> Result<Self> {
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (hidden, start, note);
            match *ipc {}
        }
        // SAFETY: the staged value keeps `hidden` alive until `copied` has passed; a chunk's
        // rows are written once per prefill run.
        #[cfg(feature = "cuda")]
        self::copy_on_gpu(hidden, note, |hidden, stream| unsafe {
            ipc.push(hidden, start, stream)
        })
    }

    /// Starts copying `hidden` into rows `[start, …)` of this rank's outgoing GPU buffer, for
    /// MPI to send from there once the copy has passed; `note` as in [`Self::push`].
    pub fn stage_on_gpu(
        hidden: &Tensor,
        start: usize,
        device: &super::hidden_device::HiddenDevice,
        note: &'a mut HostBuffer,
    ) -> Result<Self> {
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (hidden, start, note);
            match *device {}
        }
        // SAFETY: as in `push`; the rows are sent once per run, after this copy.
        #[cfg(feature = "cuda")]
        self::copy_on_gpu(hidden, note, |hidden, stream| unsafe {
            device.stage(hidden, start, stream)
        })
    }
}

/// Queues `copy` of `hidden` (made contiguous) on its stream, then the event the send waits
/// for; `note` becomes the 8-byte message of the hidden state's byte count.
#[cfg(feature = "cuda")]
fn copy_on_gpu<'a>(
    hidden: &Tensor,
    note: &'a mut HostBuffer,
    copy: impl FnOnce(&Tensor, &candle_core::cuda_backend::cudarc::driver::CudaStream) -> Result<usize>,
) -> Result<StagedHidden<'a>> {
    if note.as_slice().len() != 8 {
        bail!("a hidden-state message of {} bytes, not 8", note.as_slice().len());
    }
    let hidden = hidden.contiguous()?;
    let stream = hidden.device().as_cuda_device()?.cuda_stream();
    let len = copy(&hidden, &stream)?;
    let copied = Some(stream.record_event(None)?);
    note.as_mut_slice().copy_from_slice(&(len as u64).to_le_bytes());
    Ok(StagedHidden {
        buffer: note,
        payload_bytes: len,
        _hidden: hidden,
        copied,
    })
}

impl StagedHidden<'_> {
    /// Whether the bytes are in host memory (never blocks); a CUDA error (of the copy or of
    /// earlier work on the stream) is an error, not "not yet".
    pub fn is_ready(&self) -> Result<bool> {
        #[cfg(feature = "cuda")]
        if let Some(event) = &self.copied {
            return Ok(event.try_is_complete()?);
        }
        Ok(true)
    }

    /// Blocks until the bytes are in host memory.
    pub fn wait(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(event) = &self.copied {
            event.synchronize()?;
        }
        Ok(())
    }
}
