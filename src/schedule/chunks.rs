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

/// Default chunk size for a prompt on `ranks` pipeline stages: about four chunks per stage, so
/// the pipeline fill and drain (ranks − 1 steps) is a small part of the work, but no chunk
/// under 64 tokens (smaller chunks waste the GPU's matrix units) unless the prompt is shorter.
pub fn default_chunk_size(prompt_len: usize, ranks: usize) -> usize {
    let target_chunks = 4 * ranks.max(1);
    prompt_len.div_ceil(target_chunks).max(64).min(prompt_len.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn default_chunk_size_is_positive_and_bounded() {
        assert_eq!(default_chunk_size(1, 3), 1);
        assert_eq!(default_chunk_size(10, 3), 10);
        assert_eq!(default_chunk_size(16384, 2), 2048);
        assert_eq!(default_chunk_size(1000, 8), 64);
    }
}
