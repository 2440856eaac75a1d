//! The communication thread: runs the KV sync calls handed to it, in order, on its own
//! communicator, while the compute thread goes on with the next layer.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use super::ready::BlockReady;
use super::KvTransport;
use crate::abort::watchdog::Watchdog;
use crate::abort::JobAbort;
use crate::schedule::Schedule;
use crate::trace::nvtx::SpanRange;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};

/// What the sync moved and how long it spent in MPI.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SyncStats {
    pub calls: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds the communication thread spent inside sync calls.
    pub busy_s: f64,
}

impl SyncStats {
    /// One call in which every rank's block reaches every other rank: `block_bytes[q]` is rank
    /// q's block. This rank sends its own to each of the others and receives all theirs.
    pub fn count_exchange(&mut self, rank: usize, block_bytes: &[usize]) {
        self.bytes_sent += (block_bytes[rank] * (block_bytes.len() - 1)) as u64;
        self.bytes_received += block_bytes
            .iter()
            .enumerate()
            .filter(|&(q, _)| q != rank)
            .map(|(_, &b)| b as u64)
            .sum::<u64>();
    }
}

pub struct KvSyncWorker {
    queue: mpsc::Sender<(usize, BlockReady)>,
    thread: JoinHandle<Result<(SyncStats, Box<dyn KvTransport>)>>,
}

impl KvSyncWorker {
    /// Starts the thread; `transport` runs each call (and owns its communicator).
    pub fn spawn(
        mut transport: Box<dyn KvTransport>,
        rank: usize,
        schedule: Arc<Schedule>,
        watchdog: Watchdog,
        spans: SpanLog,
    ) -> Result<Self> {
        let (queue, calls) = mpsc::channel::<(usize, BlockReady)>();
        let thread = std::thread::Builder::new()
            .name("kv-sync".into())
            .spawn(move || -> Result<(SyncStats, Box<dyn KvTransport>)> {
                let mut stats = SyncStats::default();
                for (index, ready) in calls {
                    let call = &schedule.kv_sync_calls()[index];
                    if call.blocks.len() < 2 {
                        continue; // one rank: its cache is already whole
                    }
                    tracing::debug!("KV sync call {index} (step {}): waiting for its block", call.step);
                    if let Err(error) = ready.wait() {
                        JobAbort { rank }.fail(&error.context("waiting for a KV block to be computed"));
                    }
                    let _wait = watchdog.waiting_for(format!(
                        "KV sync ({}) of step {}, local layer {}",
                        transport.name(),
                        call.step,
                        call.local_layer
                    ));
                    let mine = call.blocks[rank];
                    let mut at = SpanAt {
                        layer: mine.map_or(-1, |b| b.layer as i32),
                        chunk: mine.map_or(-1, |b| b.chunk.index as i32),
                        step: call.step as i32,
                        ..SpanAt::NONE
                    };
                    let _range = SpanRange::open(SpanKind::KvSync, at);
                    let started = Instant::now();
                    let moved_before = stats.bytes_sent + stats.bytes_received;
                    if let Err(error) = transport.run_call(call, &mut stats) {
                        // Peers are inside this call: end the job rather than leave them waiting.
                        JobAbort { rank }.fail(&error.context(format!("KV sync of step {}", call.step)));
                    }
                    tracing::debug!("KV sync call {index} (step {}) done", call.step);
                    stats.busy_s += started.elapsed().as_secs_f64();
                    at.bytes = stats.bytes_sent + stats.bytes_received - moved_before;
                    spans.record(SpanKind::KvSync, SpanThread::KvSync, at, started);
                    stats.calls += 1;
                }
                // every rank here, once: the transports whose calls return early (IPC) land now
                let _wait =
                    watchdog.waiting_for(format!("KV sync ({}) to land on every rank", transport.name()));
                let started = Instant::now();
                if let Err(error) = transport.finish() {
                    JobAbort { rank }.fail(&error.context("finishing the KV sync"));
                }
                stats.busy_s += started.elapsed().as_secs_f64();
                Ok((stats, transport))
            })
            .context("cannot start the KV sync thread")?;
        Ok(Self { queue, thread })
    }

    /// Hands call `index` of the schedule to the communication thread; it starts once
    /// `ready` (this rank's block is in the cache).
    pub fn submit(&self, index: usize, ready: BlockReady) -> Result<()> {
        self.queue
            .send((index, ready))
            .map_err(|_| anyhow!("the KV sync thread has stopped"))
    }

    /// Waits until every submitted call is done (the caller times this: it is the sync time
    /// compute could not hide); gives the transport back for the next prefill.
    pub fn finish(self) -> Result<(SyncStats, Box<dyn KvTransport>)> {
        drop(self.queue);
        self.thread
            .join()
            .map_err(|_| anyhow!("the KV sync thread panicked"))?
    }
}
