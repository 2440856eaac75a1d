//! A KV sync call as one MPI_Allgatherv: every rank contributes its block (or nothing) and
//! receives everybody's.

use anyhow::Result;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use std::sync::Arc;

use super::kv_blocks::{read_block, write_block};
use super::worker::SyncStats;
use super::KvTransport;
use crate::model::KvCache;
use crate::schedule::KvSyncCall;
use crate::transport::SharedComm;

/// Allgatherv of host copies of the blocks.
pub struct HostAllgather {
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    /// Receive buffer, reused across calls.
    scratch: Vec<u8>,
}

impl HostAllgather {
    pub fn new(comm: SharedComm, rank: usize, kv: Arc<KvCache>) -> Self {
        Self {
            comm,
            rank,
            kv,
            scratch: Vec::new(),
        }
    }
}

impl KvTransport for HostAllgather {
    fn name(&self) -> &'static str {
        "allgather"
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        allgather_call(&self.comm.0, self.rank, call, &self.kv, &mut self.scratch, stats)
    }
}

fn allgather_call(
    comm: &SimpleCommunicator,
    rank: usize,
    call: &KvSyncCall,
    kv: &KvCache,
    scratch: &mut Vec<u8>,
    stats: &mut SyncStats,
) -> Result<()> {
    let bytes_per_position = kv.position_bytes();
    let counts: Vec<i32> = call
        .positions_per_rank()
        .iter()
        .map(|&p| i32::try_from(p * bytes_per_position))
        .collect::<Result<_, _>>()?;
    let displs: Vec<i32> = counts
        .iter()
        .scan(0i32, |offset, &c| {
            let d = *offset;
            *offset += c;
            Some(d)
        })
        .collect();
    let total: usize = counts.iter().map(|&c| c as usize).sum();
    let send = match &call.blocks[rank] {
        Some(block) => read_block(kv, block)?,
        None => Vec::new(),
    };
    scratch.resize(total, 0);
    {
        let mut partition = PartitionMut::new(&mut scratch[..], &counts[..], &displs[..]);
        comm.all_gather_varcount_into(&send[..], &mut partition);
    }
    for (q, block) in call.blocks.iter().enumerate() {
        if let (Some(block), true) = (block, q != rank) {
            let at = displs[q] as usize;
            write_block(kv, block, &scratch[at..at + counts[q] as usize])?;
            stats.bytes_received += counts[q] as u64;
        }
    }
    // what leaves this rank, logically: its block for each of the other ranks
    stats.bytes_sent += (send.len() * (call.blocks.len() - 1)) as u64;
    Ok(())
}
