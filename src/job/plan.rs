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
use crate::generate::SamplingParams;
use crate::model::source::{ModelFiles, ModelSource};
use crate::model::Qwen3Config;
use crate::prompt::prompt_ids;
use crate::schedule::{
    attention_cost_scale, default_chunk_size, split_prompt, split_prompt_balanced, Chunking, LayerSplit,
    Schedule,
};
use crate::tokenize::TextTokenizer;
use crate::trace::spans::SpanLog;
use crate::trace::TraceFile;

use super::trace_guard::TraceGuard;

pub struct JobPlan {
    pub source: ModelSource,
    pub files: ModelFiles,
    /// Rank 0 only: decodes generated text.
    pub tokenizer: Option<TextTokenizer>,
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub chunk_size: usize,
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
    let planned = (|| -> Result<(usize, usize, Schedule)> {
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
        let chunk_size = args
            .chunk_size
            .map(|c| c as usize)
            .unwrap_or_else(|| default_chunk_size(ids.len(), ranks));
        // the schedule holds one KV sync call per layer and chunk: bound it before building it
        let calls = ids
            .len()
            .div_ceil(chunk_size.max(1))
            .saturating_mul(cfg.num_hidden_layers);
        if calls > MAX_SYNC_CALLS {
            bail!(
                "--chunk-size {chunk_size}: {} chunks of the {}-token prompt over {} layers make {calls} KV sync \
                 calls, more than {MAX_SYNC_CALLS}; use larger chunks",
                ids.len().div_ceil(chunk_size.max(1)),
                ids.len(),
                cfg.num_hidden_layers
            );
        }
        let chunks = match args.chunking {
            Chunking::Balanced => {
                let scale = attention_cost_scale(layer_params(cfg), cfg.num_attention_heads * cfg.head_dim);
                split_prompt_balanced(ids.len(), ids.len().div_ceil(chunk_size), scale)
            }
            Chunking::Uniform => split_prompt(ids.len(), chunk_size),
        };
        Ok((capacity, chunk_size, Schedule::new(split, chunks)))
    })();
    let trace = TraceGuard::new(trace, spans.clone());
    if trace_requested(args, rank) {
        trace.watch_signals().map_err(JobError::Fatal)?;
    }
    let (capacity, chunk_size, schedule) =
        agree(world, planned).inspect_err(|e| trace.fail(&e.to_string()))?;
    Ok(JobPlan {
        start_time,
        source,
        files,
        tokenizer,
        prompt_ids: ids,
        sampling,
        chunk_size,
        capacity,
        schedule: Arc::new(schedule),
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

/// Weights of one decoder layer's matrix products (attention projections and MLP).
fn layer_params(cfg: &Qwen3Config) -> usize {
    let (hidden, q_width) = (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim);
    let kv_width = cfg.num_key_value_heads * cfg.head_dim;
    2 * hidden * q_width + 2 * hidden * kv_width + 3 * hidden * cfg.intermediate_size
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
