//! Per-layer KV sync: after a rank computes one layer for one chunk, that layer's K/V for those
//! positions go to every other rank, on a communication thread, so the next layer computes
//! meanwhile.

pub mod allgather;
#[cfg(feature = "cuda")]
pub mod device;
pub mod in_place;
#[cfg(feature = "cuda")]
pub mod ipc;
pub mod kv_blocks;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod pieces;
pub mod ready;
pub mod ring;
pub mod shared_window;
pub mod skipped;
#[cfg(feature = "cuda")]
pub mod staged;
pub mod worker;

pub use worker::{KvSyncWorker, SyncStats};

use std::sync::Arc;

use anyhow::Result;

use crate::model::KvCache;
use crate::schedule::{Chunk, KvBlock, KvSyncCall};
use crate::transport::{MpiEnv, SharedComm, Transport, TransportArg, TransportPlan};

/// Moves the KV blocks of one sync call between ranks (one implementation per strategy and
/// transport). Runs on the communication thread.
pub trait KvTransport: Send {
    fn name(&self) -> &'static str;
    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()>;

    /// Waits until every block of the calls run so far has landed on every rank, for
    /// transports whose calls return before that (IPC pushes). Collective: every rank calls it
    /// at the end of each prefill's sync, and after the warm-up.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }

