//! Rank 0's trace file from setup to the end of the job, so that a job that fails still leaves
//! a complete file marked failed: on an error rank 0 sees (its own, or a peer's agreed at
//! setup), and on SIGTERM/SIGINT (how `mpirun` and Slurm end the other ranks when one aborts or
//! the job is cancelled). A rank 0 killed outright leaves only `FILE.h5.partial`, never a
//! half-written `FILE.h5`.

use std::sync::{Arc, Mutex};

use crate::trace::spans::SpanLog;
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

    /// The file, for the normal end of the job (None if there is none or it was already
    /// finished as failed).
    pub fn take(&self) -> Option<TraceFile> {
        self.trace.lock().ok()?.take()
    }

    /// Finishes the file, if still open, with status "failed", the error, and this rank's spans
    /// so far (`/ranks/0/events`). Best effort: the job is failing anyway.
    pub fn fail(&self, error: &str) {
        let Some(trace) = self.take() else { return };
        let _ = trace.attr_str("error", error);
        let _ = trace.dataset("ranks/0/events", &self.spans.snapshot());
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
                    guard.fail(&format!(
                        "terminated by signal {signal} (another rank failed, or the job was cancelled)"
                    ));
                    std::process::exit(128 + signal);
                }
            })?;
        Ok(())
    }
}
