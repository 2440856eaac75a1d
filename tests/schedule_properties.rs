//! The prefill schedule over many shapes, without MPI: every (layer, chunk) computed once in
//! causal order, every KV block synced once, and every rank issuing the same sync calls; the
//! pipelined decode step: every layer once in order, every send met by its receive, every rank
//! issuing the same collectives.

use std::collections::{HashMap, HashSet};

use qwen3_mpi::schedule::{
    decode_step_program, ring_steps, split_prompt, DecodeMode, DecodeOp, LayerSplit, Schedule, StageOp,
};

/// Even splits and a few uneven ones for every (ranks, layers) up to 8 ranks and 12 layers.
fn splits() -> Vec<LayerSplit> {
    let mut out = Vec::new();
    for layers in 1..=12 {
        for ranks in 1..=layers.min(8) {
            out.push(LayerSplit::even(layers, ranks).unwrap());
            if ranks > 1 && layers > ranks {
                // all extra layers on the last rank, and on the first
                let mut counts = vec![1; ranks];
                counts[ranks - 1] += layers - ranks;
                out.push(LayerSplit::from_counts(&counts, layers, ranks).unwrap());
                counts.reverse();
                out.push(LayerSplit::from_counts(&counts, layers, ranks).unwrap());
            }
        }
    }
    out
}

/// (prompt length, chunk size): one token, fewer chunks than ranks, more, uneven last chunk.
const PROMPTS: [(usize, usize); 7] = [(1, 1), (1, 64), (2, 1), (5, 3), (17, 7), (64, 64), (40, 3)];

fn for_each_schedule(mut check: impl FnMut(&Schedule)) {
    for split in splits() {
        for (len, size) in PROMPTS {
            check(&Schedule::new(split.clone(), split_prompt(len, size)));
        }
    }
}

