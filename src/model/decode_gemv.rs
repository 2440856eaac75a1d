//! Which kernel runs the decode step's matrix-vector products (`QWEN3_MPI_DECODE_GEMV`), and what
//! that kernel takes: its name, its dynamic shared memory and its grid. Pure, so that it is
//! tested without a GPU; `decode_step.rs` loads and launches it.
//!
//! - `register` (the default): `kernels/decode_ops.cu`. Each lane holds its next batch of weights
//!   in flight in registers; as many blocks as fit a multiprocessor (two).
//! - `ring-u<U>s<S>` (`ring` is `ring-u2s6`): `kernels/decode_gemv_ring.cu`. Each lane's weights
//!   wait in a ring of S batches of its own in shared memory (U 16-byte vectors of each of its
//!   warp's rows a batch), S − 1 in flight while one is multiplied. One block a multiprocessor by
//!   default, so that the next kernel's block fits beside it and fills its own ring while this one
//!   drains (where the two fit the 228 KiB of an H100/H200 multiprocessor: `u2s6` holds 96 KiB of
//!   ring besides its input, so a Qwen3-8B down product fits beside the next q/k/v, a 14B's does
//!   not). The sums are the register kernel's, bit for bit.
//!
//! `QWEN3_MPI_DECODE_GEMV_BLOCKS=N` sets the blocks a multiprocessor of either kernel's grid (at
//! most what fits).

/// The kernel (`register`, `ring`, `ring-u<U>s<S>`).
pub const GEMV_ENV: &str = "QWEN3_MPI_DECODE_GEMV";
/// Blocks a multiprocessor of the products' grids.
pub const GEMV_BLOCKS_ENV: &str = "QWEN3_MPI_DECODE_GEMV_BLOCKS";

/// Threads of a block (`GEMV_THREADS` in `kernels/decode_gemv_io.cuh`).
pub const GEMV_THREADS: usize = 256;
/// Rows a warp (`GEMV_R` there).
const ROWS_A_WARP: usize = 2;
/// Output rows one block takes at a time (`ROWS_PER_BLOCK` there).
pub const GEMV_ROWS_PER_BLOCK: usize = GEMV_THREADS / 32 * ROWS_A_WARP;

/// One shape of the ring: U vectors of each row a batch, S batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingShape {
    pub vectors: usize,
    pub stages: usize,
}

const fn ring(vectors: usize, stages: usize) -> RingShape {
    RingShape { vectors, stages }
}

/// The shapes `kernels/decode_gemv_ring.cu` builds (its `RING_SHAPES`).
pub const RING_SHAPES: [RingShape; 4] = [ring(4, 2), ring(4, 3), ring(2, 4), ring(2, 6)];
/// The shape `ring` names.
pub const DEFAULT_RING: RingShape = ring(2, 6);

impl RingShape {
    fn tag(self) -> String {
        format!("u{}s{}", self.vectors, self.stages)
    }

    /// The variable's value that names it: `ring-u2s6`.
    fn name(self) -> String {
        format!("ring-{}", self.tag())
    }

    /// Bytes of the ring: a 16-byte slot for each (warp, stage, row, vector, lane).
    fn bytes(self) -> usize {
        GEMV_THREADS / 32 * self.stages * ROWS_A_WARP * self.vectors * 32 * 16
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvKernel {
    Register,
    Ring(RingShape),
}

/// The products' kernel and the blocks a multiprocessor asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvChoice {
    pub kernel: GemvKernel,
    blocks_per_sm: Option<usize>,
}

impl GemvChoice {
    /// From the two variables' values (unset: `None`); a bad value is an error naming its variable.
    pub fn parse(kernel: Option<&str>, blocks: Option<&str>) -> Result<Self, String> {
        let shapes = || RING_SHAPES.map(RingShape::name).join(", ");
        let kernel = match kernel.unwrap_or("") {
            "" | "register" => GemvKernel::Register,
            "ring" => GemvKernel::Ring(DEFAULT_RING),
            other => match RING_SHAPES.iter().find(|s| s.name() == other) {
                Some(&shape) => GemvKernel::Ring(shape),
                None => {
                    return Err(format!(
                        "{GEMV_ENV}={other}: expected register, ring or one of {}",
                        shapes()
                    ))
                }
            },
        };
        let blocks_per_sm = match blocks.unwrap_or("") {
            "" => None,
            text => match text.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => return Err(format!("{GEMV_BLOCKS_ENV}={text}: expected a whole number ≥ 1")),
            },
        };
        Ok(Self {
            kernel,
            blocks_per_sm,
        })
    }

    /// The process's choice.
    pub fn from_env() -> Result<Self, String> {
        let read = |name| std::env::var(name).ok();
        Self::parse(read(GEMV_ENV).as_deref(), read(GEMV_BLOCKS_ENV).as_deref())
    }

    /// The kernel's entry point for a product `kind` (`rmsnorm_store`, …) and dtype `suffix`.
    pub fn function_name(&self, kind: &str, suffix: &str) -> String {
        match self.kernel {
            GemvKernel::Register => format!("gemv_{kind}_{suffix}"),
            GemvKernel::Ring(shape) => format!("gemv_ring_{}_{kind}_{suffix}", shape.tag()),
        }
    }

