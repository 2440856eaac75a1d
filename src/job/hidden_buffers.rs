//! Where the hidden states between stages live, made once per job. On the host path: one
//! buffer per chunk each way (none out of the last rank, none into rank 0), page-locked on a
//! GPU, so the copies to and from the device run at full speed and no pinning happens inside
//! prefill. On the IPC path (`--hidden-transport`): each rank's GPU buffer for the whole
//! prompt, mapped by the rank before it, and an 8-byte message per chunk each way. On the
//! device path: each rank's GPU buffers for the whole prompt, incoming and outgoing, which MPI
//! moves between, and the same 8-byte messages.

use anyhow::Result;
use candle_core::DType;
use mpi::topology::SimpleCommunicator;

use crate::schedule::Schedule;
use crate::transport::hidden_device::HiddenDevice;
use crate::transport::hidden_ipc::HiddenIpc;
use crate::transport::hidden_out::HostBuffer;
use crate::transport::{HiddenPath, HiddenPlan};

pub struct HiddenBuffers {
    pub(super) outgoing: Vec<HostBuffer>,
    pub(super) incoming: Vec<HostBuffer>,
    /// The GPU buffers of the IPC or device path (the host buffers are then the messages
    /// that announce each hidden state); `None`: the host path.
    pub(super) gpu: Option<GpuRows>,
}

/// Hidden states that go GPU to GPU.
pub enum GpuRows {
    /// Pushed into the next rank's buffer through CUDA IPC.
    Ipc(HiddenIpc),
    /// Sent by MPI from this rank's GPU buffer into the next rank's.
    Device(HiddenDevice),
}

/// Bytes of the message that announces a hidden state pushed to the next rank's GPU.
const NOTE_BYTES: usize = 8;

impl HiddenBuffers {
    /// The buffers of `plan`'s path. The IPC path is collective over `pipe` (every rank opens
    /// it or none does); where it cannot open and `plan` allows, every rank takes the host path
    /// (rank 0 says why).
    pub fn for_plan(
        plan: &HiddenPlan,
        pipe: &SimpleCommunicator,
        schedule: &Schedule,
        hidden_size: usize,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Self> {
        use mpi::traits::Communicator as _;
        let (rank, ranks) = (pipe.rank() as usize, pipe.size() as usize);
        let row_bytes = hidden_size * dtype.size_in_bytes();
        let notes = |wanted: bool| match wanted {
            true => schedule
                .chunks()
                .iter()
                .map(|_| HostBuffer::plain(NOTE_BYTES))
                .collect(),
            false => Vec::new(),
        };
        let positions = schedule.chunks().last().map_or(0, |c| c.end);
        if plan.path == HiddenPath::Device {
            let device = HiddenDevice::open(pipe, positions, hidden_size, dtype, device)
                .map_err(|e| e.context("--hidden-transport device"))?;
            return Ok(Self {
                outgoing: notes(rank + 1 < ranks),
                incoming: notes(rank > 0),
                gpu: Some(GpuRows::Device(device)),
            });
        }
        if plan.path == HiddenPath::Ipc {
            match HiddenIpc::open(pipe, positions, hidden_size, dtype, device) {
                Ok(ipc) => {
                    return Ok(Self {
                        outgoing: notes(rank + 1 < ranks),
                        incoming: notes(rank > 0),
                        gpu: Some(GpuRows::Ipc(ipc)),
                    });
                }
                Err(error) if plan.host_fallback => {
                    if rank == 0 {
                        crate::eprint_line!(
                            "qwen3-mpi: hidden states through host memory: CUDA IPC unavailable ({error:#})"
                        );
                    }
                }
                Err(error) => return Err(error.context("--hidden-transport ipc")),
            }
        }
        Self::host(rank, ranks, schedule, row_bytes, device)
    }

    /// The host path's buffers.
    fn host(
        rank: usize,
        ranks: usize,
        schedule: &Schedule,
        row_bytes: usize,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let per_chunk = |wanted: bool| -> Result<Vec<HostBuffer>> {
            if !wanted {
                return Ok(Vec::new());
            }
            schedule
                .chunks()
                .iter()
                .map(|c| HostBuffer::new(c.len() * row_bytes, device))
                .collect()
        };
        Ok(Self {
            outgoing: per_chunk(rank + 1 < ranks)?,
            incoming: per_chunk(rank > 0)?,
            gpu: None,
        })
    }

    /// The path the hidden states take.
    pub fn path(&self) -> HiddenPath {
        match &self.gpu {
            Some(GpuRows::Ipc(_)) => HiddenPath::Ipc,
            Some(GpuRows::Device(_)) => HiddenPath::Device,
            None => HiddenPath::Host,
        }
    }

    /// Unmaps the next rank's buffer (every copy into it has passed: its messages went out).
    pub fn close(self) -> Result<()> {
        match self.gpu {
            Some(GpuRows::Ipc(ipc)) => ipc.close(),
            Some(GpuRows::Device(_)) | None => Ok(()),
        }
    }
}
