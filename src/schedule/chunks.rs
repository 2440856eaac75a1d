//! Cutting a prompt into chunks of positions.

use std::ops::Range;

/// One chunk of the prompt: positions `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    pub index: usize,
    pub start: usize,
    pub end: usize,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn positions(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// Chunks of `chunk_size` positions covering `[0, prompt_len)`; the last may be shorter.
pub fn split_prompt(prompt_len: usize, chunk_size: usize) -> Vec<Chunk> {
    assert!(chunk_size > 0, "chunk size must be positive");
    (0..prompt_len.div_ceil(chunk_size))
        .map(|index| Chunk {
            index,
            start: index * chunk_size,
            end: ((index + 1) * chunk_size).min(prompt_len),
        })
        .collect()
}

/// Chunks of the given lengths, in order from position 0 (e.g. a trace's `chunk_lengths`).
pub fn chunks_of_lengths(lengths: &[u64]) -> Vec<Chunk> {
    let mut start = 0;
    lengths
        .iter()
        .enumerate()
        .map(|(index, &len)| {
            let chunk = Chunk {
                index,
                start,
                end: start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX)),
            };
            start = chunk.end;
            chunk
        })
        .collect()
}

/// `--chunking`: how the prompt is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Chunking {
    /// Every chunk `--chunk-size` tokens (the last may be shorter).
    Uniform,
    /// As many chunks, of equal estimated cost: later ones, which attend over more keys, are
    /// shorter. Not the default: on 4 x H200 (Qwen3-8B, 16K and 32K tokens) it did not shorten
    /// TTFT.
    // (split_prompt_balanced; measured 0.275 vs 0.270 s and 0.757 vs 0.754 s, results/bench/NOTES.md)
    Balanced,
}

impl Chunking {
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Balanced => "balanced",
        }
    }
}

/// `count` chunks covering `[0, prompt_len)` of equal estimated cost, when a token at position
/// `p` costs `1 + p / attention_scale`: its matrix products, plus attention over the `p` keys
/// before it (`attention_scale` is the position at which attention costs as much as the rest).
/// Later chunks see more keys, so they are shorter; every stage of the pipeline then spends
/// about the same time on each chunk, and the drain ((ranks − 1) × the costliest chunk) shrinks.
/// The cumulative cost F(x) = x + x² / (2·scale) is cut into equal parts: x_k = F⁻¹(k/count · F(L)).
/// Boundaries fall on multiples of [`CHUNK_GRANULE`] positions where chunks are long enough:
/// matrix products on row counts like 1475 ran 5 % slower than on multiples of 128 (4 x H200,
/// Qwen3-8B, results/bench/NOTES.md).
pub fn split_prompt_balanced(prompt_len: usize, count: usize, attention_scale: f64) -> Vec<Chunk> {
    let count = count.clamp(1, prompt_len.max(1));
    let scale = attention_scale.max(1.0);
    let total = prompt_len as f64 + (prompt_len as f64).powi(2) / (2.0 * scale);
    let granule = balanced_granule(prompt_len, count);
    // F⁻¹(y) = scale · (√(1 + 2y/scale) − 1), to the nearest multiple of the granule
    let boundary = |k: usize| {
        let y = total * k as f64 / count as f64;
        let x = scale * ((1.0 + 2.0 * y / scale).sqrt() - 1.0);
        (x / granule as f64).round() as usize * granule
    };
    let mut start = 0;
    (0..count)
        .map(|index| {
            // at least one position per chunk, and one left for each chunk after this one
            let end = match index + 1 == count {
                true => prompt_len,
                false => boundary(index + 1).clamp(start + 1, prompt_len - (count - index - 1)),
            };
            let chunk = Chunk { index, start, end };
            start = end;
            chunk
        })
        .collect()
}

/// Positions a balanced chunk boundary is a multiple of (when chunks average at least four).
pub const CHUNK_GRANULE: usize = 128;

fn balanced_granule(prompt_len: usize, count: usize) -> usize {
    match prompt_len / count >= 4 * CHUNK_GRANULE {
        true => CHUNK_GRANULE,
        false => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(chunk: &Chunk, scale: f64) -> f64 {
        chunk.positions().map(|p| 1.0 + p as f64 / scale).sum()
    }

    #[test]
    fn balanced_chunks_cover_the_prompt_and_cost_the_same() {
        for (len, count, scale) in [
            (16384, 16, 11_000.0),
            (32768, 16, 11_000.0),
            (100, 7, 50.0),
            (5, 5, 1.0),
        ] {
            let chunks = split_prompt_balanced(len, count, scale);
            assert_eq!(chunks.len(), count);
            assert_eq!((chunks[0].start, chunks[count - 1].end), (0, len));
            let granule = balanced_granule(len, count);
            for (i, pair) in chunks.windows(2).enumerate() {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[0].index, i);
                assert_eq!(pair[0].end % granule, 0, "{pair:?}");
                assert!(
                    !pair[0].is_empty() && pair[0].len() + granule >= pair[1].len(),
                    "{pair:?}"
                );
            }
            let costs: Vec<f64> = chunks.iter().map(|c| cost(c, scale)).collect();
            let (lo, hi) = costs
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), &c| (lo.min(c), hi.max(c)));
            // one granule of rounding per boundary, at most
            assert!(
                hi - lo <= 2.0 * granule as f64 * (1.0 + len as f64 / scale),
                "{costs:?}"
            );
        }
        let uniform = split_prompt(16384, 1024);
        let balanced = split_prompt_balanced(16384, 16, 11_000.0);
        let max_cost = |chunks: &[Chunk]| chunks.iter().map(|c| cost(c, 11_000.0)).fold(0f64, f64::max);
        assert!(max_cost(&balanced) < 0.85 * max_cost(&uniform));
    }

    #[test]
    fn balanced_chunks_without_attention_cost_are_uniform() {
        let balanced = split_prompt_balanced(16384, 16, 1e15);
        assert_eq!(balanced, split_prompt(16384, 1024));
        assert_eq!(split_prompt_balanced(3, 8, 10.0).len(), 3);
    }

    #[test]
    fn chunks_of_their_own_lengths_are_the_chunks() {
        for chunks in [split_prompt(100, 7), split_prompt_balanced(16384, 16, 11_000.0)] {
            let lengths: Vec<u64> = chunks.iter().map(|c| c.len() as u64).collect();
            assert_eq!(chunks_of_lengths(&lengths), chunks);
        }
    }

    #[test]
    fn chunks_cover_the_prompt_in_order() {
        for len in [1, 2, 7, 64, 100] {
            for size in [1, 3, 7, 64, 1000] {
                let chunks = split_prompt(len, size);
                assert_eq!(chunks[0].start, 0);
                assert_eq!(chunks.last().unwrap().end, len);
                for pair in chunks.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= size));
            }
        }
    }
}
