//! How the decode step's attention spreads over the GPU's blocks (pure arithmetic, so that it is
//! tested without a GPU): keys split across blocks. The matrix-vector kernels' grids are
//! `decode_gemv.rs`'s.

/// Keys one attention block takes per iteration (`TILE_KEYS` in
/// `kernels/decode_step_attention.cuh`).
pub const KEYS_PER_ITER: usize = 32;

/// (keys per block, blocks along the keys) for the attention of one token over `keys` cache
/// positions and `kv_heads` KV heads, aiming at `resident_blocks` blocks in all (what the GPU
/// holds at once). Every block but the last gets a whole number of iterations.
pub fn key_splits(keys: usize, kv_heads: usize, resident_blocks: usize) -> (usize, usize) {
    let per_head = max_splits(kv_heads, resident_blocks);
    let split_keys = keys
        .div_ceil(per_head)
        .next_multiple_of(KEYS_PER_ITER)
        .max(KEYS_PER_ITER);
    (split_keys, keys.div_ceil(split_keys).max(1))
}

/// The most blocks along the keys [`key_splits`] gives for any number of keys.
pub fn max_splits(kv_heads: usize, resident_blocks: usize) -> usize {
    resident_blocks.div_ceil(kv_heads.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_splits_cover_every_key_with_no_empty_block() {
        for keys in [1, 31, 32, 33, 1000, 1025, 4097, 16385, 32768, 200_000] {
            for kv_heads in [1, 4, 8] {
                for resident in [1, 132, 396] {
                    let (split_keys, splits) = key_splits(keys, kv_heads, resident);
                    assert_eq!(split_keys % KEYS_PER_ITER, 0);
                    assert!(splits * split_keys >= keys, "{keys} keys uncovered");
                    assert!((splits - 1) * split_keys < keys, "an empty block for {keys} keys");
                    assert!(
                        splits <= max_splits(kv_heads, resident),
                        "partial buffers too small"
                    );
                }
            }
        }
    }

    #[test]
    fn key_splits_fill_the_gpu_on_a_long_cache() {
        // 16K keys over 8 KV heads on 132 SMs x 3 blocks: at least 90 % of them busy
        let (_, splits) = key_splits(16384, 8, 396);
        assert!(splits * 8 * 10 >= 396 * 9, "{splits} splits per head");
    }
}
