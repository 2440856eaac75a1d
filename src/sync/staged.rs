//! KV allgather through page-locked host memory, pipelined: the call is cut into pieces; while
//! MPI moves piece k between hosts, the copy engine brings piece k+1 of this rank's block to the
//! host and puts the pieces already received into the cache. Two staging buffers each way.

use std::sync::Arc;

use anyhow::Result;
use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream};
use mpi::datatype::PartitionMut;
use mpi::traits::*;

use super::in_place::InPlaceBlocks;
use super::pieces::{piece_positions, plan_pieces};
use super::worker::SyncStats;
use super::KvTransport;
use crate::model::KvCache;
use crate::schedule::KvSyncCall;
use crate::transport::device_memory::{side_stream, PinnedBuffer};
use crate::transport::SharedComm;

pub struct StagedAllgather {
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    stream: Arc<CudaStream>,
    piece_bytes: usize,
    send: [Option<PinnedBuffer>; 2],
    recv: [Option<PinnedBuffer>; 2],
}

impl StagedAllgather {
    /// `piece_bytes`: bytes per rank of one piece (`QWEN3_MPI_STAGE_PIECE_BYTES`, parsed at
    /// setup).
    pub fn new(comm: SharedComm, rank: usize, kv: Arc<KvCache>, piece_bytes: usize) -> Result<Self> {
        let stream = side_stream(kv.storage().device())?;
        Ok(Self {
            comm,
            rank,
            kv,
            stream,
            piece_bytes,
            send: [None, None],
            recv: [None, None],
        })
    }
}

/// A buffer of at least `len` bytes in `slot`, reusing the one there if large enough.
fn buffer(slot: &mut Option<PinnedBuffer>, len: usize) -> Result<&mut PinnedBuffer> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = Some(PinnedBuffer::new(len)?);
    }
    Ok(slot.as_mut().expect("just filled"))
}

impl KvTransport for StagedAllgather {
    fn name(&self) -> &'static str {
        "allgather staged through pinned host memory"
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        let stream = self.stream.clone();
        let pb = self.kv.position_bytes();
        let blocks = InPlaceBlocks::in_gpu_cache(call, &self.kv, &stream)?; // this rank's block is written
        let positions: Vec<usize> = blocks.counts.iter().map(|&c| c as usize).collect();
        let pieces = plan_pieces(&positions, piece_positions(self.piece_bytes, pb));
        let piece_len = piece_positions(self.piece_bytes, pb) * pb;
        let ranks = positions.len();
        let block_address = |q: usize, position: usize| blocks.address(q) + (position * pb) as u64;

        let mut to_host: [Option<CudaEvent>; 2] = [None, None];
        let mut to_device: [Option<CudaEvent>; 2] = [None, None];
        let stage_out = |k: usize, this: &mut Self, events: &mut [Option<CudaEvent>; 2]| -> Result<()> {
            let mine = pieces[k].ranges[this.rank].clone();
            let buf = buffer(&mut this.send[k % 2], piece_len)?;
            // SAFETY: the range is inside this rank's block in the cache; the buffer slot is not
            // read by MPI until `events[k % 2]` has completed.
            unsafe {
                buf.copy_from_device(0, block_address(this.rank, mine.start), mine.len() * pb, &stream)?
            };
            events[k % 2] = Some(stream.record_event(None)?);
            Ok(())
        };
        if !pieces.is_empty() {
            stage_out(0, self, &mut to_host)?;
        }
        for k in 0..pieces.len() {
            if k + 1 < pieces.len() {
                stage_out(k + 1, self, &mut to_host)?;
            }
            if let Some(event) = to_host[k % 2].take() {
                event.synchronize()?;
            }
            if let Some(event) = to_device[k % 2].take() {
                event.synchronize()?; // piece k−2 left this receive buffer
            }
            let sizes: Vec<i32> = pieces[k].ranges.iter().map(|r| (r.len() * pb) as i32).collect();
            let offsets: Vec<i32> = (0..ranks).map(|q| (q * piece_len) as i32).collect();
            let mine = sizes[self.rank] as usize;
            let recv = buffer(&mut self.recv[k % 2], piece_len * ranks)?;
            let send = self.send[k % 2].as_ref().expect("staged above");
            {
                let mut partition = PartitionMut::new(recv.as_mut_slice(), &sizes[..], &offsets[..]);
                self.comm
                    .0
                    .all_gather_varcount_into(&send.as_slice()[..mine], &mut partition);
            }
            for (q, range) in pieces[k].ranges.iter().enumerate() {
                if q == self.rank || range.is_empty() {
                    continue;
                }
                // SAFETY: the destination is rank q's block in the cache (in_place_layout), which
                // no kernel reads during prefill; the buffer stays untouched until the event.
                unsafe {
                    recv.copy_to_device(
                        q * piece_len,
                        block_address(q, range.start),
                        range.len() * pb,
                        &stream,
                    )?
                };
                stats.bytes_received += (range.len() * pb) as u64;
            }
            to_device[k % 2] = Some(stream.record_event(None)?);
            stats.bytes_sent += (mine * (ranks - 1)) as u64;
        }
        stream.synchronize()?;
        Ok(())
    }
}
