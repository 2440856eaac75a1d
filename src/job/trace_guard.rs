//! Rank 0's trace file from setup to the end of the job, so that a job that fails still leaves
//! a complete file marked failed: on an error rank 0 sees (its own, or a peer's agreed at
//! setup), and on SIGTERM/SIGINT (how `mpirun` and Slurm end the other ranks when one aborts or
//! the job is cancelled). A rank 0 killed outright leaves only its `.partial`, never a
//! half-written `FILE.h5`.

use std::sync::{Arc, Mutex};

use crate::trace::spans::{SpanLog, SpanRow};
use crate::trace::TraceFile;

#[derive(Clone)]
pub struct TraceGuard {
    trace: Arc<Mutex<Option<TraceFile>>>,
    spans: SpanLog,
}

impl TraceGuard {
    pub fn new(trace: Option<TraceFile>, spans: SpanLog) -> Self {
        Self {
            trace: Arc::new(Mutex::new(trace)),
            spans,
        }
    }

    /// As [`Self::fail`], from a thread that may hold the file's lock already (a panic inside
    /// the trace code): waits up to 2 s for another thread that is finishing the file (so that
    /// an abort does not cut its write short), then leaves the file unfinished (`.partial`)
    /// rather than deadlocking.
    pub fn fail_from_any_thread(&self, error: &str) {
        let began = std::time::Instant::now();
        loop {
            match self.trace.try_lock() {
                Ok(mut slot) => {
                    if let Some(trace) = slot.take() {
                        self.finish_failed(trace, error);
                    }
                    return;
                }
                Err(std::sync::TryLockError::Poisoned(_)) => return,
                Err(std::sync::TryLockError::WouldBlock) if began.elapsed().as_secs() >= 2 => return,
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
            }
        }
    }

    /// The file, for the normal end of the job (None if there is none or it was already
    /// finished as failed).
    pub fn take(&self) -> Option<TraceFile> {
        self.trace.lock().ok()?.take()
    }

    /// Finishes the file, if still open, with status "failed", the error, and this rank's spans
    /// so far (`/ranks/0/events`). Best effort: the job is failing anyway.
    /// The file's lock is held until the file is finished, so that another thread ending the
    /// job waits for it (see [`Self::fail_from_any_thread`]).
    pub fn fail(&self, error: &str) {
        let Ok(mut slot) = self.trace.lock() else { return };
        if let Some(trace) = slot.take() {
            self.finish_failed(trace, error);
        }
    }

    fn finish_failed(&self, trace: TraceFile, error: &str) {
        let _ = trace.attr_str("error", error);
        let rows: Vec<SpanRow> = self.spans.snapshot().iter().map(|s| SpanRow::new(0, s)).collect();
        let _ = trace.dataset("ranks/0/events", &rows);
        let _ = trace.finish("failed");
    }

    /// Marks the file failed when this process is asked to stop (SIGTERM, SIGINT), then exits
    /// with 128 + the signal number.
    pub fn watch_signals(&self) -> anyhow::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let guard = self.clone();
        std::thread::Builder::new()
            .name("trace-on-signal".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    // at once: mpirun's SIGKILL can follow within milliseconds. A rank that ended
                    // the job on purpose has had its line written by the failure listener
                    // already (then the file is finished and this does nothing).
                    guard.fail(&format!(
                        "terminated by signal {signal} (another rank failed, or the job was cancelled)"
                    ));
                    std::process::exit(128 + signal);
                }
            })?;
        Ok(())
    }
}
