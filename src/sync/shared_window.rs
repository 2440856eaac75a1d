//! KV allgather through a node-shared host window (`--sync allgather --transport host` when
//! every rank is on one node): each rank copies its block into its own slot of an MPI-3 shared
//! window, the node meets at one barrier, and each rank copies every peer's block out of the
//! peer's slot into its cache. MPI moves no bytes: both copies are the ranks' own (on a GPU,
//! device → slot and slot → device on the communication thread's own stream, with the window
//! page-locked). Each rank has two slots and calls alternate between them, so one node barrier
//! per call suffices (a slot is rewritten two calls later, after every rank has left the
//! previous call's reads; the argument and the memory model: `transport/shared_window.rs`).
//! Every rank takes part in every call, with an empty slot when it has no block.

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{CpuStorage, Storage};
use mpi::collective::SystemOperation;
use mpi::traits::*;

use super::kv_blocks::BlockIo;
use super::worker::SyncStats;
use super::KvTransport;
use crate::model::KvCache;
use crate::schedule::{KvBlock, KvSyncCall};
use crate::transport::selection::HostPathPlan;
use crate::transport::settings::HOST_PATH_ENV;
use crate::transport::shared_window::{backing_store_free, node_communicator, page_bytes, SharedWindow};
use crate::transport::SharedComm;

/// [`KvTransport::name`] of this transport.
pub const NAME: &str = "allgather through a node-shared host window";

pub struct SharedWindowAllgather {
    rank: usize,
    kv: Arc<KvCache>,
    window: SharedWindow,
    /// The copy stream and the window's page-locking when the cache is on a GPU.
    #[cfg(feature = "cuda")]
    gpu: Option<GpuCopies>,
}

#[cfg(feature = "cuda")]
struct GpuCopies {
    stream: Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    _pinned: Option<crate::transport::device_memory::HostRegistration>,
}

impl SharedWindowAllgather {
    /// This transport where `path` (the job's plan) says the window and nothing rules it out
    /// (every rank of `comm` on this node, room for the window), else `None`; with the reason
    /// either way. Every rank gets the same answer. Collective over `comm`. Slots hold blocks
    /// of up to `max_block_positions` positions (the schedule's longest chunk).
    pub fn select(
        comm: &SharedComm,
        rank: usize,
        kv: &Arc<KvCache>,
        max_block_positions: usize,
        path: &HostPathPlan,
    ) -> Result<(Option<Self>, String)> {
        let ranks = comm.0.size() as usize;
        if ranks < 2 {
            return Ok((None, "one rank: nothing to exchange".into()));
        }
        let node = node_communicator(&comm.0)?;
        // one slot: the longest block (P, 2, KVH, D), in whole pages
        let slot_bytes = (max_block_positions.max(1) * kv.position_bytes()).next_multiple_of(page_bytes());
        let needed = (2 * slot_bytes * ranks) as u64;
        // (every rank takes part in the vote below, whatever its own plan says)
        let local = if !path.window {
            Err(path.reason.clone())
        } else if node.size() as usize != ranks {
            Err(format!(
                "the {ranks} ranks are on more than one node ({} on this one)",
                node.size()
            ))
        } else {
            match backing_store_free() {
                Some((dir, free)) if free < needed => {
                    let why = format!("the window needs {needed} bytes and {dir} has {free} free");
                    tracing::warn!("KV sync: no node-shared window: {why} (in a container: --shm-size)");
                    Err(why)
                }
                _ => Ok(()),
            }
        };
        let mut everyone = 0i32;
        comm.0
            .all_reduce_into(&i32::from(local.is_ok()), &mut everyone, SystemOperation::min());
        if everyone == 0 {
            let why = local
                .err()
                .unwrap_or_else(|| "another rank cannot share the window".into());
            if path.required {
                bail!("{HOST_PATH_ENV}=window: {why}");
            }
            return Ok((None, why));
        }
        let window = SharedWindow::allocate(node, slot_bytes)?;
        let why = path.reason.clone();
        Ok((
            Some(Self {
                rank,
                kv: kv.clone(),
                #[cfg(feature = "cuda")]
                gpu: GpuCopies::for_cache(kv, &window)?,
                window,
            }),
            why,
        ))
    }
}

impl KvTransport for SharedWindowAllgather {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        let pb = self.kv.position_bytes();
        // rank q's block (P_q, 2, KVH, D): P_q × position_bytes bytes
        let bytes: Vec<usize> = call.positions_per_rank().iter().map(|&p| p * pb).collect();
        ensure!(
            bytes.len() == self.window.ranks(),
            "a KV sync call for {} ranks on a shared window of {}",
            bytes.len(),
            self.window.ranks()
        );
        if let Some(&too_big) = bytes.iter().find(|&&b| b > self.window.slot_bytes()) {
            bail!(
                "a {too_big}-byte KV block does not fit the shared window's {}-byte slots",
                self.window.slot_bytes()
            );
        }
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            gpu.exchange(&mut self.window, &self.kv, self.rank, call, &bytes)?;
            stats.count_exchange(self.rank, &bytes);
            return Ok(());
        }
        exchange_on_cpu(&mut self.window, &self.kv, self.rank, call, &bytes)?;
        stats.count_exchange(self.rank, &bytes);
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        let this = *self;
        #[cfg(feature = "cuda")]
        drop(this.gpu); // unregister the pages before the window's memory goes
        this.window.free()
    }
}

