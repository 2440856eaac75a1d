//! How a job fails: errors every rank sees together end the job cleanly with exit code 1;
//! an error one rank meets alone mid-run ends every rank at once with MPI_Abort.

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

/// An error returned from the job to `main`.
#[derive(Debug)]
pub enum JobError {
    /// This rank failed; `report` says whether it prints (one rank prints a shared error).
    Failed { error: anyhow::Error, report: bool },
    /// Another rank failed and printed why; this one exits quietly.
    PeerFailed,
    /// This rank alone failed mid-run, while the others may be waiting on it: the job is ended
    /// with MPI_Abort (never returned to `main`).
    Fatal(anyhow::Error),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Failed { error, .. } | JobError::Fatal(error) => write!(f, "{error:#}"),
            JobError::PeerFailed => write!(f, "another rank failed (its message names the cause)"),
        }
    }
}

/// Ends the whole job from any thread.
#[derive(Debug, Clone, Copy)]
pub struct JobAbort {
    pub rank: usize,
}

impl JobAbort {
    /// Prints the error as one line naming this rank, then aborts every rank with exit code 1.
    pub fn fail(&self, error: &anyhow::Error) -> ! {
        eprintln!("qwen3-mpi: error: rank {}: {error:#}", self.rank);
        self.abort(1)
    }

    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}

/// Every rank reports whether its part of a setup phase worked. If any failed, every rank
/// returns an error: the lowest failed rank prints its cause, the others stay quiet.
pub fn agree<T>(world: &SimpleCommunicator, result: anyhow::Result<T>) -> Result<T, JobError> {
    let mine = u8::from(result.is_err());
    let mut all = vec![0u8; world.size() as usize];
    world.all_gather_into(&mine, &mut all[..]);
    let lowest_failed = all.iter().position(|&f| f == 1);
    match (result, lowest_failed) {
        (Ok(value), None) => Ok(value),
        (Ok(_), Some(_)) => Err(JobError::PeerFailed),
        (Err(error), lowest) => Err(JobError::Failed {
            error,
            report: lowest == Some(world.rank() as usize),
        }),
    }
}
