//! How long the prompt's chunks are: the one decision, made from the cost model
//! (`chunk_cost`, `prefill_time`) unless `--chunk-size` gives it, with a line saying why.
//!
//! More chunks fill and drain the pipeline faster (the ideal R·C/(C+R−1) rises with C), but
//! each chunk streams every weight again and shorter ones run the matrix products on fewer
//! rows, below the GPU's full speed. The choice tries every length in a range and keeps the
//! one of least predicted prefill time (the longest of those within 1 % of it: the model is
//! least certain on short chunks, and fewer chunks mean fewer KV sync calls).

use super::chunk_cost::JobCost;
use super::chunks::{split_prompt, split_prompt_balanced, Chunk, Chunking};
use super::layer_split::LayerSplit;
use super::prefill_time::{predict_prefill, PrefillPrediction};
use crate::units::{count, ms};

/// The longest chunk: on one rank the prompt is one chunk up to this many tokens (activations
/// of about 1 GB for Qwen3-8B at this length); on several, no chunk is longer.
pub const MAX_CHUNK: usize = 16384;

/// The shortest chunk tried, where the prompt is long enough for two chunks per stage of it.
pub const MIN_CHUNK: usize = 64;

/// Lengths tried are multiples of this (where the range is wider than it).
const STEP: usize = 64;

/// Within this fraction of the fastest predicted, the longest chunk wins.
const TIE: f64 = 0.01;

/// The job's chunks, their length, what the model predicts, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPlan {
    /// `--chunk-size` or the chosen length (balanced chunking: the average's ceiling).
    pub size: usize,
    pub chunks: Vec<Chunk>,
    pub predicted: PrefillPrediction,
    /// One line for rank 0 and the trace.
    pub reason: String,
}

/// The chunks of a `prompt_len`-token prompt through `split`: of `given` tokens, or of the
/// length the cost model finds fastest, never fewer than two per stage where the prompt has
/// two tokens per stage (so that every such prompt pipelines).
pub fn plan_chunks(
    prompt_len: usize,
    split: &LayerSplit,
    cost: &JobCost,
    chunking: Chunking,
    given: Option<usize>,
) -> ChunkPlan {
    let evaluate = |size: usize| {
        let chunks = cut(prompt_len, size, chunking, cost);
        let predicted = predict_prefill(&chunks, split, cost);
        (size, chunks, predicted)
    };
    let ranks = split.ranks();
    let range = candidate_range(prompt_len, ranks);
    let best = || {
        let mut tried: Vec<_> = candidates(range.clone()).map(evaluate).collect();
        let fastest = tried
            .iter()
            .map(|(_, _, p)| p.ttft_s)
            .fold(f64::INFINITY, f64::min);
        let pick = tried
            .iter()
            .rposition(|(_, _, p)| p.ttft_s <= fastest * (1.0 + TIE))
            .unwrap_or(0);
        tried.swap_remove(pick)
    };
    let model = format!(
        "cost model for the {}, hidden states over {}",
        cost.rates.name, cost.hop.name
    );
    let why = |chunks: &[Chunk], predicted: &PrefillPrediction| match ranks {
        1 => format!("one rank, no pipeline: the prompt whole, up to {MAX_CHUNK} tokens a chunk"),
        _ if *range.end() < MIN_CHUNK => {
            format!("the longest that give each of the {ranks} stages two chunks (a short prompt)")
        }
        _ => format!(
            "the fastest of {}..{} tokens by the {model}, overlap {:.2}x of the ideal {:.2}x",
            range.start(),
            range.end(),
            predicted.overlap(),
            super::pipeline::ideal_speedup(ranks, chunks.len())
        ),
    };
    let (size, chunks, predicted, reason) = match given {
        Some(size) => {
            let (size, chunks, predicted) = evaluate(size);
            let (best_size, best_chunks, best) = best();
            let reason = format!(
                "--chunk-size {size}: {}, predicted prefill {} by the {model} (without it: {best_size} tokens a chunk, predicted {}, {})",
                count(chunks.len(), "chunk"),
                ms(predicted.ttft_s),
                ms(best.ttft_s),
                why(&best_chunks, &best)
            );
            (size, chunks, predicted, reason)
        }
        None => {
            let (size, chunks, predicted) = best();
            let reason = format!(
                "{} of {size} tokens, predicted prefill {} ({}; --chunk-size sets it)",
                count(chunks.len(), "chunk"),
                ms(predicted.ttft_s),
                why(&chunks, &predicted)
            );
            (size, chunks, predicted, reason)
        }
    };
    ChunkPlan {
        size,
        chunks,
        predicted,
        reason,
    }
}

