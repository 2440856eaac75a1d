//! KV sync on device memory with a CUDA-aware MPI, in place: blocks are sent from and received
//! into the KV cache itself, with no copy on either side.

use std::os::raw::c_void;
use std::sync::Arc;

use anyhow::Result;
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use mpi::datatype::UserDatatype;

use super::in_place::InPlaceBlocks;
use super::worker::SyncStats;
use super::{KvTransport, SyncStrategy};
use crate::model::KvCache;
use crate::schedule::{ring_steps, KvSyncCall};
use crate::transport::device_memory::side_stream;
use crate::transport::mpi_raw::{allgatherv_in_place, bytes_datatype, sendrecv};
use crate::transport::SharedComm;

pub struct DeviceSync {
    strategy: SyncStrategy,
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    /// The communication stream: waits for compute's writes before MPI reads the cache.
    stream: Arc<CudaStream>,
    /// One position of K and V.
    unit: UserDatatype,
}

impl DeviceSync {
    pub fn new(strategy: SyncStrategy, comm: SharedComm, rank: usize, kv: Arc<KvCache>) -> Result<Self> {
        let stream = side_stream(kv.storage().device())?;
        let unit = bytes_datatype(kv.position_bytes())?;
        Ok(Self {
            strategy,
            comm,
            rank,
            kv,
            stream,
            unit,
        })
    }
}

impl KvTransport for DeviceSync {
    fn name(&self) -> &'static str {
        match self.strategy {
            SyncStrategy::Ring => "ring on device memory",
            _ => "allgather on device memory",
        }
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        let blocks = InPlaceBlocks::in_gpu_cache(call, &self.kv, &self.stream)?;
        let (me, ranks) = (self.rank, call.blocks.len());
        match self.strategy {
            SyncStrategy::Allgather | SyncStrategy::Nccl => {
                // SAFETY: `base` is the cache's device address; every displacement + count is a
                // block inside it (in_place_layout); MPI is CUDA-aware (checked at setup).
                unsafe {
                    allgatherv_in_place(
                        &self.comm.0,
                        blocks.base as *mut c_void,
                        &blocks.counts,
                        &blocks.displs,
                        &self.unit,
                    )?
                };
                let bytes: Vec<usize> = (0..ranks).map(|q| blocks.bytes(q)).collect();
                stats.count_exchange(me, &bytes);
            }
            SyncStrategy::Ring => {
                for step in ring_steps(ranks, me) {
                    let (s, r) = (step.send_origin, step.recv_origin);
                    // SAFETY: as above; the block forwarded was received into the cache in the
                    // step before (or is this rank's own).
                    unsafe {
                        sendrecv(
                            &self.comm.0,
                            blocks.address(s) as *const c_void,
                            blocks.counts[s],
                            step.send_to as i32,
                            blocks.address(r) as *mut c_void,
                            blocks.counts[r],
                            step.recv_from as i32,
                            &self.unit,
                        )?
                    };
                    stats.bytes_sent += blocks.bytes(s) as u64;
                    stats.bytes_received += blocks.bytes(r) as u64;
                }
            }
        }
        Ok(())
    }
}
