//! KV sync through NCCL (`--transport nccl` or `--sync nccl`), in place on device memory: each
//! call is a group of NCCL sends and receives between the cache blocks themselves, on the
//! communication thread's own stream. The NCCL communicator is set up once per job, its unique
//! id broadcast over MPI.

use std::os::raw::c_void;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::{result, sys};
use mpi::traits::*;

use super::in_place::InPlaceBlocks;
use super::worker::SyncStats;
use super::{KvTransport, SyncStrategy};
use crate::model::KvCache;
use crate::schedule::{ring_steps, KvSyncCall};
use crate::transport::device_memory::side_stream;
use crate::transport::gpu_sharing::{nccl_init_error, refuse_shared_gpus, RankGpu};
use crate::transport::SharedComm;

pub struct NcclSync {
    strategy: SyncStrategy,
    comm: sys::ncclComm_t,
    rank: usize,
    kv: Arc<KvCache>,
    stream: Arc<CudaStream>,
}

// SAFETY: the NCCL communicator is used by the communication thread alone after construction.
unsafe impl Send for NcclSync {}

fn nccl(what: &str, status: Result<result::NcclStatus, result::NcclError>) -> Result<()> {
    status
        .map(|_| ())
        .map_err(|e| anyhow!("NCCL {what} failed: {e:?}"))
}

impl NcclSync {
    /// Collective over `mpi` (every rank, in order): rank 0 makes the NCCL id, all join.
    pub fn new(strategy: SyncStrategy, mpi: &SharedComm, rank: usize, kv: Arc<KvCache>) -> Result<Self> {
        let stream = side_stream(kv.storage().device())?;
        stream.context().bind_to_thread()?;
        // two ranks on one GPU fail NCCL's init as "invalid usage": say so first, on every rank
        let mine = RankGpu {
            host: crate::transport::MpiEnv::hostname(),
            uuid: stream
                .context()
                .uuid()
                .map(|u| u.bytes.iter().map(|b| format!("{:02x}", *b as u8)).collect())
                .unwrap_or_default(),
            index: stream.context().ordinal(),
        };
        refuse_shared_gpus(&mpi.0, &mine)?;
        let mut id = match rank {
            0 => result::get_uniqueid().map_err(|e| anyhow!("NCCL unique id: {e:?}"))?,
            _ => sys::ncclUniqueId { internal: [0; 128] },
        };
        let mut bytes: Vec<i8> = id.internal.iter().map(|&c| c as i8).collect();
        mpi.0.process_at_rank(0).broadcast_into(&mut bytes[..]);
        for (dst, src) in id.internal.iter_mut().zip(&bytes) {
            *dst = *src as _;
        }
        let ranks = mpi.0.size();
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL on success; every rank passes the same id and size.
        unsafe { result::comm_init_rank(comm.as_mut_ptr(), ranks, id, rank as i32) }
            .map_err(|e| anyhow!("{}", nccl_init_error(&format!("{e:?}"))))?;
        // SAFETY: initialised by the successful call above.
        let comm = unsafe { comm.assume_init() };
        Ok(Self {
            strategy,
            comm,
            rank,
            kv,
            stream,
        })
    }

    /// Queues a send of `bytes` at device address `at` to `peer` (nothing for 0 bytes).
    ///
    /// # Safety
    /// `at` must address `bytes` readable device bytes until the stream has passed the group.
    unsafe fn send(&self, at: u64, bytes: usize, peer: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let stream = self.stream.cu_stream() as sys::cudaStream_t;
        nccl(
            "send",
            result::send(
                at as *const c_void,
                bytes,
                sys::ncclDataType_t::ncclUint8,
                peer as i32,
                self.comm,
                stream,
            ),
        )
    }

    /// # Safety
    /// `at` must address `bytes` writable device bytes until the stream has passed the group.
    unsafe fn recv(&self, at: u64, bytes: usize, peer: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let stream = self.stream.cu_stream() as sys::cudaStream_t;
        nccl(
            "recv",
            result::recv(
                at as *mut c_void,
                bytes,
                sys::ncclDataType_t::ncclUint8,
                peer as i32,
                self.comm,
                stream,
            ),
        )
    }
}

impl Drop for NcclSync {
    fn drop(&mut self) {
        // SAFETY: created by comm_init_rank; nothing is queued on it once the stream is synced.
        let _ = self.stream.synchronize();
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

impl KvTransport for NcclSync {
    fn name(&self) -> &'static str {
        match self.strategy {
            SyncStrategy::Ring => "ring over NCCL",
            _ => "allgather over NCCL",
        }
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        let blocks = InPlaceBlocks::in_gpu_cache(call, &self.kv, &self.stream)?;
        let at = |q: usize| blocks.address(q);
        let bytes = |q: usize| blocks.bytes(q);
        let (me, ranks) = (self.rank, call.blocks.len());
        // SAFETY (all sends and receives below): addresses are blocks inside the cache
        // (in_place_layout); the stream is synchronised before this call returns.
        match self.strategy {
            SyncStrategy::Ring => {
                for step in ring_steps(ranks, me) {
                    nccl("group start", result::group_start())?;
                    unsafe {
                        self.send(at(step.send_origin), bytes(step.send_origin), step.send_to)?;
                        self.recv(at(step.recv_origin), bytes(step.recv_origin), step.recv_from)?;
                    }
                    nccl("group end", result::group_end())?;
                    stats.bytes_sent += bytes(step.send_origin) as u64;
                    stats.bytes_received += bytes(step.recv_origin) as u64;
                }
            }
            _ => {
                nccl("group start", result::group_start())?;
                for q in (0..ranks).filter(|&q| q != me) {
                    unsafe {
                        self.send(at(me), bytes(me), q)?;
                        self.recv(at(q), bytes(q), q)?;
                    }
                    stats.bytes_sent += bytes(me) as u64;
                    stats.bytes_received += bytes(q) as u64;
                }
                nccl("group end", result::group_end())?;
            }
        }
        self.stream.synchronize()?;
        Ok(())
    }
}
