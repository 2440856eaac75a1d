//! Job setup before any weights load: model files, the prompt (rank 0 tokenizes and broadcasts
//! it), the layer split and the schedule, agreed on by every rank.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::failure::{agree, JobError};
use super::fault::Fault;
use crate::cli::environment::Environment;
use crate::cli::RunArgs;
use crate::device::{default_dtype, DTypeArg, DeviceArg};
use crate::generate::SamplingParams;
use crate::model::source::{ModelFiles, ModelSource};
use crate::model::Qwen3Config;
use crate::prompt::prompt_ids;
use crate::schedule::{
    chunks_of_lengths, plan_chunks, Chunk, ChunkPlan, DeviceRates, HopCost, JobCost, LayerSplit, Schedule,
};
use crate::tokenize::TextTokenizer;
use crate::trace::spans::SpanLog;
use crate::trace::TraceFile;
use crate::transport::HiddenArg;

use super::trace_guard::TraceGuard;

pub struct JobPlan {
    pub source: ModelSource,
    pub files: ModelFiles,
    /// Rank 0 only: decodes generated text.
    pub tokenizer: Option<TextTokenizer>,
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub chunk_size: usize,
    /// How the chunk length was chosen and what the cost model predicts (rank 0 prints it once
    /// the stages have loaded).
    pub chunk_reason: String,
    /// The cost model's prefill time for these chunks.
    pub predicted_prefill_s: f64,
    /// KV positions per layer: prompt plus new tokens.
    pub capacity: usize,
    pub schedule: Arc<Schedule>,
    /// UTC, RFC 3339, when setup began.
    pub start_time: String,
    /// Rank 0's trace file (empty elsewhere).
    pub trace: TraceGuard,
    /// The `QWEN3_MPI_*` overrides (transport settings, the failure tests' fault).
    pub environment: Environment,
}

struct RankZeroInputs {
    tokenizer: TextTokenizer,
    prompt_ids: Vec<u32>,
    trace: Option<TraceFile>,
}

/// The most (layer, chunk) KV sync calls a job's schedule may hold (16 Mi: far more than any
/// sensible job, far less than exhausts memory).
const MAX_SYNC_CALLS: usize = 1 << 24;

pub fn prepare(
    args: &RunArgs,
    world: &SimpleCommunicator,
    rank: usize,
    ranks: usize,
    spans: &SpanLog,
) -> Result<JobPlan, JobError> {
    let start_time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // 1. Every rank reads the model's config; rank 0 also the tokenizer and prompt.
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let source = ModelSource::from_arg(&args.model);
    let opened = (|| -> Result<(ModelFiles, Environment, Option<RankZeroInputs>)> {
        sampling.validate()?;
        let environment = Environment::read()?;
        let files = source.open_with(Fault::after_map(environment.fault, rank))?;
        if rank != 0 {
            return Ok((files, environment, None));
        }
        let inputs = match &source {
            ModelSource::Dir(dir) => Some(dir.as_path()),
            ModelSource::Tiny | ModelSource::TinyMoe => None,
        };
        let trace = args
            .trace
            .as_deref()
            .map(|path| TraceFile::create(path, inputs))
            .transpose()?;
        if let Some(trace) = &trace {
            // what the job is, written first, so that a file that ends failed still says it
            trace.attr_str("command_line", &std::env::args().collect::<Vec<_>>().join(" "))?;
            trace.attr_str("run_args", &serde_json::to_string(args)?)?;
            trace.attr_u64("world_size", ranks as u64)?;
            trace.attr_str("start_time", &start_time)?;
            trace.attr_str("git_commit", env!("QWEN3_MPI_GIT_COMMIT"))?;
        }
        let tokenizer = TextTokenizer::from_bytes(&files.tokenizer_json, &tokenizer_origin(&source))?;
        let prompt_ids = prompt_ids(args, &files, &tokenizer)?;
        Ok((
            files,
            environment,
            Some(RankZeroInputs {
                tokenizer,
                prompt_ids,
                trace,
            }),
        ))
    })();
    let (files, environment, rank_zero) = agree(world, opened)?;

    // 2. The prompt ids go to every rank.
    let (tokenizer, mut ids, trace) = match rank_zero {
        Some(z) => (Some(z.tokenizer), z.prompt_ids, z.trace),
        None => (None, Vec::new(), None),
    };
    let root = world.process_at_rank(0);
    let mut len = ids.len() as u64;
    root.broadcast_into(&mut len);
    ids.resize(len as usize, 0);
    root.broadcast_into(&mut ids[..]);

    // 3. Lengths, layer split and schedule: the same pure computation on every rank.
    let planned = (|| -> Result<(usize, LayerSplit, ChunkPlan)> {
        let cfg = &files.config;
        let capacity = ids.len().checked_add(args.max_new_tokens).with_context(|| {
            format!(
                "--max-new-tokens {}: the prompt plus new tokens overflow",
                args.max_new_tokens
            )
        })?;
        if ids.len() > cfg.max_position_embeddings {
            bail!(
                "the prompt has {} tokens, more than max_position_embeddings ({})",
                ids.len(),
                cfg.max_position_embeddings
            );
        }
        if capacity > cfg.max_position_embeddings {
            bail!(
                "prompt ({} tokens) + --max-new-tokens ({}) exceeds max_position_embeddings ({})",
                ids.len(),
                args.max_new_tokens,
                cfg.max_position_embeddings
            );
        }
        let split = match &args.layers {
            Some(counts) => LayerSplit::from_counts(counts, cfg.num_hidden_layers, ranks)?,
            None => LayerSplit::even(cfg.num_hidden_layers, ranks)?,
        };
        let cost = job_cost(args, cfg);
        let given = args.chunk_size.map(|c| usize::try_from(c).unwrap_or(usize::MAX));
        if let Some(size) = given {
            check_sync_calls(ids.len(), size, cfg.num_hidden_layers)?;
        }
        let chunks = plan_chunks(ids.len(), &split, &cost, args.chunking, given);
        Ok((capacity, split, chunks))
    })();
    let trace = TraceGuard::new(trace, spans.clone());
    if trace_requested(args, rank) {
        trace.watch_signals().map_err(JobError::Fatal)?;
    }
    let (capacity, split, chunks) = agree(world, planned).inspect_err(|e| trace.fail(&e.to_string()))?;
    let ChunkPlan {
        size: chunk_size,
        chunks,
        predicted,
        reason: chunk_reason,
    } = chunks;
    // 4. Rank 0's chunks on every rank: the choice depends on the build (the device class), and
    //    ranks of different builds must still run one schedule.
    let chunks = rank_zero_chunks(world, chunks);
    Ok(JobPlan {
        start_time,
        source,
        files,
        tokenizer,
        prompt_ids: ids,
        sampling,
        chunk_size,
        chunk_reason,
        predicted_prefill_s: predicted.ttft_s,
        capacity,
        schedule: Arc::new(Schedule::new(split, chunks)),
        trace,
        environment,
    })
}

