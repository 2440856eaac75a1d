//! A KV sync call as one MPI_Allgatherv of host copies: every rank contributes its block (or
//! nothing) and receives everybody's.

use std::sync::Arc;

use anyhow::Result;
use mpi::datatype::PartitionMut;
use mpi::traits::*;

use super::kv_blocks::BlockIo;
use super::worker::SyncStats;
use super::KvTransport;
use crate::model::KvCache;
use crate::schedule::KvSyncCall;
use crate::transport::mpi_raw::packed_displacements;
use crate::transport::SharedComm;

pub struct HostAllgather {
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    io: BlockIo,
    /// Receive buffer, reused across calls.
    scratch: Vec<u8>,
}

impl HostAllgather {
    pub fn new(comm: SharedComm, rank: usize, kv: Arc<KvCache>) -> Result<Self> {
        let io = BlockIo::new(&kv)?;
        Ok(Self {
            comm,
            rank,
            kv,
            io,
            scratch: Vec::new(),
        })
    }
}

impl KvTransport for HostAllgather {
    fn name(&self) -> &'static str {
        "allgather"
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        let bytes_per_position = self.kv.position_bytes();
        let counts: Vec<i32> = call
            .positions_per_rank()
            .iter()
            .map(|&p| i32::try_from(p * bytes_per_position))
            .collect::<Result<_, _>>()?;
        let displs: Vec<i32> = packed_displacements(&counts);
        let send = match &call.blocks[self.rank] {
            Some(block) => self.io.read(&self.kv, block)?,
            None => Vec::new(),
        };
        self.scratch.resize(counts.iter().map(|&c| c as usize).sum(), 0);
        {
            let mut partition = PartitionMut::new(&mut self.scratch[..], &counts[..], &displs[..]);
            self.comm.0.all_gather_varcount_into(&send[..], &mut partition);
        }
        for (q, block) in call.blocks.iter().enumerate() {
            if let (Some(block), true) = (block, q != self.rank) {
                let at = displs[q] as usize;
                self.io
                    .write(&self.kv, block, &self.scratch[at..at + counts[q] as usize])?;
                stats.bytes_received += counts[q] as u64;
            }
        }
        // what leaves this rank, logically: its block for each of the other ranks
        stats.bytes_sent += (send.len() * (call.blocks.len() - 1)) as u64;
        Ok(())
    }
}
