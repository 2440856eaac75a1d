//! How a job fails: errors every rank sees together end the job cleanly with exit code 1;
//! an error one rank meets alone mid-run (an error, a panic, the watchdog) ends every rank at
//! once with MPI_Abort, after the failing rank's one-line message has reached rank 0's trace
//! file: rank 0 marks the file failed itself, any other rank sends its line to rank 0 first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use super::trace_guard::TraceGuard;
use crate::transport::SharedComm;

/// An error returned from the job to `main`.
#[derive(Debug)]
pub enum JobError {
    /// This rank failed; `report` says whether it prints (one rank prints a shared error).
    Failed { error: anyhow::Error, report: bool },
    /// Another rank failed and printed why (this line, naming it); this one exits quietly.
    PeerFailed(String),
    /// This rank alone failed mid-run, while the others may be waiting on it: the job is ended
    /// with MPI_Abort (never returned to `main`).
    Fatal(anyhow::Error),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Failed { error, .. } | JobError::Fatal(error) => write!(f, "{error:#}"),
            JobError::PeerFailed(line) => write!(f, "{line}"),
        }
    }
}

pub use crate::abort::{end_job, JobAbort};

/// Tag of a failing rank's message to rank 0 on the failure communicator, and of rank 0's
/// answer once the message is in the trace file.
const FAILURE_TAG: i32 = 0x51f;
const WRITTEN_TAG: i32 = 0x520;
/// How long a failing rank waits for rank 0 to have written its line before aborting anyway.
const WRITTEN_WAIT: Duration = Duration::from_secs(2);
/// Longest message sent (small enough for MPI's eager protocol: the send never waits for rank 0).
const MAX_MESSAGE: usize = 1000;

/// What this process does when it ends the job alone; registered once the job has its trace.
struct Ending {
    rank: usize,
    /// Rank 0: the trace file (empty elsewhere).
    trace: TraceGuard,
    /// Ranks > 0: where the failing rank's message goes.
    to_root: Option<SharedComm>,
}

impl Ending {
    /// Rank 0 marks its trace failed with `line`; another rank sends `line` to rank 0 and waits
    /// (up to 2 s) until rank 0 says the file is finished with it. [`crate::abort::end_job`]
    /// then ends every rank with MPI_Abort.
    fn leave_line(&self, line: &str) {
        if self.rank == 0 {
            self.trace.fail_from_any_thread(line);
        } else if let Some(comm) = &self.to_root {
            let mut bytes = line.as_bytes().to_vec();
            bytes.truncate(MAX_MESSAGE);
            let root = comm.0.process_at_rank(0);
            root.send_with_tag(&bytes[..], FAILURE_TAG);
            // (a matched message must be received: rsmpi panics on dropping one)
            wait_for(WRITTEN_WAIT, || {
                root.immediate_matched_probe_with_tag(WRITTEN_TAG)
                    .map(|matched| matched.matched_receive_vec::<u8>())
                    .is_some()
            });
        }
    }
}

/// Rank 0's listener for the other ranks' failure messages: they go into the trace's error.
/// Stops (and joins) when dropped.
pub struct FailureChannel {
    stop: Arc<AtomicBool>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl FailureChannel {
    /// Collective: every rank calls it once, when rank 0's trace exists. From then on a rank
    /// that ends the job alone ([`crate::abort::end_job`]) leaves its message in rank 0's trace.
    pub fn open(world: &SimpleCommunicator, rank: usize, trace: &TraceGuard) -> anyhow::Result<Self> {
        let comm = SharedComm(world.duplicate());
        let stop = Arc::new(AtomicBool::new(false));
        let mut listener = None;
        let to_root = if rank == 0 {
            let (stop, trace) = (stop.clone(), trace.clone());
            listener = Some(
                std::thread::Builder::new()
                    .name("failure-listener".into())
                    .spawn(move || listen(comm, trace, stop))?,
            );
            None
        } else {
            Some(comm)
        };
        let ending = Ending {
            rank,
            trace: trace.clone(),
            to_root,
        };
        crate::abort::set_ending(Box::new(move |_code, line| ending.leave_line(line)));
        Ok(Self { stop, listener })
    }
}

impl Drop for FailureChannel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
    }
}