/// One round on host memory: cache → own slot (one memcpy), then each peer's slot → the cache
/// through [`BlockIo::write`], as `HostAllgather` does.
fn exchange_on_cpu(
    window: &mut SharedWindow,
    kv: &KvCache,
    rank: usize,
    call: &KvSyncCall,
    bytes: &[usize],
) -> Result<()> {
    let io = BlockIo::new(kv)?; // on the CPU: nothing to set up
    window.exchange(
        |slot| match &call.blocks[rank] {
            Some(block) => copy_out_of_cpu_cache(kv, block, &mut slot[..bytes[rank]]),
            None => Ok(()), // idle this call: still meets the others at the barrier
        },
        |slots| {
            for (q, block) in call.blocks.iter().enumerate() {
                let Some(block) = block.filter(|_| q != rank) else {
                    continue;
                };
                io.write(kv, &block, &slots[q][..bytes[q]])?; // (P_q, 2, KVH, D)
            }
            Ok(())
        },
    )
}

/// Copies `block` (P, 2, KVH, D) of a cache in host memory into `slot` (P × position_bytes).
fn copy_out_of_cpu_cache(kv: &KvCache, block: &KvBlock, slot: &mut [u8]) -> Result<()> {
    let (storage, layout) = kv.storage().storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("the KV cache is not in host memory");
    };
    let all: &[u8] = match cpu {
        CpuStorage::F32(v) => bytemuck::cast_slice(v),
        CpuStorage::BF16(v) => bytemuck::cast_slice(v),
        CpuStorage::F16(v) => bytemuck::cast_slice(v),
        _ => bail!("no shared-window KV sync for dtype {:?}", kv.dtype()),
    };
    let at = layout.start_offset() * kv.dtype().size_in_bytes()
        + kv.position_index(block.layer, block.chunk.start) * kv.position_bytes();
    let source = all
        .get(at..at + slot.len())
        .context("KV block outside the cache")?;
    slot.copy_from_slice(source);
    Ok(())
}

#[cfg(feature = "cuda")]
impl GpuCopies {
    /// A copy stream and the window page-locked, if the cache is on a GPU (pageable, with a
    /// warning, if the driver refuses to lock it).
    fn for_cache(kv: &KvCache, window: &SharedWindow) -> Result<Option<Self>> {
        let device = kv.storage().device();
        if !device.is_cuda() {
            return Ok(None);
        }
        let stream = crate::transport::device_memory::side_stream(device)?;
        let (start, len) = window.span();
        // SAFETY: the window stays mapped until it is freed, which `close` does only after this
        // registration is dropped (a window never freed stays mapped until the process ends).
        let pinned =
            match unsafe { crate::transport::device_memory::HostRegistration::new(start, len, &stream) } {
                Ok(pinned) => Some(pinned),
                Err(error) => {
                    tracing::warn!(
                    "cannot page-lock the shared KV window ({error}); its copies run from pageable memory"
                );
                    None
                }
            };
        Ok(Some(Self {
            stream,
            _pinned: pinned,
        }))
    }

    /// One round on a GPU: own block device → own slot; after the barrier every peer's block
    /// slot → device, queued back to back on the side stream and waited for before the round ends.
    fn exchange(
        &self,
        window: &mut SharedWindow,
        kv: &KvCache,
        rank: usize,
        call: &KvSyncCall,
        bytes: &[usize],
    ) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::result::{memcpy_dtoh_async, memcpy_htod_async};
        let stream = &self.stream;
        let blocks = super::in_place::InPlaceBlocks::in_gpu_cache(call, kv, stream)?; // block addresses
        window.exchange(
            |slot| {
                if bytes[rank] > 0 {
                    // SAFETY: the source is this rank's block in the cache (written by compute, whose
                    // event the worker waited for); the slot range is bytes[rank] long and used
                    // by nobody else until the barrier, after the synchronise below.
                    unsafe {
                        memcpy_dtoh_async(&mut slot[..bytes[rank]], blocks.address(rank), stream.cu_stream())?
                    };
                    stream.synchronize()?;
                }
                Ok(())
            },
            |slots| {
                let queued = (0..bytes.len())
                    .filter(|&q| q != rank && bytes[q] > 0)
                    .try_for_each(|q| {
                        // SAFETY: the destination is rank q's block in the cache, which no kernel
                        // reads during prefill; the slot stays unchanged until the synchronise below.
                        unsafe {
                            memcpy_htod_async(blocks.address(q), &slots[q][..bytes[q]], stream.cu_stream())
                        }
                    });
                stream.synchronize()?; // the slots may be overwritten once this round ends
                Ok(queued?)
            },
        )
    }
}
