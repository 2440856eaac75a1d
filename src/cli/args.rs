//! The command-line contract. `qwen3-mpi` with no subcommand means `run`.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::bench::attention::AttentionBenchArgs;
use crate::bench::comm::CommBenchArgs;
use crate::cli::predict::PredictArgs;
use crate::device::{DTypeArg, DeviceArg};
use crate::schedule::{Chunking, DecodeArg};
use crate::sync::SyncStrategy;
use crate::transport::{HiddenArg, TransportArg};

#[derive(Debug, Parser)]
#[command(
    name = "qwen3-mpi",
    version,
    about = "Qwen3 inference as an MPI job: pipelined chunked prefill with per-layer KV sync, redundant or pipelined decode",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prefill a prompt and generate (the default).
    Run(RunArgs),
    /// Read trace files (no MPI).
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Time the KV sync alone: one layer's K/V block per rank, every transport and size.
    BenchComm(CommBenchArgs),
    /// Time prefill attention alone on one GPU (no MPI): cuDNN's fused attention, our kernel
    /// and the unfused path, each checked against an f32 reference.
    BenchAttention(AttentionBenchArgs),
    /// The prefill the chunk cost model predicts for a model's config and rank counts, without
    /// running it (no MPI, no GPU): the chunks the job would take, TTFT, speed-up.
    Predict(PredictArgs),
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// One row per file: model, ranks, prompt tokens, chunks, sync, TTFT, tokens/s, exposed sync.
    Summary {
        /// Trace files written by `--trace`.
        #[arg(required = true, value_name = "FILE.h5")]
        files: Vec<PathBuf>,
        /// Print CSV (a header line, then one line per file) instead of the table.
        #[arg(long)]
        csv: bool,
    },
    /// The chunk cost model fitted on traces' per-layer spans (one dense model, one device
    /// class): its rates, the matrix products' speed by chunk length, and each trace's TTFT
    /// against the prediction. Give traces of several chunk lengths (`--chunk-size`).
    FitCost {
        /// Trace files written by `--trace`, fitted and predicted.
        #[arg(required = true, value_name = "FILE.h5")]
        files: Vec<PathBuf>,
        /// Traces only predicted from the fit, not fitted (e.g. multi-rank runs predicted
        /// from one-rank ones).
        #[arg(long, num_args = 1.., value_name = "FILE.h5")]
        predict: Vec<PathBuf>,
    },
    /// Chrome trace-event JSON for Perfetto: one process per rank, one track per thread.
    Perfetto {
        /// A trace file written by `--trace`.
        #[arg(value_name = "FILE.h5")]
        file: PathBuf,
        /// Where to write the JSON (open it in ui.perfetto.dev).
        #[arg(short, long, value_name = "OUT.json")]
        output: PathBuf,
    },
}

/// What the command line asks for.
pub enum Action {
    Run(RunArgs),
    Trace(TraceCommand),
    BenchComm(CommBenchArgs),
    BenchAttention(AttentionBenchArgs),
    Predict(PredictArgs),
}

impl Cli {
    /// The command line of this process, with `--version` saying what the binary is
    /// ([`version_text`]).
    pub fn parse_command_line() -> Result<Self, clap::Error> {
        // clap keeps the text for the life of the process: made once, at startup
        let version: &'static str = Box::leak(version_text().into_boxed_str());
        let matches = Self::command()
            .version(version)
            .long_version(version)
            .try_get_matches()?;
        Self::from_arg_matches(&matches)
    }

    pub fn into_action(self) -> Action {
        match self.command {
            Some(Command::Run(args)) => Action::Run(args),
            Some(Command::Trace(command)) => Action::Trace(command),
            Some(Command::BenchComm(args)) => Action::BenchComm(args),
            Some(Command::BenchAttention(args)) => Action::BenchAttention(args),
            Some(Command::Predict(args)) => Action::Predict(args),
            None => Action::Run(self.run),
        }
    }
}