/// Polls (every 10 ms: a blocking receive would spin a core) for a failing rank's line, finishes
/// the trace file with it, and tells that rank (which then aborts the job).
fn listen(comm: SharedComm, trace: TraceGuard, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(matched) = comm.0.any_process().immediate_matched_probe_with_tag(FAILURE_TAG) {
            let (bytes, status) = matched.matched_receive_vec::<u8>();
            trace.fail(&String::from_utf8_lossy(&bytes));
            comm.0
                .process_at_rank(status.source_rank())
                .send_with_tag(&[0u8][..], WRITTEN_TAG);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `limit` for `ready`, polling.
fn wait_for(limit: Duration, ready: impl Fn() -> bool) -> bool {
    let began = Instant::now();
    while !ready() {
        if began.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Makes an MPI error (a peer that died mid-call, say) end the job as [`crate::abort::end_job`] does, with
/// one line naming this rank, rather than inside MPI with no word to the trace.
pub fn route_mpi_errors(rank: usize) -> anyhow::Result<()> {
    static RANK: OnceLock<usize> = OnceLock::new();
    let _ = RANK.set(rank);
    crate::transport::mpi_raw::on_mpi_errors(|text| {
        let rank = RANK.get().copied().unwrap_or(0);
        let line = format!("rank {rank}: {text} (a peer process may have died)");
        crate::eprint_line!("qwen3-mpi: error: {line}");
        end_job(1, &line)
    })
}

/// Makes a SIGBUS in a mapped checkpoint file (truncated on disk while being loaded) end the
/// job as [`crate::abort::end_job`] does, after one line naming this rank and the file (see
/// `model::bus_error` for what the signal handler does and what it leaves to a thread).
pub fn route_bus_errors(rank: usize) -> anyhow::Result<()> {
    crate::model::bus_error::on_bus_error(rank, |line| end_job(1, line))
}

/// Makes a panic on any thread end the whole job: one line naming the rank (the backtrace only
/// with `RUST_BACKTRACE` set), the trace marked failed, MPI_Abort with exit code 1.
pub fn install_panic_hook(rank: usize) {
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = format!(
            "rank {rank}: internal error (panic): {}{at}",
            message.replace('\n', " ")
        );
        crate::eprint_line!("qwen3-mpi: error: {line}");
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
        end_job(1, &line)
    }));
}

/// Every rank reports whether its part of a setup phase worked. If any failed, every rank
/// returns an error: the lowest failed rank prints its cause, the others stay quiet, holding
/// its line (`rank R: …`, sent to every rank), which rank 0's trace records.
pub fn agree<T>(world: &SimpleCommunicator, result: anyhow::Result<T>) -> Result<T, JobError> {
    let me = world.rank() as usize;
    let mine = u8::from(result.is_err());
    let mut all = vec![0u8; world.size() as usize];
    world.all_gather_into(&mine, &mut all[..]);
    let Some(lowest) = all.iter().position(|&f| f == 1) else {
        // (an error here would have set this rank's flag)
        return result.map_err(|error| JobError::Failed { error, report: true });
    };
    let mut line = match &result {
        Err(error) if lowest == me => format!("rank {me}: {error:#}").into_bytes(),
        _ => Vec::new(),
    };
    line.truncate(MAX_MESSAGE);
    let root = world.process_at_rank(lowest as i32);
    let mut len = line.len() as u64;
    root.broadcast_into(&mut len);
    line.resize(len as usize, 0);
    root.broadcast_into(&mut line[..]);
    match result {
        Ok(_) => Err(JobError::PeerFailed(String::from_utf8_lossy(&line).into_owned())),
        Err(error) => Err(JobError::Failed {
            error,
            report: lowest == me,
        }),
    }
}
