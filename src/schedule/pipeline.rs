//! Steps of the pipelined, chunked prefill and the KV sync calls they need.
//!
//! At step `t`, rank `r` runs chunk `t − r` (if it exists) through its layer range. After local
//! layer index `j` of a step, one KV sync call carries, from every rank `q` that computed a
//! layer at index `j` this step, the K/V of layer `start_q + j` for its chunk. Every rank takes
//! part in every call (with nothing when it has nothing), in the same order; calls in which no
//! rank contributes are left out of the schedule for all ranks alike.

use super::chunks::Chunk;
use super::layer_split::LayerSplit;

/// K/V of one layer for the positions of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvBlock {
    pub layer: usize,
    pub chunk: Chunk,
}

/// One KV sync call: the blocks each rank contributes (index = rank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSyncCall {
    pub step: usize,
    pub local_layer: usize,
    pub blocks: Vec<Option<KvBlock>>,
}

impl KvSyncCall {
    /// Positions each rank contributes (0 for none).
    pub fn positions_per_rank(&self) -> Vec<usize> {
        self.blocks
            .iter()
            .map(|b| b.map_or(0, |b| b.chunk.len()))
            .collect()
    }
}

/// R·C / (C + R − 1): see [`Schedule::ideal_speedup`] (1 for no chunks).
pub fn ideal_speedup(ranks: usize, chunks: usize) -> f64 {
    match chunks {
        0 => 1.0,
        c => (ranks * c) as f64 / (c + ranks - 1) as f64,
    }
}

/// What one rank does, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOp {
    /// Rank 0: token embedding of the chunk.
    Embed {
        chunk: Chunk,
    },
    /// Wait for the chunk's hidden state from the previous rank.
    RecvHidden {
        chunk: Chunk,
        from: usize,
    },
    ComputeLayer {
        layer: usize,
        chunk: Chunk,
    },
    /// Hand KV sync call `call` (index into [`Schedule::kv_sync_calls`]) to the sync.
    KvSync {
        call: usize,
    },
    /// Pass the chunk's hidden state to the next rank.
    SendHidden {
        chunk: Chunk,
        to: usize,
    },
    /// Last rank, last chunk: logits of the last prompt position.
    Logits {
        chunk: Chunk,
    },
}

#[derive(Debug, Clone)]
pub struct Schedule {
    split: LayerSplit,
    chunks: Vec<Chunk>,
    calls: Vec<KvSyncCall>,
}

impl Schedule {
    pub fn new(split: LayerSplit, chunks: Vec<Chunk>) -> Self {
        let mut schedule = Self {
            split,
            chunks,
            calls: Vec::new(),
        };
        schedule.calls = schedule.build_calls();
        schedule
    }

    /// The same prefill with no KV sync (`--decode pipeline`: each rank keeps only its own
    /// layers' K/V): no calls, so no rank's program holds a `KvSync` op.
    pub fn without_kv_sync(mut self) -> Self {
        self.calls.clear();
        self
    }

    pub fn split(&self) -> &LayerSplit {
        &self.split
    }

    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    pub fn ranks(&self) -> usize {
        self.split.ranks()
    }

    /// Steps from the first chunk entering rank 0 to the last leaving the last rank.
    /// How many times faster than one rank this pipeline would prefill with equal stages and
    /// free communication: R stages over C chunks take C + R − 1 steps of one stage's time for
    /// one chunk, one rank R·C of them: R·C / (C + R − 1).
    pub fn ideal_speedup(&self) -> f64 {
        ideal_speedup(self.ranks(), self.chunks().len())
    }

    pub fn num_steps(&self) -> usize {
        if self.chunks.is_empty() {
            0
        } else {
            self.chunks.len() + self.ranks() - 1
        }
    }

    /// The chunk rank `rank` runs at `step`: chunk `step − rank`, if it exists.
    pub fn chunk_at(&self, rank: usize, step: usize) -> Option<Chunk> {
        step.checked_sub(rank).and_then(|c| self.chunks.get(c).copied())
    }

    /// Every KV sync call of the prefill, in the order every rank issues them.
    pub fn kv_sync_calls(&self) -> &[KvSyncCall] {
        &self.calls
    }

    fn build_calls(&self) -> Vec<KvSyncCall> {
        let mut calls = Vec::new();
        for step in 0..self.num_steps() {
            for local_layer in 0..self.split.max_layers_per_rank() {
                let blocks: Vec<Option<KvBlock>> = (0..self.ranks())
                    .map(|q| {
                        let range = self.split.range(q);
                        let chunk = self.chunk_at(q, step)?;
                        (local_layer < range.len()).then_some(KvBlock {
                            layer: range.start + local_layer,
                            chunk,
                        })
                    })
                    .collect();
                if blocks.iter().any(Option::is_some) {
                    calls.push(KvSyncCall {
                        step,
                        local_layer,
                        blocks,
                    });
                }
            }
        }
        calls
    }

    /// The ops of rank `rank`, in program order, each with its step.
    pub fn rank_program(&self, rank: usize) -> Vec<(usize, StageOp)> {
        let ranks = self.ranks();
        let range = self.split.range(rank);
        let last_chunk = self.chunks.len().checked_sub(1);
        let mut ops = Vec::new();
        let mut next_call = 0;
        for step in 0..self.num_steps() {
            let chunk = self.chunk_at(rank, step);
            if let Some(chunk) = chunk {
                ops.push((
                    step,
                    if rank == 0 {
                        StageOp::Embed { chunk }
                    } else {
                        StageOp::RecvHidden {
                            chunk,
                            from: rank - 1,
                        }
                    },
                ));
            }
            for local_layer in 0..self.split.max_layers_per_rank() {
                if let (Some(chunk), true) = (chunk, local_layer < range.len()) {
                    ops.push((
                        step,
                        StageOp::ComputeLayer {
                            layer: range.start + local_layer,
                            chunk,
                        },
                    ));
                }
                let call = self.calls.get(next_call);
                if call.is_some_and(|c| c.step == step && c.local_layer == local_layer) {
                    ops.push((step, StageOp::KvSync { call: next_call }));
                    next_call += 1;
                }
            }
            if let Some(chunk) = chunk {
                if rank + 1 < ranks {
                    ops.push((step, StageOp::SendHidden { chunk, to: rank + 1 }));
                } else if Some(chunk.index) == last_chunk {
                    ops.push((step, StageOp::Logits { chunk }));
                }
            }
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ideal_speedup_is_one_without_a_pipeline_and_tends_to_the_ranks_with_many_chunks() {
        assert_eq!(ideal_speedup(1, 7), 1.0);
        assert_eq!(ideal_speedup(4, 1), 1.0);
        assert_eq!(ideal_speedup(3, 6), 18.0 / 8.0);
        assert_eq!(ideal_speedup(4, 0), 1.0);
        assert!(ideal_speedup(4, 10_000) > 3.99);
    }
}
