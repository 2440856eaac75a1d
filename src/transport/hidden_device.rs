//! Hidden states sent GPU to GPU by a CUDA-aware MPI (`--hidden-transport device`; ranks on
//! any nodes, ranks may share a GPU). Each rank but the last holds one buffer for the whole
//! prompt's outgoing hidden states, each rank but the first one for its incoming ones, both
//! (positions, hidden) in `cuMemAlloc` memory (MPI moves that directly; candle's pool memory
//! would send Open MPI down a slow path). A chunk's state is copied into its rows of the
//! outgoing buffer behind the kernels that computed it; once the copy has passed, MPI sends the
//! rows, on a communicator of their own, and the small message of the other paths follows. The
//! next rank posts every chunk's receive into its rows before the prefill starts and waits for
//! it once the message has come; its first layer then reads the rows in place.

use anyhow::{bail, Result};
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::{DType, Device, Tensor};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::cuda_ipc::copy_async;
use super::device_memory::{device_address, ipc_capable_zeros, queued_address};
use super::mpi_env::all_ok;
use super::mpi_raw::{irecv, isend, RawRequest};

/// One rank's buffer and its address.
struct Rows {
    buffer: Tensor,
    address: u64,
}

pub struct HiddenDevice {
    /// What this rank receives, (positions, hidden) (not on rank 0).
    incoming: Option<Rows>,
    /// What it sends, (positions, hidden) (not on the last rank).
    outgoing: Option<Rows>,
    row_bytes: usize,
    /// The pipeline's communicator duplicated: the hidden states' bytes, tagged by chunk.
    comm: SimpleCommunicator,
}

impl HiddenDevice {
    /// Collective over `comm` (the pipeline's ranks in order): every rank makes its buffers of
    /// `positions` rows of `hidden` elements of `dtype`; a failure on any rank is an error on
    /// every rank.
    pub fn open(
        comm: &SimpleCommunicator,
        positions: usize,
        hidden: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (rank, ranks) = (comm.rank() as usize, comm.size() as usize);
        let data = comm.duplicate();
        let made = (|| -> Result<(Option<Rows>, Option<Rows>)> {
            let stream = device.as_cuda_device()?.cuda_stream();
            stream.context().bind_to_thread()?;
            let rows = |wanted: bool| -> Result<Option<Rows>> {
                if !wanted {
                    return Ok(None);
                }
                let buffer = ipc_capable_zeros(&[positions, hidden], dtype, device)?;
                // the zeroing has landed before MPI may write the buffer
                let address = device_address(&buffer, &stream)?;
                Ok(Some(Rows { buffer, address }))
            };
            Ok((rows(rank > 0)?, rows(rank + 1 < ranks)?))
        })();
        if let Err(error) = &made {
            tracing::warn!("GPU buffers for the hidden states: {error:#}");
        }
        all_ok(comm, made.is_ok(), "make the GPU buffers for the hidden states")?;
        let (incoming, outgoing) = made?;
        Ok(Self {
            incoming,
            outgoing,
            row_bytes: hidden * dtype.size_in_bytes(),
            comm: data,
        })
    }

    /// Queues the copy of `hidden` ((L, hidden), contiguous) into rows `[start, start + L)` of
    /// the outgoing buffer on `stream`, behind the kernels that wrote it; → its bytes.
    ///
    /// # Safety
    /// `hidden` must stay alive until `stream` has passed the copy, and those rows must not be
    /// in a send meanwhile (each chunk's rows are written and sent once per prefill run).
    pub unsafe fn stage(&self, hidden: &Tensor, start: usize, stream: &CudaStream) -> Result<usize> {
        let bytes = hidden.elem_count() * hidden.dtype().size_in_bytes();
        let dst = self.outgoing_rows()?.address_of(start, bytes, self.row_bytes)?;
        copy_async(dst, queued_address(hidden, stream)?, bytes, stream)?;
        Ok(bytes)
    }

    /// Sends rows `[start, start + len)` of the outgoing buffer to rank `to` (once their copy
    /// has passed), tagged `chunk`.
    pub fn send(&self, start: usize, len: usize, to: usize, chunk: usize) -> Result<RawRequest> {
        let bytes = len * self.row_bytes;
        let address = self.outgoing_rows()?.address_of(start, bytes, self.row_bytes)?;
        // SAFETY: the rows lie inside the buffer (checked), which this value keeps alive; the
        // caller waits for the request before the rows are written again.
        unsafe { isend(&self.comm, address as *const _, bytes, to, chunk_tag(chunk)?) }
    }

    /// Receives rows `[start, start + len)` of the incoming buffer from rank `from`, tagged
    /// `chunk`.
    pub fn receive(&self, start: usize, len: usize, from: usize, chunk: usize) -> Result<RawRequest> {
        let bytes = len * self.row_bytes;
        let address = self.incoming_rows()?.address_of(start, bytes, self.row_bytes)?;
        // SAFETY: as in `send`; nothing reads the rows before the request has finished.
        unsafe { irecv(&self.comm, address as *mut _, bytes, from, chunk_tag(chunk)?) }
    }

    /// Rows `[start, start + len)` of the incoming buffer: a chunk's hidden state once its
    /// receive has finished.
    pub fn incoming(&self, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.incoming_rows()?.buffer.narrow(0, start, len)?)
    }

    fn outgoing_rows(&self) -> Result<&Rows> {
        self.outgoing
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the last rank sends no hidden state"))
    }

    fn incoming_rows(&self) -> Result<&Rows> {
        self.incoming
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("rank 0 receives no hidden state"))
    }
}

impl Rows {
    /// The address of `bytes` from row `start`, checked to lie inside the buffer.
    fn address_of(&self, start: usize, bytes: usize, row_bytes: usize) -> Result<u64> {
        let capacity = self.buffer.elem_count() * self.buffer.dtype().size_in_bytes();
        if start * row_bytes + bytes > capacity {
            bail!("a hidden state of {bytes} bytes at row {start} overruns its buffer of {capacity} bytes");
        }
        Ok(self.address + (start * row_bytes) as u64)
    }
}

fn chunk_tag(chunk: usize) -> Result<i32> {
    Ok(i32::try_from(chunk)?)
}
