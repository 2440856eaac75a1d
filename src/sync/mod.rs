//! Per-layer KV sync: after a rank computes one layer for one chunk, that layer's K/V for those
//! positions go to every other rank, on a communication thread, so the next layer computes
//! meanwhile.

pub mod allgather;
pub mod kv_blocks;
pub mod ring;
pub mod worker;

pub use worker::{KvSyncWorker, SyncStats};

/// `--sync`: how one KV sync call moves the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncStrategy {
    /// One MPI_Allgatherv per call.
    Allgather,
    /// N−1 MPI_Sendrecv steps around the ring per call.
    Ring,
}

impl SyncStrategy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Allgather => "allgather",
            Self::Ring => "ring",
        }
    }
}
