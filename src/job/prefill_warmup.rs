//! `--warmup`: before the first prefill, one chunk of each distinct length runs once through
//! this rank's stage (its embedding, layers and head), so that every kernel the prefill launches is
//! loaded and every plan built before the clock starts. cuBLAS and cuDNN load their kernels
//! lazily, at first launch (about 140 ms of a first layer on an H200), and a lazy load can wait
//! for the whole CUDA context. The warm-up's K/V land in its chunks' own cache positions of this
//! rank's layers, which the prefill then overwrites.

use std::ops::Range;
use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;

use crate::model::{KvCache, Qwen3, StageParts};
use crate::schedule::Chunk;

/// Distinct chunk lengths warmed, longest first (uniform chunks have at most two).
const MAX_LENGTHS: usize = 4;

/// Runs the warm-up; returns the chunk lengths it ran and the seconds it took.
pub fn warm_up(
    model: &Qwen3,
    kv: &KvCache,
    owned: Range<usize>,
    parts: StageParts,
    chunks: &[Chunk],
    prompt_ids: &[u32],
) -> Result<(Vec<usize>, f64)> {
    let started = Instant::now();
    let warmed = chunks_to_warm(chunks);
    for chunk in &warmed {
        let mut x = match parts.embed {
            true => model.embed(&prompt_ids[chunk.positions()])?, // (L, hidden)
            false => Tensor::zeros(
                (chunk.len(), model.config().hidden_size),
                model.dtype(),
                model.device(),
            )?,
        };
        for layer in owned.clone() {
            x = model.forward_layer(layer, &x, chunk.start, kv)?;
        }
        if parts.head {
            model.logits_last(&x)?;
        }
    }
    model.device().synchronize()?;
    Ok((
        warmed.iter().map(Chunk::len).collect(),
        started.elapsed().as_secs_f64(),
    ))
}

/// The first chunk of each distinct length, longest first, at most [`MAX_LENGTHS`].
fn chunks_to_warm(chunks: &[Chunk]) -> Vec<Chunk> {
    let mut warmed: Vec<Chunk> = Vec::new();
    for chunk in chunks {
        if !warmed.iter().any(|w| w.len() == chunk.len()) {
            warmed.push(*chunk);
        }
    }
    warmed.sort_by(|a, b| b.len().cmp(&a.len()).then(a.start.cmp(&b.start)));
    warmed.truncate(MAX_LENGTHS);
    warmed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{split_prompt, split_prompt_balanced};

    fn lengths(chunks: &[Chunk]) -> Vec<usize> {
        chunks.iter().map(Chunk::len).collect()
    }

    #[test]
    fn the_first_chunk_of_each_distinct_length_longest_first() {
        assert_eq!(chunks_to_warm(&split_prompt(20, 5)), [split_prompt(20, 5)[0]]);
        let uneven = split_prompt(23, 5);
        assert_eq!(chunks_to_warm(&uneven), [uneven[0], uneven[4]]);
        let balanced = split_prompt_balanced(16384, 16, 11_000.0);
        let warmed = chunks_to_warm(&balanced);
        assert!(warmed.len() <= MAX_LENGTHS && lengths(&warmed).windows(2).all(|w| w[0] > w[1]));
        assert!(warmed.iter().all(|c| balanced.contains(c)));
        assert!(chunks_to_warm(&[]).is_empty());
    }
}