/// Chunks of `size` tokens (balanced: as many, of equal estimated cost).
fn cut(prompt_len: usize, size: usize, chunking: Chunking, cost: &JobCost) -> Vec<Chunk> {
    match chunking {
        Chunking::Uniform => split_prompt(prompt_len, size),
        Chunking::Balanced => {
            split_prompt_balanced(prompt_len, prompt_len.div_ceil(size), cost.attention_scale())
        }
    }
}

/// The lengths the choice may take: on one rank the prompt (up to [`MAX_CHUNK`]); on several,
/// from [`MIN_CHUNK`] to the longest that gives every stage two chunks (both lower where the
/// prompt is short).
fn candidate_range(prompt_len: usize, ranks: usize) -> std::ops::RangeInclusive<usize> {
    let prompt_len = prompt_len.max(1);
    if ranks <= 1 {
        let whole = prompt_len.min(MAX_CHUNK);
        return whole..=whole;
    }
    let longest = (prompt_len / (2 * ranks)).clamp(1, MAX_CHUNK);
    longest.min(MIN_CHUNK)..=longest
}

/// Every length of a narrow range; multiples of [`STEP`] and its ends in a wide one.
fn candidates(range: std::ops::RangeInclusive<usize>) -> impl Iterator<Item = usize> {
    let (lo, hi) = (*range.start(), *range.end());
    let step = if hi - lo <= 2 * STEP { 1 } else { STEP };
    let inner = (lo.div_ceil(step) * step..hi)
        .step_by(step)
        .filter(move |&s| s > lo);
    std::iter::once(lo).chain(inner).chain((hi > lo).then_some(hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::shapes::{qwen3_30b_a3b, qwen3_8b};
    use crate::model::Qwen3Config;
    use crate::schedule::chunk_cost::{DeviceRates, HopCost};

    fn plan(cfg: &Qwen3Config, rates: DeviceRates, hop: HopCost, len: usize, ranks: usize) -> ChunkPlan {
        let cost = JobCost::new(cfg, rates, hop, 2);
        let split = LayerSplit::even(cfg.num_hidden_layers, ranks).unwrap();
        plan_chunks(len, &split, &cost, Chunking::Uniform, None)
    }

    fn tiny() -> Qwen3Config {
        Qwen3Config {
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 12,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            vocab_size: 151936,
            ..qwen3_8b()
        }
    }

    #[test]
    fn candidates_cover_the_range_ends_and_steps() {
        let all: Vec<usize> = candidates(64..=1000).collect();
        assert_eq!(all.first(), Some(&64));
        assert_eq!(all.last(), Some(&1000));
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(all[1..all.len() - 1].iter().all(|s| s % STEP == 0));
        assert_eq!(candidates(3..=9).collect::<Vec<_>>(), (3..=9).collect::<Vec<_>>());
        assert_eq!(candidates(5..=5).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn one_rank_takes_the_prompt_whole_up_to_the_longest_chunk() {
        let p = plan(&qwen3_8b(), DeviceRates::GPU, HopCost::GPU_IPC, 16384, 1);
        assert_eq!((p.size, p.chunks.len()), (16384, 1));
        let p = plan(&qwen3_8b(), DeviceRates::GPU, HopCost::GPU_IPC, 40000, 1);
        assert_eq!((p.size, p.chunks.len()), (MAX_CHUNK, 3));
    }

    #[test]
    fn every_stage_gets_two_chunks_where_the_prompt_allows() {
        for cfg in [tiny(), qwen3_8b()] {
            for (rates, hop) in [
                (DeviceRates::CPU, HopCost::CPU),
                (DeviceRates::GPU, HopCost::GPU_HOST),
            ] {
                for ranks in 2..=8 {
                    for len in (2 * ranks..3000).step_by(7) {
                        let p = plan(&cfg, rates, hop, len, ranks);
                        assert!(
                            p.chunks.len() >= 2 * ranks,
                            "{len} tokens, {ranks} ranks: {}",
                            p.reason
                        );
                        assert!(
                            p.size >= MIN_CHUNK || len / (2 * ranks) < MIN_CHUNK,
                            "{len} tokens, {ranks} ranks: {}",
                            p.reason
                        );
                        assert_eq!(p.chunks.last().map(|c| c.end), Some(len));
                    }
                }
            }
        }
    }

    /// The choice is the fastest of the lengths tried (multiples of 64 and the range's ends):
    /// none predicts more than 1 % less.
    #[test]
    fn the_choice_is_the_fastest_length_tried_within_the_tie() {
        let cfg = qwen3_8b();
        for (ranks, len) in [(2, 16384), (4, 16384), (8, 32768), (3, 5000)] {
            let cost = JobCost::new(&cfg, DeviceRates::GPU, HopCost::GPU_IPC, 2);
            let split = LayerSplit::even(36, ranks).unwrap();
            let chosen = plan_chunks(len, &split, &cost, Chunking::Uniform, None);
            let longest = len / (2 * ranks);
            let tried: Vec<(usize, f64)> = (64..=longest)
                .step_by(64)
                .chain([longest])
                .map(|size| {
                    (
                        size,
                        predict_prefill(&split_prompt(len, size), &split, &cost).ttft_s,
                    )
                })
                .collect();
            let fastest = tried.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
            assert!(
                chosen.predicted.ttft_s <= fastest * (1.0 + TIE),
                "{}",
                chosen.reason
            );
            // and no longer length is within the tie
            for (size, ttft) in tried.into_iter().filter(|t| t.0 > chosen.size) {
                assert!(
                    ttft > fastest * (1.0 + TIE),
                    "{ranks} ranks, {len}: {size} predicts {ttft}, chose {}",
                    chosen.reason
                );
            }
        }
    }

    /// On the GPU rates the model prefers chunks shorter than four a stage on 2 and 4 GPUs at
    /// 16K (what the default was before it), and longer on the CPU, where overhead dominates.
    #[test]
    fn gpus_get_shorter_chunks_than_four_a_stage_and_cpus_longer() {
        let gpu2 = plan(&qwen3_8b(), DeviceRates::GPU, HopCost::GPU_IPC, 16384, 2);
        let gpu4 = plan(&qwen3_8b(), DeviceRates::GPU, HopCost::GPU_IPC, 16384, 4);
        assert!(
            gpu2.size < 2048 && gpu4.size < 1024,
            "{} / {}",
            gpu2.reason,
            gpu4.reason
        );
        assert!(
            gpu2.predicted.ttft_s
                < predict_prefill(
                    &split_prompt(16384, 2048),
                    &LayerSplit::even(36, 2).unwrap(),
                    &JobCost::new(&qwen3_8b(), DeviceRates::GPU, HopCost::GPU_IPC, 2)
                )
                .ttft_s
        );
        let cpu = plan(&tiny(), DeviceRates::CPU, HopCost::CPU, 116, 3);
        assert_eq!(cpu.size, 116 / 6, "{}", cpu.reason);
    }

    #[test]
    fn a_given_size_is_kept_and_the_models_choice_named() {
        let cfg = qwen3_30b_a3b();
        let cost = JobCost::new(&cfg, DeviceRates::GPU, HopCost::GPU_IPC, 2);
        let split = LayerSplit::even(48, 2).unwrap();
        let p = plan_chunks(4096, &split, &cost, Chunking::Balanced, Some(1000));
        assert_eq!((p.size, p.chunks.len()), (1000, 5));
        assert!(
            p.reason
                .starts_with("--chunk-size 1000: 5 chunks, predicted prefill "),
            "{}",
            p.reason
        );
        assert!(p.reason.contains("cost model for the GPU"), "{}", p.reason);
    }
}
