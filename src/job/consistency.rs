//! Checks that ranks computed the same thing.

use anyhow::{bail, Result};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::abort::watchdog::Watchdog;

/// FNV-1a over bytes: a cheap hash for cross-rank checks.
pub use crate::model::synthetic::fnv1a64 as fnv1a;

/// Every rank's hash of its generated ids; an error names the ranks that differ from rank 0.
pub fn check_ranks_agree(world: &SimpleCommunicator, generated: &[u32], watchdog: &Watchdog) -> Result<()> {
    let mine = fnv1a(bytemuck::cast_slice(generated));
    let mut all = vec![0u64; world.size() as usize];
    {
        let _wait = watchdog.waiting_for("the generated-token check");
        world.all_gather_into(&mine, &mut all[..]);
    }
    let differ: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, &h)| h != all[0])
        .map(|(r, _)| r)
        .collect();
    if !differ.is_empty() {
        bail!("ranks disagree on the generated tokens: ranks {differ:?} differ from rank 0");
    }
    Ok(())
}
