//! A KV sync call around the ring of host copies: N−1 MPI_Sendrecv steps, each forwarding the
//! block received in the step before.

use std::sync::Arc;

use anyhow::Result;
use mpi::traits::*;

use super::kv_blocks::BlockIo;
use super::worker::SyncStats;
use super::KvTransport;
use crate::model::KvCache;
use crate::schedule::{ring_steps, KvSyncCall};
use crate::transport::SharedComm;

pub struct HostRing {
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
    io: BlockIo,
}

impl HostRing {
    pub fn new(comm: SharedComm, rank: usize, kv: Arc<KvCache>) -> Result<Self> {
        let io = BlockIo::new(&kv)?;
        Ok(Self { comm, rank, kv, io })
    }
}

impl KvTransport for HostRing {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        let ranks = call.blocks.len();
        let sizes: Vec<usize> = call
            .positions_per_rank()
            .iter()
            .map(|&p| p * self.kv.position_bytes())
            .collect();
        let mut outgoing = match &call.blocks[self.rank] {
            Some(block) => self.io.read(&self.kv, block)?,
            None => Vec::new(),
        };
        for step in ring_steps(ranks, self.rank) {
            let mut incoming = vec![0u8; sizes[step.recv_origin]];
            mpi::point_to_point::send_receive_into(
                &outgoing[..],
                &self.comm.0.process_at_rank(step.send_to as i32),
                &mut incoming[..],
                &self.comm.0.process_at_rank(step.recv_from as i32),
            );
            stats.bytes_sent += outgoing.len() as u64;
            stats.bytes_received += incoming.len() as u64;
            if let Some(block) = &call.blocks[step.recv_origin] {
                self.io.write(&self.kv, block, &incoming)?;
            }
            outgoing = incoming;
        }
        Ok(())
    }
}
