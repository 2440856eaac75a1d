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

/// One call's blocks located in a cache at device (or host) address `base`.
#[derive(Debug, Clone)]
pub struct InPlaceBlocks {
    pub base: u64,
    pub counts: Vec<i32>,
    pub displs: Vec<i32>,
    pub position_bytes: usize,
}

impl InPlaceBlocks {
    pub fn new(call: &KvSyncCall, capacity: usize, position_bytes: usize, base: u64) -> Result<Self> {
        let (counts, displs) = in_place_layout(call, capacity)?;
        Ok(Self {
            base,
            counts,
            displs,
            position_bytes,
        })
    }

    /// The call's blocks in `kv` on the GPU, once `stream` has seen compute's writes to the cache
    /// (binds the CUDA context to this thread first).
    #[cfg(feature = "cuda")]
    pub fn in_gpu_cache(
        call: &KvSyncCall,
        kv: &crate::model::KvCache,
        stream: &candle_core::cuda_backend::cudarc::driver::CudaStream,
    ) -> Result<Self> {
        stream.context().bind_to_thread()?;
        let base = crate::transport::device_memory::device_address(kv.storage(), stream)?;
        Self::new(call, kv.capacity(), kv.position_bytes(), base)
    }

    /// Address of rank `q`'s block.
    pub fn address(&self, q: usize) -> u64 {
        self.base + (self.displs[q] as usize * self.position_bytes) as u64
    }

    /// Bytes of rank `q`'s block.
    pub fn bytes(&self, q: usize) -> usize {
        self.counts[q] as usize * self.position_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{split_prompt, LayerSplit, Schedule};

    fn displs_of(schedule: &Schedule, capacity: usize) -> usize {
        in_place_layout(&schedule.kv_sync_calls()[0], capacity).unwrap().1[0] as usize
    }

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
        let blocks = InPlaceBlocks::new(&schedule.kv_sync_calls()[0], capacity, 10, 1000).unwrap();
        assert_eq!(
            blocks.address(0),
            1000 + (displs_of(&schedule, capacity) * 10) as u64
        );
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
