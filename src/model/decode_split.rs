//! How the decode step spreads its work over the GPU's blocks (pure arithmetic, so that it is
//! tested without a GPU): keys of the attention kernel split across blocks, and the persistent
//! grid of the matrix-vector kernels.

/// Keys one attention block takes per iteration (`TILE_KEYS` in
/// `kernels/decode_step_attention.cuh`).
pub const KEYS_PER_ITER: usize = 32;
/// Output rows one matrix-vector block takes at a time (`ROWS_PER_BLOCK` there).
pub const GEMV_ROWS_PER_BLOCK: usize = 16;

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

/// Blocks of a persistent matrix-vector kernel over `rows` output rows: one row group each, at
/// most `resident_blocks`.
pub fn gemv_grid(rows: usize, resident_blocks: usize) -> usize {
    rows.div_ceil(GEMV_ROWS_PER_BLOCK)
        .min(resident_blocks.max(1))
        .max(1)
}

/// `STREAM_MAX_STAGES` and `STREAM_MAX_VECS` of `kernels/decode_gemv_stream.cuh`, and its
/// threads' warps.
const STREAM_MAX_STAGES: usize = 8;
const STREAM_MAX_VECS: usize = 8;
const STREAM_WARPS: usize = 8;
/// Bytes of one tile (rows of W) the streamed product aims at, and of its ring of tiles: the
/// ring is what a block has in flight, and two blocks (this kernel's and the next one's, which
/// starts early) fit a multiprocessor's 228 KB.
const STREAM_TILE_BYTES: usize = 16 * 1024;
const STREAM_RING_BYTES: usize = 96 * 1024;

/// How the streamed matrix-vector kernel takes W (rows, cols): tiles of `tile_rows` rows in a
/// ring of `stages`, over `grid` blocks (one a multiprocessor), with `shared_bytes` of dynamic
/// shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPlan {
    pub tile_rows: usize,
    pub stages: usize,
    pub grid: usize,
    pub shared_bytes: usize,
}

/// The streamed kernel's plan for W (rows, cols) of `elem_bytes` elements on `sms`
/// multiprocessors, or `None` where it does not apply (the register kernel runs): rows of
/// whole 32-lane vector groups (cols % 256 == 0), at most `STREAM_MAX_VECS` vectors a lane, two
/// stages at least.
pub fn stream_plan(rows: usize, cols: usize, elem_bytes: usize, sms: usize) -> Option<StreamPlan> {
    if rows == 0 || cols == 0 || cols % 256 != 0 || sms == 0 {
        return None;
    }
    let row_bytes = cols * elem_bytes;
    let mut tile_rows = 1;
    while tile_rows < STREAM_WARPS && 2 * tile_rows * row_bytes <= STREAM_TILE_BYTES {
        tile_rows *= 2;
    }
    let parts = STREAM_WARPS / tile_rows; // warps a row
    let lane_vecs = (cols / 256).div_ceil(parts);
    let stage_bytes = tile_rows * row_bytes;
    let stages = (STREAM_RING_BYTES / stage_bytes).min(STREAM_MAX_STAGES);
    if lane_vecs > STREAM_MAX_VECS || stages < 2 {
        return None;
    }
    Some(StreamPlan {
        tile_rows,
        stages,
        grid: sms.min(rows),
        shared_bytes: stages * stage_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_plan_covers_the_qwen3_8b_products_and_declines_what_it_cannot_hold() {
        // q/k/v, o, gate_up and the head (cols 4096): two 8 KB rows a tile, six tiles a ring
        for rows in [6144, 4096, 24576, 151_936] {
            let plan = stream_plan(rows, 4096, 2, 132).expect("a plan");
            assert_eq!((plan.tile_rows, plan.stages, plan.grid), (2, 6, 132));
            assert_eq!(plan.shared_bytes, 6 * 16 * 1024);
        }
        // down (cols 12288): one 24 KB row a tile, four a ring, six vectors a lane
        let down = stream_plan(4096, 12288, 2, 132).expect("a plan");
        assert_eq!((down.tile_rows, down.stages), (1, 4));
        // 0.6B's hidden 1024: eight 2 KB rows a tile
        assert_eq!(stream_plan(4096, 1024, 2, 132).map(|p| p.tile_rows), Some(8));
        // cols not a multiple of 256, or too many vectors a lane: the register kernel
        assert_eq!(stream_plan(1024, 3000, 2, 132), None);
        assert_eq!(stream_plan(5120, 25600, 2, 132), None);
        // fewer rows than multiprocessors: one block a row
        assert_eq!(stream_plan(8, 4096, 2, 132).map(|p| p.grid), Some(8));
    }

    #[test]
    fn stream_plan_fits_two_blocks_a_multiprocessor_and_every_tile_in_its_stage() {
        for cols in (256..=20480).step_by(256) {
            for elem_bytes in [2, 4] {
                if let Some(plan) = stream_plan(1000, cols, elem_bytes, 132) {
                    assert!(2 * plan.shared_bytes <= 200 * 1024, "{cols}: {plan:?}");
                    assert!(plan.stages >= 2 && plan.stages <= STREAM_MAX_STAGES);
                    assert_eq!(STREAM_WARPS % plan.tile_rows, 0);
                    assert_eq!((plan.tile_rows * cols * elem_bytes) % 16, 0);
                    let parts = STREAM_WARPS / plan.tile_rows;
                    assert!((cols / 256).div_ceil(parts) <= STREAM_MAX_VECS);
                }
            }
        }
    }

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

    #[test]
    fn gemv_grid_is_one_row_group_per_block_up_to_the_resident_blocks() {
        assert_eq!(gemv_grid(4096, 264), 256);
        assert_eq!(gemv_grid(151_936, 264), 264);
        assert_eq!(gemv_grid(1, 264), 1);
    }
}
