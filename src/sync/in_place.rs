//! Where each rank's block of a KV sync call sits inside the whole cache, for transports that
//! move blocks in place: in units of one position (K and V of one layer at one position), rank
//! `q`'s block starts at position index `layer_q × capacity + start_q`.

use anyhow::Result;

use crate::schedule::KvSyncCall;

/// (counts, displacements) per rank, in positions; ranks without a block have count 0.
pub fn in_place_layout(call: &KvSyncCall, capacity: usize) -> Result<(Vec<i32>, Vec<i32>)> {
    let mut counts = Vec::with_capacity(call.blocks.len());
    let mut displs = Vec::with_capacity(call.blocks.len());
    for block in &call.blocks {
        match block {
            Some(b) => {
                counts.push(i32::try_from(b.chunk.len())?);
                displs.push(i32::try_from(b.layer * capacity + b.chunk.start)?);
            }
            None => {
                counts.push(0);
                displs.push(0);
            }
        }
    }
    Ok((counts, displs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{split_prompt, LayerSplit, Schedule};

    #[test]
    fn blocks_land_at_their_layer_and_positions_without_overlap() {
        let capacity = 50;
        let schedule = Schedule::new(
            LayerSplit::from_counts(&[2, 3, 1], 6, 3).unwrap(),
            split_prompt(37, 5),
        );
        let mut covered = vec![false; 6 * capacity];
        for call in schedule.kv_sync_calls() {
            let (counts, displs) = in_place_layout(call, capacity).unwrap();
            for (q, block) in call.blocks.iter().enumerate() {
                let Some(block) = block else {
                    assert_eq!(counts[q], 0);
                    continue;
                };
                assert_eq!(displs[q] as usize, block.layer * capacity + block.chunk.start);
                for p in displs[q]..displs[q] + counts[q] {
                    assert!(!covered[p as usize], "position index {p} written twice");
                    covered[p as usize] = true;
                }
            }
        }
        // every layer's prompt positions, nothing beyond
        for layer in 0..6 {
            for pos in 0..capacity {
                assert_eq!(
                    covered[layer * capacity + pos],
                    pos < 37,
                    "layer {layer} position {pos}"
                );
            }
        }
    }
}