impl JobPlan {
    /// The plan for decode mode `mode`: pipelined decode keeps each rank's K/V to itself, so
    /// its prefill runs without the KV sync (the same schedule, no sync calls).
    pub fn for_decode(mut self, mode: crate::schedule::DecodeMode) -> Self {
        if mode == crate::schedule::DecodeMode::Pipeline {
            let schedule = Arc::unwrap_or_clone(self.schedule);
            self.schedule = Arc::new(schedule.without_kv_sync());
        }
        self
    }
}

/// Collective: rank 0's chunks, broadcast (their lengths) to every rank.
fn rank_zero_chunks(world: &SimpleCommunicator, mine: Vec<Chunk>) -> Vec<Chunk> {
    let root = world.process_at_rank(0);
    let mut lengths: Vec<u64> = mine.iter().map(|c| c.len() as u64).collect();
    let mut count = lengths.len() as u64;
    root.broadcast_into(&mut count);
    lengths.resize(count as usize, 0);
    root.broadcast_into(&mut lengths[..]);
    chunks_of_lengths(&lengths)
}

/// The cost model the chunk choice uses: the device class every rank computes on (a GPU where
/// this build has CUDA and `--device` allows it: a rank without one stops at setup) and the
/// path `--hidden-transport` names (`auto` counted as IPC, what it picks on one node).
fn job_cost(args: &RunArgs, cfg: &Qwen3Config) -> JobCost {
    let on_gpu = cfg!(feature = "cuda") && args.device != DeviceArg::Cpu;
    let dtype = args.dtype.map_or(default_dtype(on_gpu), DTypeArg::dtype);
    let (rates, hop) = match (on_gpu, args.hidden_transport) {
        (false, _) => (DeviceRates::CPU, HopCost::CPU),
        (true, HiddenArg::Host) => (DeviceRates::GPU, HopCost::GPU_HOST),
        (true, HiddenArg::Ipc | HiddenArg::Auto) => (DeviceRates::GPU, HopCost::GPU_IPC),
        (true, HiddenArg::Device) => (DeviceRates::GPU, HopCost::GPU_MPI),
    };
    JobCost::new(cfg, rates, hop, dtype.size_in_bytes())
}

/// The schedule holds one KV sync call per layer and chunk: bound it before building it.
fn check_sync_calls(prompt_len: usize, chunk_size: usize, layers: usize) -> Result<()> {
    let chunks = prompt_len.div_ceil(chunk_size.max(1));
    let calls = chunks.saturating_mul(layers);
    if calls > MAX_SYNC_CALLS {
        bail!(
            "--chunk-size {chunk_size}: {chunks} chunks of the {prompt_len}-token prompt over {layers} layers make \
             {calls} KV sync calls, more than {MAX_SYNC_CALLS}; use larger chunks"
        );
    }
    Ok(())
}

fn tokenizer_origin(source: &ModelSource) -> String {
    match source {
        ModelSource::Tiny | ModelSource::TinyMoe => "built-in tokenizer.json".into(),
        ModelSource::Dir(dir) => dir.join("tokenizer.json").display().to_string(),
    }
}

fn trace_requested(args: &RunArgs, rank: usize) -> bool {
    rank == 0 && args.trace.is_some()
}
