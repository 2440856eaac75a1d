//! Hidden states pushed into the next rank's GPU memory through CUDA IPC (`--hidden-transport
//! ipc`, every rank on one node; ranks may share a GPU). Each rank but the first holds one
//! buffer for the whole prompt's hidden states, (positions, hidden), in memory CUDA IPC can
//! share, exported once to the rank before it, which maps it. A chunk's state is copied by the
//! copy engine into its rows of that buffer, queued behind the kernels that computed it; once
//! the copy has passed, a small MPI message (the chunk's byte count) tells the next rank, whose
//! first layer then reads the rows in place. Nothing is staged through host memory.

use anyhow::{bail, Result};
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::{DType, Device, Tensor};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::cuda_ipc::{copy_async, export, ExportedMemory, PeerMemory, HANDLE_BYTES};
use super::device_memory::{ipc_capable_zeros, queued_address};
use super::mpi_env::all_ok;

/// One rank's row of the handle exchange: ok flag, IPC handle, offset (little-endian u64).
const ROW: usize = 1 + HANDLE_BYTES + 8;

pub struct HiddenIpc {
    /// This rank's buffer, (positions, hidden) (not on rank 0).
    incoming: Option<Tensor>,
    /// The next rank's buffer, mapped here (not on the last rank).
    next: Option<PeerMemory>,
    row_bytes: usize,
}

impl HiddenIpc {
    /// Collective over `comm` (the pipeline's ranks in order): every rank but the first makes
    /// and exports its buffer of `positions` rows of `hidden` elements of `dtype`, and every
    /// rank but the last maps the next rank's. Every rank takes part in both exchanges whatever
    /// fails locally, so a failure is the same error on every rank, never a rank left waiting.
    pub fn open(
        comm: &SimpleCommunicator,
        positions: usize,
        hidden: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (rank, ranks) = (comm.rank() as usize, comm.size() as usize);
        let mine = (|| -> Result<Option<(Tensor, ExportedMemory)>> {
            if rank == 0 {
                return Ok(None);
            }
            let buffer = ipc_capable_zeros(&[positions, hidden], dtype, device)?;
            let stream = device.as_cuda_device()?.cuda_stream();
            stream.context().bind_to_thread()?;
            let exported = export(queued_address(&buffer, &stream)?)?;
            stream.synchronize()?; // the zeroing has landed before a peer may write
            Ok(Some((buffer, exported)))
        })();
        let mut row = [0u8; ROW];
        match &mine {
            Ok(Some((_, e))) => {
                row[0] = 1;
                row[1..1 + HANDLE_BYTES].copy_from_slice(&e.handle);
                row[1 + HANDLE_BYTES..].copy_from_slice(&e.offset.to_le_bytes());
            }
            Ok(None) => row[0] = 1,
            Err(_) => {}
        }
        let mut rows = vec![0u8; ROW * ranks];
        comm.all_gather_into(&row[..], &mut rows[..]);
        if let Err(error) = &mine {
            tracing::warn!("hidden-state buffer for CUDA IPC: {error:#}");
        }
        if let Some(q) = (0..ranks).find(|q| rows[q * ROW] == 0) {
            bail!("rank {q} could not export its hidden-state buffer for CUDA IPC");
        }
        let incoming = mine?.map(|(buffer, _)| buffer);
        let next = match rank + 1 < ranks {
            true => {
                let row = &rows[(rank + 1) * ROW..(rank + 2) * ROW];
                let mut handle = [0u8; HANDLE_BYTES];
                handle.copy_from_slice(&row[1..1 + HANDLE_BYTES]);
                let mut offset = [0u8; 8];
                offset.copy_from_slice(&row[1 + HANDLE_BYTES..]);
                PeerMemory::open(&handle, u64::from_le_bytes(offset)).map(Some)
            }
            false => Ok(None),
        };
        if let Err(error) = &next {
            tracing::warn!("mapping the next rank's hidden-state buffer: {error:#}");
        }
        all_ok(
            comm,
            next.is_ok(),
            "map the next rank's hidden-state buffer over CUDA IPC",
        )?;
        Ok(Self {
            incoming,
            next: next?,
            row_bytes: hidden * dtype.size_in_bytes(),
        })
    }

    /// Queues the copy of `hidden` ((L, hidden), contiguous) into rows `[start, start + L)` of
    /// the next rank's buffer on `stream`, behind the kernels that wrote it.
    ///
    /// # Safety
    /// `hidden` must stay alive until `stream` has passed the copy, and no other copy may write
    /// those rows meanwhile (each chunk's rows are written once per prefill run).
    pub unsafe fn push(&self, hidden: &Tensor, start: usize, stream: &CudaStream) -> Result<usize> {
        let Some(next) = &self.next else {
            bail!("the last rank has no next rank to push a hidden state to");
        };
        let bytes = hidden.elem_count() * hidden.dtype().size_in_bytes();
        let src = queued_address(hidden, stream)?;
        copy_async(next.address + (start * self.row_bytes) as u64, src, bytes, stream)?;
        Ok(bytes)
    }

    /// Rows `[start, start + len)` of this rank's buffer: a chunk's hidden state once its
    /// message has come.
    pub fn incoming(&self, start: usize, len: usize) -> Result<Tensor> {
        match &self.incoming {
            Some(buffer) => Ok(buffer.narrow(0, start, len)?),
            None => bail!("rank 0 receives no hidden state"),
        }
    }

    /// Unmaps the next rank's buffer (once this rank's copies have passed).
    pub fn close(self) -> Result<()> {
        match self.next {
            Some(next) => next.close(),
            None => Ok(()),
        }
    }
}