/// The built-in prompt: long enough (about 120 tokens) for every rank of a small job to get
/// several chunks, so the default job shows the pipeline.
/// What the binary is: its version, the commit it was built from, the build's features and the
/// MPI library it runs on (asked of the library itself, which MPI allows before `MPI_Init`).
pub fn version_text() -> String {
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("nccl", cfg!(feature = "nccl")),
        ("cudnn", cfg!(feature = "cudnn")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| *name)
    .collect();
    let features = match features.is_empty() {
        true => "none (CPU only; scripts/build-cuda.sh builds cuda, nccl and cudnn)".to_string(),
        false => features.join(", "),
    };
    format!(
        "{}\ncommit: {}\nfeatures: {features}\nMPI library: {}",
        env!("CARGO_PKG_VERSION"),
        env!("QWEN3_MPI_GIT_COMMIT"),
        crate::transport::mpi_env::MpiEnv::library_version()
    )
}

pub const DEFAULT_PROMPT: &str =
    "Pipeline parallelism splits a language model's layers across GPUs: each GPU holds a \
     contiguous range of layers, and the prompt is cut into chunks that flow through the stages one after \
     another, so that while the second GPU works on the first chunk, the first GPU already works on the \
     second. Every layer's keys and values go to every other GPU as soon as they are computed, so that once \
     the prompt is through, each GPU holds the whole cache and can generate the answer on its own. Explain \
     how the KV cache is shared, and why the chunks keep every stage busy.";