#[test]
fn every_layer_and_chunk_is_computed_exactly_once_in_causal_order() {
    for_each_schedule(|s| {
        let mut done: HashMap<(usize, usize), (usize, usize)> = HashMap::new(); // (layer, chunk) → (rank, step)
        for rank in 0..s.ranks() {
            let range = s.split().range(rank);
            let mut have_input: HashSet<usize> = HashSet::new();
            for (step, op) in s.rank_program(rank) {
                match op {
                    StageOp::Embed { chunk } | StageOp::RecvHidden { chunk, .. } => {
                        have_input.insert(chunk.index);
                    }
                    StageOp::ComputeLayer { layer, chunk } => {
                        assert!(
                            range.contains(&layer),
                            "rank {rank} computes layer {layer} outside {range:?}"
                        );
                        let c = chunk.index;
                        assert!(
                            have_input.contains(&c),
                            "rank {rank}: layer {layer} chunk {c} before its input"
                        );
                        if layer > range.start {
                            assert!(
                                done.contains_key(&(layer - 1, c)),
                                "layer {layer} chunk {c} before layer {}",
                                layer - 1
                            );
                        } else if layer > 0 {
                            let (_, prev_step) = done[&(layer - 1, c)];
                            assert!(
                                prev_step < step,
                                "chunk {c} reaches rank {rank} in the step it left rank {}",
                                rank - 1
                            );
                        }
                        if c > 0 {
                            assert!(
                                done.contains_key(&(layer, c - 1)),
                                "layer {layer}: chunk {c} before chunk {}",
                                c - 1
                            );
                        }
                        assert!(
                            done.insert((layer, c), (rank, step)).is_none(),
                            "layer {layer} chunk {c} computed twice"
                        );
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(done.len(), s.split().num_layers() * s.chunks().len());
    });
}

#[test]
fn every_kv_block_is_synced_once_by_its_owner_after_it_is_computed() {
    for_each_schedule(|s| {
        let mut seen = HashSet::new();
        for call in s.kv_sync_calls() {
            for (rank, block) in call.blocks.iter().enumerate() {
                let Some(block) = block else { continue };
                assert!(
                    s.split().range(rank).contains(&block.layer),
                    "rank {rank} sends layer {} it does not own",
                    block.layer
                );
                assert!(
                    seen.insert((block.layer, block.chunk.index)),
                    "block {block:?} synced twice"
                );
                // In the owner's program, the compute comes before the sync op.
                let program = s.rank_program(rank);
                let compute = program.iter().position(|(_, op)| {
                    *op == StageOp::ComputeLayer {
                        layer: block.layer,
                        chunk: block.chunk,
                    }
                });
                let sync = program.iter().position(
                    |(_, op)| matches!(op, StageOp::KvSync { call: c } if s.kv_sync_calls()[*c] == *call),
                );
                assert!(compute.unwrap() < sync.unwrap());
            }
        }
        assert_eq!(seen.len(), s.split().num_layers() * s.chunks().len());
    });
}

#[test]
fn every_rank_issues_the_same_sync_calls_in_the_same_order() {
    for_each_schedule(|s| {
        let all: Vec<usize> = (0..s.kv_sync_calls().len()).collect();
        for rank in 0..s.ranks() {
            let calls: Vec<usize> = s
                .rank_program(rank)
                .iter()
                .filter_map(|(_, op)| match op {
                    StageOp::KvSync { call } => Some(*call),
                    _ => None,
                })
                .collect();
            assert_eq!(
                calls,
                all,
                "rank {rank} of {} issues a different sync sequence",
                s.ranks()
            );
        }
        // And every call has the same sizes for everybody: sizes come from the call itself.
        for call in s.kv_sync_calls() {
            assert_eq!(call.blocks.len(), s.ranks());
            assert!(
                call.positions_per_rank().iter().any(|&p| p > 0),
                "an empty call was scheduled"
            );
        }
    });
}

#[test]
fn hidden_sends_and_receives_pair_up_in_order() {
    for_each_schedule(|s| {
        for rank in 0..s.ranks().saturating_sub(1) {
            let sends: Vec<(usize, usize)> = s
                .rank_program(rank)
                .iter()
                .filter_map(|(step, op)| match op {
                    StageOp::SendHidden { chunk, to } => Some((*step, {
                        assert_eq!(*to, rank + 1);
                        chunk.index
                    })),
                    _ => None,
                })
                .collect();
            let recvs: Vec<(usize, usize)> = s
                .rank_program(rank + 1)
                .iter()
                .filter_map(|(step, op)| match op {
                    StageOp::RecvHidden { chunk, from } => Some((*step, {
                        assert_eq!(*from, rank);
                        chunk.index
                    })),
                    _ => None,
                })
                .collect();
            assert_eq!(sends.len(), s.chunks().len());
            assert_eq!(
                sends.iter().map(|x| x.1).collect::<Vec<_>>(),
                recvs.iter().map(|x| x.1).collect::<Vec<_>>()
            );
            assert!(
                sends.iter().zip(&recvs).all(|(a, b)| a.0 < b.0),
                "a chunk is received in the step it is sent"
            );
        }
        let last = s.ranks() - 1;
        let logits: Vec<_> = s
            .rank_program(last)
            .into_iter()
            .filter(|(_, op)| matches!(op, StageOp::Logits { .. }))
            .collect();
        assert_eq!(logits.len(), 1, "exactly one logits op, on the last rank");
    });
}

#[test]
fn ring_steps_pair_up_and_deliver_every_block() {
    for ranks in 1..=8 {
        let mut received: Vec<HashSet<usize>> = (0..ranks).map(|r| HashSet::from([r])).collect();
        for s in 0..ranks.saturating_sub(1) {
            for (rank, have) in received.iter().enumerate() {
                let mine = ring_steps(ranks, rank)[s];
                let next = ring_steps(ranks, mine.send_to)[s];
                assert_eq!(next.recv_from, rank);
                assert_eq!(next.recv_origin, mine.send_origin, "ranks {ranks} step {s}");
                assert!(
                    have.contains(&mine.send_origin),
                    "rank {rank} forwards a block it does not have yet"
                );
            }
            for (rank, have) in received.iter_mut().enumerate() {
                have.insert(ring_steps(ranks, rank)[s].recv_origin);
            }
        }
        assert!(received.iter().all(|r| r.len() == ranks));
    }
}

#[test]
fn without_kv_sync_every_rank_runs_the_same_program_minus_its_sync_ops() {
    for_each_schedule(|s| {
        let bare = s.clone().without_kv_sync();
        assert!(bare.kv_sync_calls().is_empty());
        for rank in 0..s.ranks() {
            let synced: Vec<_> = s
                .rank_program(rank)
                .into_iter()
                .filter(|(_, op)| !matches!(op, StageOp::KvSync { .. }))
                .collect();
            assert_eq!(bare.rank_program(rank), synced, "rank {rank}");
        }
    });
}

#[test]
fn a_pipelined_decode_step_runs_every_layer_once_in_order_and_every_rank_issues_the_same_collectives() {
    for split in splits() {
        let ranks = split.ranks();
        let last = ranks - 1;
        let programs: Vec<Vec<DecodeOp>> = (0..ranks)
            .map(|r| decode_step_program(&split, r, DecodeMode::Pipeline))
            .collect();
        // the layers, rank after rank, cover the model once in order
        let layers: Vec<usize> = programs
            .iter()
            .flat_map(|ops| {
                ops.iter().flat_map(|op| match op {
                    DecodeOp::ComputeLayers { layers } => layers.clone().collect(),
                    _ => Vec::new(),
                })
            })
            .collect();
        assert_eq!(layers, (0..split.num_layers()).collect::<Vec<_>>(), "{split:?}");
        for (rank, ops) in programs.iter().enumerate() {
            // its input first: the embedding on rank 0, else the previous rank's hidden state
            match rank {
                0 => assert_eq!(ops[0], DecodeOp::Embed),
                r => assert_eq!(ops[0], DecodeOp::RecvHidden { from: r - 1 }),
            }
            // one collective, the same on every rank, last
            let collectives: Vec<&DecodeOp> = ops
                .iter()
                .filter(|op| matches!(op, DecodeOp::ShareToken { .. }))
                .collect();
            assert_eq!(collectives, [&DecodeOp::ShareToken { root: last }], "rank {rank}");
            assert_eq!(ops.last(), Some(&DecodeOp::ShareToken { root: last }));
            // only the last rank samples; every other rank sends to the next, which receives
            let samples = ops.iter().filter(|op| **op == DecodeOp::Sample).count();
            assert_eq!(samples, usize::from(rank == last), "rank {rank}");
            for op in ops {
                if let DecodeOp::SendHidden { to } = op {
                    assert_eq!(*to, rank + 1);
                    assert!(programs[*to].contains(&DecodeOp::RecvHidden { from: rank }));
                }
                if let DecodeOp::RecvHidden { from } = op {
                    assert!(programs[*from].contains(&DecodeOp::SendHidden { to: rank }));
                }
            }
        }
        // redundant decode: every rank alone over every layer, no communication
        for rank in 0..ranks {
            let ops = decode_step_program(&split, rank, DecodeMode::Redundant);
            assert!(ops.iter().all(DecodeOp::is_compute), "{ops:?}");
        }
    }
}