    /// Dynamic shared memory for `cols` inputs of `elem` bytes: the input vector, then the ring.
    pub fn shared_bytes(&self, cols: usize, elem: usize) -> usize {
        cols * elem
            + match self.kernel {
                GemvKernel::Register => 0,
                GemvKernel::Ring(shape) => shape.bytes(),
            }
    }

    /// Blocks of a product over `rows` output rows: one row group each, at most the blocks a
    /// multiprocessor asked for (the ring: 1, the register kernel: all) of the `fit` that fit, on
    /// each of `sms` multiprocessors.
    pub fn grid(&self, rows: usize, fit: usize, sms: usize) -> usize {
        let default = match self.kernel {
            GemvKernel::Register => fit,
            GemvKernel::Ring(_) => 1,
        };
        let per_sm = self.blocks_per_sm.unwrap_or(default).min(fit).max(1);
        rows.div_ceil(GEMV_ROWS_PER_BLOCK).min(per_sm * sms.max(1)).max(1)
    }

    /// For the log: `ring-u2s6` or `register`.
    pub fn label(&self) -> String {
        match self.kernel {
            GemvKernel::Register => "register".into(),
            GemvKernel::Ring(shape) => shape.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_defaults() {
        let default = GemvChoice::parse(None, None).unwrap();
        assert_eq!(default.kernel, GemvKernel::Register);
        assert_eq!(
            default.function_name("rmsnorm_store", "bf16"),
            "gemv_rmsnorm_store_bf16"
        );
        let ring = GemvChoice::parse(Some("ring"), None).unwrap();
        assert_eq!(ring.kernel, GemvKernel::Ring(DEFAULT_RING));
        assert_eq!(
            ring.function_name("copy_residual", "f16"),
            "gemv_ring_u2s6_copy_residual_f16"
        );
        for shape in RING_SHAPES {
            let name = format!("ring-u{}s{}", shape.vectors, shape.stages);
            let choice = GemvChoice::parse(Some(&name), Some("2")).unwrap();
            assert_eq!((choice.kernel, choice.label()), (GemvKernel::Ring(shape), name));
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (kernel, blocks, variable) in [
            (Some("ring-u3s3"), None, GEMV_ENV),
            (Some("registers"), None, GEMV_ENV),
            (None, Some("0"), GEMV_BLOCKS_ENV),
            (None, Some("two"), GEMV_BLOCKS_ENV),
        ] {
            let err = GemvChoice::parse(kernel, blocks).unwrap_err();
            assert!(err.starts_with(variable), "{err}");
        }
    }

    #[test]
    fn every_ring_shape_is_built_by_the_kernel_file_and_no_other() {
        let source = include_str!("kernels/decode_gemv_ring.cu");
        let built: Vec<(usize, usize)> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix("RING_SHAPE(T, SUFFIX, "))
            .map(|rest| {
                let nums: Vec<usize> = rest
                    .trim_end_matches([')', '\\', ' '])
                    .split(", ")
                    .map(|n| n.parse().unwrap())
                    .collect();
                (nums[0], nums[1])
            })
            .collect();
        let listed: Vec<(usize, usize)> = RING_SHAPES.iter().map(|s| (s.vectors, s.stages)).collect();
        assert_eq!(built, listed);
        let io = include_str!("kernels/decode_gemv_io.cuh");
        assert!(io.contains(&format!("GEMV_THREADS = {GEMV_THREADS};")));
        assert!(io.contains(&format!("GEMV_R = {ROWS_A_WARP};")));
    }

    #[test]
    fn shared_memory_is_the_input_then_the_ring() {
        let register = GemvChoice::parse(None, None).unwrap();
        assert_eq!(register.shared_bytes(4096, 2), 8192);
        let ring = GemvChoice::parse(Some("ring-u2s6"), None).unwrap();
        // 8 warps x 6 stages x 2 rows x 2 vectors x 32 lanes x 16 bytes
        assert_eq!(ring.shared_bytes(4096, 2), 8192 + 98_304);
        // two such blocks (and the 1 KiB each reserves) fit an H200 multiprocessor's 228 KiB,
        // Qwen3-8B's down product (12,288 inputs) beside the next layer's q/k/v (4,096) too
        assert!(2 * (ring.shared_bytes(4096, 2) + 1024) <= 228 * 1024);
        assert!(ring.shared_bytes(12_288, 2) + ring.shared_bytes(4096, 2) + 2 * 1024 + 32 <= 228 * 1024);
    }

    #[test]
    fn grids_are_one_row_group_a_block_up_to_the_blocks_asked_for() {
        let register = GemvChoice::parse(None, None).unwrap();
        assert_eq!(register.grid(4096, 2, 132), 256);
        assert_eq!(register.grid(151_936, 2, 132), 264);
        assert_eq!(register.grid(1, 2, 132), 1);
        let ring = GemvChoice::parse(Some("ring"), None).unwrap();
        assert_eq!(ring.grid(6144, 2, 132), 132);
        let two = GemvChoice::parse(Some("ring"), Some("2")).unwrap();
        assert_eq!(two.grid(6144, 2, 132), 264);
        // never more than fit
        let many = GemvChoice::parse(None, Some("4")).unwrap();
        assert_eq!(many.grid(151_936, 2, 132), 264);
    }
}
