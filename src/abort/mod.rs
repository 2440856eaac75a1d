//! How any thread ends the whole job, and the watchdog that ends a job stuck in an MPI call.
//! The lowest layer of the job's failure handling: the sync and transport layers end the job
//! through it, and it knows nothing of them or of the job. What else the ending does (rank 0
//! finishing its trace, another rank sending its line to rank 0 first) is registered by the
//! job with [`set_ending`].

pub mod watchdog;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// Ends the whole job from any thread.
#[derive(Debug, Clone, Copy)]
pub struct JobAbort {
    pub rank: usize,
}

impl JobAbort {
    /// Prints the error as one line naming this rank, then ends every rank with exit code 1.
    pub fn fail(&self, error: &anyhow::Error) -> ! {
        let line = crate::cli::logging::one_line(&format!("rank {}: {error:#}", self.rank));
        crate::eprint_line!("qwen3-mpi: error: {line}");
        end_job(1, &line)
    }

    /// Ends every rank with `code`; `line` (already printed) is what the trace records.
    pub fn abort(&self, code: i32, line: &str) -> ! {
        end_job(code, line)
    }
}

/// What ending the job does before `MPI_Abort`, given the exit code and the line printed.
pub type Ending = Box<dyn Fn(i32, &str) + Send + Sync>;

static ENDING: OnceLock<Ending> = OnceLock::new();

/// Registers the job's [`Ending`] (once per process; a second one is refused: `false`).
pub fn set_ending(ending: Ending) -> bool {
    ENDING.set(ending).is_ok()
}

/// Ends the job from any thread: the registered [`Ending`] runs (once: a second failure on
/// the way out, such as an MPI error while sending the line, just aborts), then `MPI_Abort`
/// ends every rank with `code`.
pub fn end_job(code: i32, line: &str) -> ! {
    static ENDING_NOW: AtomicBool = AtomicBool::new(false);
    if !ENDING_NOW.swap(true, Ordering::SeqCst) {
        if let Some(ending) = ENDING.get() {
            ending(code, line);
        }
    }
    SimpleCommunicator::world().abort(code)
}
