//! MPI initialisation and the one place where communicators cross threads.
//!
//! The job runs the KV sync on a communication thread while the compute thread passes hidden
//! states and the watchdog may abort; all three call MPI, so the job needs
//! `MPI_THREAD_MULTIPLE`, and each thread uses its own duplicated communicator.

use anyhow::{bail, Context, Result};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

/// A communicator that may be used from another thread. Safe because MPI was initialised with
/// `MPI_THREAD_MULTIPLE` ([`MpiEnv::init`] refuses anything less) and each `SharedComm` is used
/// by one thread at a time for collectives (MPI's own rule for collectives on one communicator).
pub struct SharedComm(pub SimpleCommunicator);

// SAFETY: see the type's documentation; the handle is an opaque MPI object that MPI allows to
// be used from any thread at MPI_THREAD_MULTIPLE.
unsafe impl Send for SharedComm {}
// SAFETY: as above; `abort` from the watchdog is the only use shared with another thread.
unsafe impl Sync for SharedComm {}

pub struct MpiEnv {
    /// Finalises MPI when dropped.
    _universe: Universe,
    pub world: SimpleCommunicator,
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes of this node (picks the GPU).
    pub local_rank: usize,
    pub local_size: usize,
}

impl MpiEnv {
    pub fn init() -> Result<Self> {
        let (universe, granted) =
            mpi::initialize_with_threading(Threading::Multiple).context("MPI was already initialised")?;
        if granted < Threading::Multiple {
            bail!(
                "the MPI library granted thread level {granted:?}; qwen3-mpi needs MPI_THREAD_MULTIPLE \
                 (its KV sync runs on a communication thread)"
            );
        }
        let world = universe.world();
        let node = world.split_shared(world.rank());
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: node.rank() as usize,
            local_size: node.size() as usize,
            world,
            _universe: universe,
        })
    }

    /// A new communicator over the same ranks (collective: every rank calls it, in order).
    pub fn duplicate(&self) -> SharedComm {
        SharedComm(self.world.duplicate())
    }

    /// Ends every rank of the job with `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    pub fn library_version() -> String {
        mpi::environment::library_version()
            .unwrap_or_else(|_| "unknown".into())
            .trim()
            .to_owned()
    }

    pub fn hostname() -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into())
    }
}

/// The rank as the launcher tells it, before MPI is initialised (for deciding who prints
/// command-line errors).
pub fn launcher_rank() -> usize {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|var| std::env::var(var).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Every rank's `ok` (collective over `comm`): an error naming the first rank that failed, on
/// every rank alike.
pub fn all_ok(comm: &SimpleCommunicator, ok: bool, what: &str) -> Result<()> {
    use mpi::traits::CommunicatorCollectives as _;
    let mut all = vec![0u8; comm.size() as usize];
    comm.all_gather_into(&(ok as u8), &mut all[..]);
    match all.iter().position(|&flag| flag == 0) {
        Some(q) => bail!("rank {q} could not {what}"),
        None => Ok(()),
    }
}
