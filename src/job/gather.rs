//! Every rank's spans to rank 0 at the end of a job (two small collectives).

use anyhow::Result;
use mpi::datatype::PartitionMut;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::abort::watchdog::Watchdog;
use crate::trace::spans::{span_from_row, span_to_row, Span, SPAN_FIELDS};
use crate::transport::mpi_raw::packed_displacements;

/// On rank 0: the spans of every rank (index = rank). Elsewhere: empty.
pub fn spans_to_root(
    world: &SimpleCommunicator,
    mine: &[Span],
    watchdog: &Watchdog,
) -> Result<Vec<Vec<Span>>> {
    let _wait = watchdog.waiting_for("the span gather to rank 0");
    let root = world.process_at_rank(0);
    let rows: Vec<i64> = mine.iter().flat_map(span_to_row).collect();
    let count = rows.len() as i32;
    if world.rank() != 0 {
        root.gather_into(&count);
        root.gather_varcount_into(&rows[..]);
        return Ok(Vec::new());
    }
    let mut counts = vec![0i32; world.size() as usize];
    root.gather_into_root(&count, &mut counts[..]);
    let displs: Vec<i32> = packed_displacements(&counts);
    let mut all = vec![0i64; counts.iter().map(|&c| c as usize).sum()];
    {
        let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
        root.gather_varcount_into_root(&rows[..], &mut partition);
    }
    Ok(counts
        .iter()
        .zip(&displs)
        .map(|(&c, &d)| {
            all[d as usize..(d + c) as usize]
                .chunks(SPAN_FIELDS)
                .filter_map(span_from_row)
                .collect()
        })
        .collect())
}