#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct RunArgs {
    /// Hugging Face Qwen3 or Qwen3-MoE model directory, or `tiny` / `tiny-moe` for the built-in
    /// toy models (dense / mixture-of-experts).
    #[arg(long, default_value = "tiny", value_name = "DIR|tiny|tiny-moe")]
    pub model: String,

    /// Prompt text (default: a built-in prompt of about 120 tokens).
    #[arg(long, group = "prompt_source", value_name = "TEXT")]
    pub prompt: Option<String>,

    /// Read the prompt text from a file.
    #[arg(long, group = "prompt_source", value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,

    /// A deterministic prompt of N token ids, for benchmarks.
    #[arg(long, group = "prompt_source", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub synthetic_prompt: Option<u64>,

    /// Apply the model's chat template to the prompt (one user message).
    #[arg(long)]
    pub chat: bool,

    /// Tokens to generate (the first comes from the prefill).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_new_tokens: usize,

    /// Prompt tokens per pipeline chunk (default: the length of least predicted prefill time by
    /// the chunk cost model, from 64 tokens to the longest that gives each rank two chunks;
    /// on one rank the whole prompt, up to 16,384 tokens). Rank 0 prints the choice and its
    /// prediction; `qwen3-mpi trace fit-cost` refits the model from traces.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_size: Option<u64>,

    /// How the prompt is cut into chunks.
    #[arg(long, value_enum, value_name = "HOW", default_value = "uniform")]
    pub chunking: Chunking,

    /// Decoder layers per rank, e.g. `12,12,12` (default: as even as possible).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub layers: Option<Vec<usize>>,

    /// How each layer's K/V reaches the other ranks.
    #[arg(long, value_enum, value_name = "HOW", default_value = "allgather")]
    pub sync: SyncStrategy,

    /// What moves the KV blocks between ranks (rank 0 says on a GPU which one runs and why).
    #[arg(long, value_enum, value_name = "HOW", default_value = "auto")]
    pub transport: TransportArg,

    /// What moves a chunk's hidden state to the next stage (rank 0 says on a GPU which one runs
    /// and why; on the CPU it is always MPI between host buffers).
    #[arg(long, value_enum, value_name = "HOW", default_value = "auto")]
    pub hidden_transport: HiddenArg,

    /// Seconds any rank may wait in one MPI call before the job is aborted.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS", value_parser = parse_timeout)]
    pub timeout: f64,

    /// Memory a rank may use, e.g. `70GiB` (default: what its device has free). What the decode
    /// mode holds (`--decode`) must fit, or the job stops before loading, with the numbers.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_memory: Option<u64>,

    /// How the tokens after the first are made: `redundant` (every rank holds the whole model
    /// and KV cache and decodes alone), `pipeline` (each rank holds only its own layers and
    /// their K/V, no KV sync; each token's hidden state passes rank to rank), `auto`: redundant
    /// where the whole model and KV cache fit every rank, else pipeline (rank 0 says why).
    #[arg(long, value_enum, value_name = "HOW", default_value = "auto")]
    pub decode: DecodeArg,

    /// Precision of weights, activations and the KV cache (default: f32 on CPU, bf16 on GPU).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,

    /// Where each rank computes.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,

    /// Sampling temperature (a number ≥ 0); 0 is greedy.
    #[arg(long, value_name = "T", default_value_t = 0.0, value_parser = parse_temperature)]
    pub temperature: f64,

    /// Sample only among the K most likely tokens (K ≥ 1).
    #[arg(long, value_name = "K", value_parser = parse_top_k)]
    pub top_k: Option<usize>,

    /// Sample only among the most likely tokens whose probabilities sum to P, in (0, 1].
    #[arg(long, value_name = "P", value_parser = parse_top_p)]
    pub top_p: Option<f64>,

    /// Seed of the sampler.
    #[arg(long, value_name = "N", default_value_t = 299_792_458)]
    pub seed: u64,

    /// Run the prefill N times (benchmarks: the runs after the first are warm); every run's
    /// TTFT is printed, the last run's figures and spans are the job's.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100))]
    pub prefill_runs: u64,

    /// HDF5 trace file to write (docs/trace-schema.md; `qwen3-mpi trace` reads it).
    #[arg(long, value_name = "FILE.h5")]
    pub trace: Option<PathBuf>,

    /// Trace the parts of each layer too (matrix products, attention, elementwise kernels) as
    /// spans of their own, on the GPU track (CUDA events between the parts; the fused GPU layer
    /// only). For profiling: the events add a little to every layer.
    #[arg(long)]
    pub op_spans: bool,

    /// Before the first prefill, run one chunk of each distinct length through this rank's
    /// stage, so that every kernel and plan the prefill uses is loaded and built first (on a
    /// GPU the first run's TTFT then leaves out one-time kernel loading). Its K/V go into the
    /// positions the prefill then overwrites.
    #[arg(long)]
    pub warmup: bool,

    /// Verification dumps: each rank's KV cache after prefill to DIR/kv-rank<R>.safetensors,
    /// and the prefill logits (f32) to DIR/logits.safetensors from rank 0.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,

    /// Print one JSON object with the results as the last stdout line.
    #[arg(long)]
    pub json: bool,

    /// Seconds between progress lines (prefill chunk k of N, decode tokens/s) on rank 0's
    /// stderr (default: on a terminal one line updated in place, else a line every 5 s);
    /// 0 turns progress off.
    #[arg(long, value_name = "SECONDS", value_parser = parse_progress_every)]
    pub progress_every: Option<f64>,
}

fn parse_temperature(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("`{text}` is not a temperature: a number >= 0")),
    }
}

fn parse_top_k(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err(format!("`{text}` is not a top-k: a whole number >= 1")),
    }
}

fn parse_top_p(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!("`{text}` is not a top-p: a number in (0, 1]")),
    }
}

pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text).map_err(|e| format!("`{text}` is not a size in bytes: {e}"))
}

fn parse_progress_every(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if t >= 0.0 && t.is_finite() => Ok(t),
        _ => Err(format!("`{text}` is not a number of seconds >= 0")),
    }
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if t > 0.0 && t.is_finite() => Ok(t),
        _ => Err(format!("must be a positive number of seconds, got `{text}`")),
    }
}
