//! KV sync by CUDA IPC (`--transport ipc`, every rank on one node): each rank maps every peer's
//! KV cache once, then pushes each block it computes straight into every peer's cache with the
//! copy engines. No SM runs communication and no peer takes part in a call, so a call only
//! queues its copies and returns; `finish` (collective) waits until every rank's copies have
//! landed. Blocks go to the same place in every cache (`in_place_layout`), and each block has
//! one writer (the rank that owns its layer), so pushes never overlap.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use mpi::traits::*;

use super::in_place::InPlaceBlocks;
use super::worker::SyncStats;
use super::KvTransport;
use crate::model::KvCache;
use crate::schedule::KvSyncCall;
use crate::transport::cuda_ipc::{copy_async, export, ExportedMemory, PeerMemory, HANDLE_BYTES};
use crate::transport::device_memory::{device_address, side_stream};
use crate::transport::mpi_env::all_ok;
use crate::transport::SharedComm;

/// One rank's row of the handle exchange: ok flag, IPC handle, offset of the cache in its
/// allocation (little-endian u64).
const ROW: usize = 1 + HANDLE_BYTES + 8;

pub struct IpcPush {
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    /// One copy stream per peer, so the pushes to different GPUs run at once (each its own
    /// link and copy engine); copies are queued only once compute has written the block.
    streams: Vec<Arc<CudaStream>>,
    /// This rank's cache, and every peer's mapped here (`None` at this rank's index).
    local: u64,
    peers: Vec<Option<PeerMemory>>,
}

// SAFETY: the mappings and the stream are used by the communication thread alone.
unsafe impl Send for IpcPush {}

impl IpcPush {
    /// Collective over `comm`: every rank exports its cache and maps every peer's. Every rank
    /// takes part in both exchanges whatever fails locally, so a failure is an error on every
    /// rank (the caller may fall back to another transport), never a rank left waiting.
    pub fn new(comm: SharedComm, rank: usize, kv: Arc<KvCache>) -> Result<Self> {
        let ranks = comm.0.size() as usize;
        let device = kv.storage().device().clone();
        let local = (|| -> Result<(Vec<Arc<CudaStream>>, u64, ExportedMemory)> {
            let streams = (0..ranks)
                .map(|_| side_stream(&device))
                .collect::<Result<Vec<_>>>()?;
            streams[0].context().bind_to_thread()?;
            let local = device_address(kv.storage(), &streams[0])?;
            let exported = match ranks {
                1 => ExportedMemory {
                    handle: [0; HANDLE_BYTES],
                    offset: 0,
                }, // no peer to map it
                _ => export(local)?,
            };
            Ok((streams, local, exported))
        })();
        let mut mine = [0u8; ROW];
        if let Ok((_, _, e)) = &local {
            mine[0] = 1;
            mine[1..1 + HANDLE_BYTES].copy_from_slice(&e.handle);
            mine[1 + HANDLE_BYTES..].copy_from_slice(&e.offset.to_le_bytes());
        }
        let mut rows = vec![0u8; ROW * ranks];
        comm.0.all_gather_into(&mine[..], &mut rows[..]);
        let (streams, local, _) = local?;
        if let Some(q) = (0..ranks).find(|q| rows[q * ROW] == 0) {
            bail!("rank {q} could not export its KV cache for CUDA IPC (cache memory must come from cuMemAlloc)");
        }
        let opened: Result<Vec<Option<PeerMemory>>> = (0..ranks)
            .map(|q| {
                if q == rank {
                    return Ok(None);
                }
                let row = &rows[q * ROW..(q + 1) * ROW];
                let mut handle = [0u8; HANDLE_BYTES];
                handle.copy_from_slice(&row[1..1 + HANDLE_BYTES]);
                let mut offset = [0u8; 8];
                offset.copy_from_slice(&row[1 + HANDLE_BYTES..]);
                PeerMemory::open(&handle, u64::from_le_bytes(offset)).map(Some)
            })
            .collect();
        all_ok(&comm.0, opened.is_ok(), "map its peers' KV caches over CUDA IPC")?;
        Ok(Self {
            comm,
            rank,
            kv,
            streams,
            local,
            peers: opened?,
        })
    }
}

impl KvTransport for IpcPush {
    fn name(&self) -> &'static str {
        "push to every peer through CUDA IPC"
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        // offsets from the start of a cache: the same in every rank's
        let blocks = InPlaceBlocks::new(call, self.kv.capacity(), self.kv.position_bytes(), 0)?;
        let (me, bytes) = (self.rank, blocks.bytes(self.rank));
        let all: Vec<usize> = (0..call.blocks.len()).map(|q| blocks.bytes(q)).collect();
        stats.count_exchange(me, &all);
        if bytes == 0 {
            return Ok(());
        }
        let offset = blocks.address(me);
        self.streams[0].context().bind_to_thread()?;
        for (peer, stream) in self.peers.iter().zip(&self.streams) {
            let Some(peer) = peer else { continue };
            // SAFETY: both ranges are this block inside a whole cache (in_place_layout), which
            // lives for the job; compute has finished writing it (the worker waited for its
            // BlockReady), and only this rank writes it in any cache.
            unsafe { copy_async(peer.address + offset, self.local + offset, bytes, stream)? };
        }
        Ok(())
    }

    /// Unmaps the peers' caches, then meets them, so that no rank frees its cache while a peer
    /// still maps it.
    fn close(self: Box<Self>) -> Result<()> {
        let this = *self;
        this.streams[0].context().bind_to_thread()?;
        for peer in this.peers.into_iter().flatten() {
            peer.close()?;
        }
        this.comm.0.barrier();
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        for stream in &self.streams {
            stream.synchronize()?; // this rank's pushes have landed
        }
        self.comm.0.barrier(); // and every peer's
        Ok(())
    }
}