    /// Releases what the transport shares with the other ranks (a shared window). Collective:
    /// every rank calls it once it is done with the transport, before MPI finalises. A
    /// transport dropped without it (an error path, ending in `MPI_Abort`) frees nothing
    /// collective.
    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// One sync call with every transport's first-use costs (NCCL and CUDA IPC connect lazily,
/// per peer and per size; staging buffers are allocated): every rank sends `positions` of layer
/// 0 of a cache that holds nothing yet. Collective: every rank calls it once, before prefill.
pub fn warm_up(transport: &mut dyn KvTransport, ranks: usize, positions: usize) -> Result<()> {
    if ranks < 2 || positions == 0 {
        return Ok(());
    }
    transport.run_call(&one_block_per_rank(ranks, positions), &mut SyncStats::default())?;
    transport.finish()
}

/// A sync call in which rank q contributes layer 0 at positions `[q·P, (q+1)·P)`.
pub fn one_block_per_rank(ranks: usize, positions: usize) -> KvSyncCall {
    let block = |q: usize| KvBlock {
        layer: 0,
        chunk: Chunk {
            index: q,
            start: q * positions,
            end: (q + 1) * positions,
        },
    };
    KvSyncCall {
        step: 0,
        local_layer: 0,
        blocks: (0..ranks).map(|q| Some(block(q))).collect(),
    }
}

/// The KV transport of `plan` for `strategy`, and the transport it runs on: under `auto`, if
/// CUDA IPC cannot join the ranks (its setup agrees first, so it fails on every rank alike),
/// every rank falls back alike to the plan's across-nodes choice, and rank 0 says why.
/// Collective over the world of `env` (each attempt duplicates it). Blocks have at most
/// `max_block_positions` positions (the longest chunk): transports that allocate shared memory
/// size it by this, at construction.
pub fn open_transport(
    env: &MpiEnv,
    strategy: SyncStrategy,
    plan: &TransportPlan,
    kv: Arc<KvCache>,
    max_block_positions: usize,
) -> Result<(Box<dyn KvTransport>, Transport)> {
    let rank = env.rank;
    let made = make_transport(
        strategy,
        plan.transport,
        plan,
        env.duplicate(),
        rank,
        kv.clone(),
        max_block_positions,
    );
    match (made, &plan.ipc_fallback) {
        (Err(error), Some((fallback, why))) => {
            if rank == 0 {
                crate::eprint_line!(
                    "qwen3-mpi: transport ipc unavailable ({error:#}); transport {} ({why})",
                    fallback.name()
                );
            }
            let made = make_transport(
                strategy,
                *fallback,
                plan,
                env.duplicate(),
                rank,
                kv,
                max_block_positions,
            )?;
            Ok((made, *fallback))
        }
        (made, _) => Ok((made?, plan.transport)),
    }
}

/// The KV transport for `strategy` over `transport` (the plan's, or its fallback). Collective
/// over `comm`.
fn make_transport(
    strategy: SyncStrategy,
    transport: Transport,
    plan: &TransportPlan,
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    max_block_positions: usize,
) -> Result<Box<dyn KvTransport>> {
    match transport {
        Transport::Host if strategy == SyncStrategy::Ring => {
            Ok(Box::new(ring::HostRing::new(comm, rank, kv)?))
        }
        Transport::Host => host_allgather(comm, rank, kv, max_block_positions, plan),
        #[cfg(feature = "cuda")]
        Transport::Device => Ok(Box::new(device::DeviceSync::new(strategy, comm, rank, kv)?)),
        #[cfg(not(feature = "cuda"))]
        Transport::Device => anyhow::bail!("--transport device needs a GPU build (scripts/build-cuda.sh)"),
        Transport::Ipc if strategy == SyncStrategy::Ring => anyhow::bail!(
            "--sync ring does not apply to --transport ipc (each rank pushes its blocks to every peer); \
             use --sync allgather"
        ),
        #[cfg(feature = "cuda")]
        Transport::Ipc => Ok(Box::new(ipc::IpcPush::new(comm, rank, kv)?)),
        #[cfg(not(feature = "cuda"))]
        Transport::Ipc => anyhow::bail!("--transport ipc needs a GPU build (scripts/build-cuda.sh)"),
        #[cfg(feature = "nccl")]
        Transport::Nccl => Ok(Box::new(nccl::NcclSync::new(strategy, &comm, rank, kv)?)),
        #[cfg(not(feature = "nccl"))]
        Transport::Nccl => anyhow::bail!("--transport nccl needs a build with NCCL (scripts/build-cuda.sh)"),
    }
}

/// The allgather over host memory: through a node-shared window where the plan says so and
/// there is room, else through MPI's own allgather. Every rank makes the same choice; rank 0
/// logs it. Collective over `comm`.
fn host_allgather(
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    max_block_positions: usize,
    plan: &TransportPlan,
) -> Result<Box<dyn KvTransport>> {
    let (window, why) =
        shared_window::SharedWindowAllgather::select(&comm, rank, &kv, max_block_positions, &plan.host_path)?;
    let chosen: Box<dyn KvTransport> = match window {
        Some(window) => Box::new(window),
        None => mpi_host_allgather(comm, rank, kv, plan.stage_piece_bytes)?,
    };
    if rank == 0 {
        tracing::info!("KV sync over host memory: {} ({why})", chosen.name());
    }
    Ok(chosen)
}

/// The allgather over host memory through MPI's own allgather: pipelined staging through
/// page-locked buffers on a GPU (pieces of `piece_bytes` per rank), one `MPI_Allgatherv` of
/// host copies on the CPU.
pub fn mpi_host_allgather(
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    piece_bytes: usize,
) -> Result<Box<dyn KvTransport>> {
    #[cfg(feature = "cuda")]
    if kv.storage().device().is_cuda() {
        return Ok(Box::new(staged::StagedAllgather::new(
            comm,
            rank,
            kv,
            piece_bytes,
        )?));
    }
    let _ = piece_bytes;
    Ok(Box::new(allgather::HostAllgather::new(comm, rank, kv)?))
}

/// `--sync`: how one KV sync call moves the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncStrategy {
    /// Each layer's blocks of one pipeline step reach every rank in one allgather.
    Allgather,
    /// Each layer's blocks of one pipeline step go around the ring of ranks in R−1 steps.
    Ring,
    /// The same as `--sync allgather --transport nccl`.
    Nccl,
}

impl SyncStrategy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Allgather | Self::Nccl => "allgather",
            Self::Ring => "ring",
        }
    }

    /// `--sync nccl` is shorthand: the allgather pattern with the NCCL transport.
    pub fn with_transport(self, transport: TransportArg) -> (SyncStrategy, TransportArg) {
        match self {
            Self::Nccl => (Self::Allgather, TransportArg::Nccl),
            other => (other, transport),
        }
    }
}
