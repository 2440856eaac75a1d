//! Checks that ranks computed the same thing.

use anyhow::{bail, Result};
use mpi::datatype::PartitionMut;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::abort::watchdog::Watchdog;
use crate::transport::mpi_raw::packed_displacements;

/// FNV-1a over bytes: a cheap hash for cross-rank checks.
pub use crate::model::synthetic::fnv1a64 as fnv1a;

/// Every rank's hash of its generated ids; an error names the ranks that differ from rank 0 and,
/// for each, the first generated token where it departs from rank 0's.
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
    if differ.is_empty() {
        return Ok(());
    }
    // every rank holds every hash, so every rank takes this branch: one more gather, of the ids
    let ids = {
        let _wait = watchdog.waiting_for("the generated ids of every rank (they disagree)");
        all_generated(world, generated)
    };
    bail!(
        "ranks disagree on the generated tokens: ranks {differ:?} differ from rank 0: {}",
        departures(&ids, &differ)
    );
}

/// Every rank's generated ids (index = rank), on every rank: their counts, then the ids.
fn all_generated(world: &SimpleCommunicator, generated: &[u32]) -> Vec<Vec<u32>> {
    let count = generated.len() as i32;
    let mut counts = vec![0i32; world.size() as usize];
    world.all_gather_into(&count, &mut counts[..]);
    let displs = packed_displacements(&counts);
    let mut all = vec![0u32; counts.iter().map(|&c| c as usize).sum()];
    {
        let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
        world.all_gather_varcount_into(generated, &mut partition);
    }
    counts
        .iter()
        .zip(&displs)
        .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
        .collect()
}

/// For each rank in `differ`, where its ids (`ids[rank]`) first depart from rank 0's:
/// "rank 1 from generated token 3 (rank 0: 11, rank 1: 10)", tokens counted from 0.
fn departures(ids: &[Vec<u32>], differ: &[usize]) -> String {
    let first = &ids[0];
    let token = |v: &[u32], i: usize| v.get(i).map_or("none".to_string(), |t| t.to_string());
    differ
        .iter()
        .map(|&r| {
            let theirs = &ids[r];
            let at = first
                .iter()
                .zip(theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(first.len().min(theirs.len()));
            format!(
                "rank {r} from generated token {at} (rank 0: {}, rank {r}: {})",
                token(first, at),
                token(theirs, at)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::departures;

    #[test]
    fn departures_name_the_first_differing_token_of_each_rank() {
        let ids = vec![
            vec![5, 6, 7, 8],
            vec![5, 6, 9, 8],
            vec![5, 6, 7, 8],
            vec![4, 6, 7, 8],
        ];
        assert_eq!(
            departures(&ids, &[1, 3]),
            "rank 1 from generated token 2 (rank 0: 7, rank 1: 9); \
             rank 3 from generated token 0 (rank 0: 5, rank 3: 4)"
        );
    }

    #[test]
    fn a_shorter_list_departs_where_it_ends() {
        let ids = vec![vec![5, 6, 7], vec![5, 6]];
        assert_eq!(
            departures(&ids, &[1]),
            "rank 1 from generated token 2 (rank 0: 7, rank 1: none)"
        );
    }
}
