//! A KV sync call around the ring: N−1 MPI_Sendrecv steps, each forwarding the block received in
//! the step before.

use anyhow::Result;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use std::sync::Arc;

use super::kv_blocks::{read_block, write_block};
use super::worker::SyncStats;
use super::KvTransport;
use crate::model::KvCache;
use crate::schedule::{ring_steps, KvSyncCall};
use crate::transport::SharedComm;

/// Sendrecv ring of host copies of the blocks.
pub struct HostRing {
    comm: SharedComm,
    rank: usize,
    kv: Arc<KvCache>,
}

impl HostRing {
    pub fn new(comm: SharedComm, rank: usize, kv: Arc<KvCache>) -> Self {
        Self { comm, rank, kv }
    }
}

impl KvTransport for HostRing {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn run_call(&mut self, call: &KvSyncCall, stats: &mut SyncStats) -> Result<()> {
        ring_call(&self.comm.0, self.rank, call, &self.kv, stats)
    }
}

fn ring_call(
    comm: &SimpleCommunicator,
    rank: usize,
    call: &KvSyncCall,
    kv: &KvCache,
    stats: &mut SyncStats,
) -> Result<()> {
    let bytes_per_position = kv.position_bytes();
    let ranks = call.blocks.len();
    let sizes: Vec<usize> = call
        .positions_per_rank()
        .iter()
        .map(|&p| p * bytes_per_position)
        .collect();
    let mut outgoing = match &call.blocks[rank] {
        Some(block) => read_block(kv, block)?,
        None => Vec::new(),
    };
    for step in ring_steps(ranks, rank) {
        let mut incoming = vec![0u8; sizes[step.recv_origin]];
        mpi::point_to_point::send_receive_into(
            &outgoing[..],
            &comm.process_at_rank(step.send_to as i32),
            &mut incoming[..],
            &comm.process_at_rank(step.recv_from as i32),
        );
        stats.bytes_sent += outgoing.len() as u64;
        stats.bytes_received += incoming.len() as u64;
        if let Some(block) = &call.blocks[step.recv_origin] {
            write_block(kv, block, &incoming)?;
        }
        outgoing = incoming;
    }
    Ok(())
}
