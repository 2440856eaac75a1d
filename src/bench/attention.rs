//! `qwen3-mpi bench-attention`: prefill attention alone, one GPU, no MPI. For each chunk shape
//! (`L@E`: L queries ending at position E, so starting at E − L, over keys [0, E)) random q
//! (L, H, D) and one cache layer (E, 2, KVH, D) are made on the GPU; each backend (cuDNN's fused
//! attention, our kernel, the unfused candle path) runs warm-up calls, then timed calls between
//! CUDA events, and the last timed output is checked against attention in f32 on a sample of
//! query rows: a row fails when ‖out − ref‖/‖ref‖ exceeds [`TOLERANCE`] or is not finite.

use anyhow::Result;

use super::attention_table::{format_rows, AttentionRow};
use crate::device::DTypeArg;

/// The largest relative error a backend may have against the f32 reference.
pub const TOLERANCE: f64 = 2e-2;

#[derive(Debug, Clone, clap::Args)]
pub struct AttentionBenchArgs {
    /// Chunk shapes, `L@E`: L queries at positions [E − L, E) over keys [0, E).
    #[arg(
        long,
        value_name = "L@E,...",
        value_delimiter = ',',
        default_value = "1024@4096,1024@16384,1024@32768,2048@16384,4096@32768,16384@16384",
        value_parser = parse_chunk
    )]
    pub shapes: Vec<ChunkShape>,

    /// Backends to time.
    #[arg(
        long,
        value_name = "BACKEND,...",
        value_enum,
        value_delimiter = ',',
        default_value = "cudnn,kernel"
    )]
    pub backends: Vec<AttentionBackend>,

    /// Timed calls per (backend, shape), after the warm-up calls.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,

    /// Untimed calls per (backend, shape) before the timed ones.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub warmup: u64,

    /// Query heads (default: Qwen3-8B's).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub heads: usize,

    /// K/V heads (default: Qwen3-8B's).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub kv_heads: usize,

    /// Size of one head (default: Qwen3-8B's).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub head_dim: usize,

    /// Precision of q, K/V and the output (bf16 or f16).
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DTypeArg,

    /// Query rows per shape checked against the f32 reference (evenly spaced, first and last
    /// included; all of them when the chunk is shorter).
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub check_rows: u64,

    /// GPU index, counted among the visible GPUs (CUDA_VISIBLE_DEVICES).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gpu: usize,

    /// Seed of the random inputs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Print the rows as one JSON line after the table.
    #[arg(long)]
    pub json: bool,
}

/// One chunk: `len` queries ending at position `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkShape {
    pub len: usize,
    pub end: usize,
}

impl ChunkShape {
    /// Position of the chunk's first query.
    pub fn start(self) -> usize {
        self.end - self.len
    }
}

/// `L@E` with 1 ≤ L ≤ E.
pub fn parse_chunk(text: &str) -> Result<ChunkShape, String> {
    let bad = || format!("`{text}` is not a chunk shape L@E (L queries ending at position E, 1 <= L <= E)");
    let (len, end) = text.split_once('@').ok_or_else(bad)?;
    let len: usize = len.trim().parse().map_err(|_| bad())?;
    let end: usize = end.trim().parse().map_err(|_| bad())?;
    if len == 0 || len > end {
        return Err(bad());
    }
    Ok(ChunkShape { len, end })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttentionBackend {
    /// cuDNN's fused flash attention (GPU builds from scripts/build-cuda.sh, libcudnn.so.9 at run time).
    Cudnn,
    /// Our own attention kernel (bf16, head size 128).
    Kernel,
    /// The unfused path: plain tensor operations, scores in f32.
    Reference,
}

impl AttentionBackend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cudnn => "cudnn",
            Self::Kernel => "kernel",
            Self::Reference => "reference",
        }
    }
}

/// Measures every (shape, backend), prints the table (and `--json`); Err when any row failed.
pub fn run_attention_bench(args: &AttentionBenchArgs) -> Result<Vec<AttentionRow>> {
    let rows = measure(args)?;
    print!("{}", format_rows(&rows));
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    let failed = rows.iter().filter(|r| r.failed()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} rows failed", rows.len());
    }
    Ok(rows)
}

#[cfg(not(feature = "cuda"))]
fn measure(_: &AttentionBenchArgs) -> Result<Vec<AttentionRow>> {
    anyhow::bail!("this binary was built without CUDA; build one with scripts/build-cuda.sh")
}

#[cfg(feature = "cuda")]
fn measure(args: &AttentionBenchArgs) -> Result<Vec<AttentionRow>> {
    super::attention_gpu::measure(args)
}

/// The rows of a chunk of `len` that are checked, at most `max` (≥ 1), evenly spaced, the last
/// row always included (it sees every key).
pub fn rows_to_check(len: usize, max: usize) -> Vec<u32> {
    if len <= max {
        return (0..len as u32).collect();
    }
    if max <= 1 {
        return vec![len as u32 - 1];
    }
    (0..max).map(|i| (i * (len - 1) / (max - 1)) as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_shapes_parse_and_refuse() {
        assert_eq!(parse_chunk("1024@4096"), Ok(ChunkShape { len: 1024, end: 4096 }));
        assert_eq!(parse_chunk("16@16").map(ChunkShape::start), Ok(0));
        for bad in ["4096@1024", "0@16", "16", "a@b", "16@"] {
            assert!(parse_chunk(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checked_rows_span_the_chunk() {
        assert_eq!(rows_to_check(3, 8), vec![0, 1, 2]);
        assert_eq!(rows_to_check(10, 1), vec![9]);
        let rows = rows_to_check(16384, 512);
        assert_eq!((rows.len(), rows[0], rows[511]), (512, 0, 16383));
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
    }
}
