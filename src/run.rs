//! `qwen3-mpi run` on one process: load, prefill in chunks, decode, report.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::cli::RunArgs;
use crate::device::{device_name, select_device, select_dtype};
use crate::generate::{decode, default_chunk_size, prefill_local, Sampler, SamplingParams};
use crate::model::source::ModelSource;
use crate::model::{KvCache, Qwen3, StageParts};
use crate::prompt::prompt_ids;
use crate::tokenize::TextTokenizer;
use crate::trace::TraceFile;

/// What a run produced, for the JSON line and the trace.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub ranks: usize,
    pub chunk_size: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub ttft_s: f64,
    pub prefill_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_s: f64,
    pub decode_tokens_per_s: f64,
    #[serde(skip)]
    pub prompt_ids: Vec<u32>,
    #[serde(skip)]
    pub prefill_logits: Vec<f32>,
}

pub fn run(args: &RunArgs) -> Result<RunReport> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate()?;
    let trace = args.trace.as_deref().map(TraceFile::create).transpose()?;

    // 1. Model files, tokenizer, prompt
    let source = ModelSource::from_arg(&args.model);
    let files = source.open()?;
    let cfg = files.config.clone();
    let tokenizer = TextTokenizer::from_bytes(&files.tokenizer_json, &tokenizer_origin(&source))?;
    let ids = prompt_ids(args, &files, &tokenizer)?;
    let capacity = ids.len() + args.max_new_tokens;
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
    let chunk_size = args
        .chunk_size
        .map(|c| c as usize)
        .unwrap_or_else(|| default_chunk_size(ids.len(), 1));

    // 2. Weights and KV cache
    let device = select_device(args.device, 0)?;
    let dtype = select_dtype(args.dtype, &device);
    let layers = 0..cfg.num_hidden_layers;
    let model = Qwen3::load(
        &cfg,
        files.weights.as_ref(),
        layers,
        StageParts::ALL,
        capacity,
        dtype,
        &device,
    )?;
    let kv = KvCache::new(&cfg, capacity, dtype, &device)?;

    // 3. Prefill and the first token
    let prefill_start = Instant::now();
    let logits = prefill_local(&model, &ids, chunk_size, &kv)?;
    let mut sampler = Sampler::new(sampling);
    let first = sampler.next_token(&logits)?;
    let ttft_s = prefill_start.elapsed().as_secs_f64();

    // 4. Decode, streaming text
    let mut stream = tokenizer.stream();
    let mut stdout = std::io::stdout();
    let outcome = decode(
        &model,
        &kv,
        first,
        ids.len(),
        args.max_new_tokens,
        &mut sampler,
        &files.eos_token_ids(),
        |id| {
            if let Some(piece) = stream.step(id)? {
                stdout.write_all(piece.as_bytes())?;
                stdout.flush()?;
            }
            Ok(())
        },
    )?;
    writeln!(stdout)?;
    let decode_s: f64 = outcome.step_seconds.iter().sum();

    let report = RunReport {
        model: source.describe(),
        device: device_name(&device),
        dtype: format!("{dtype:?}").to_lowercase(),
        ranks: 1,
        chunk_size,
        prompt_tokens: ids.len(),
        new_tokens: outcome.generated.len(),
        text: tokenizer.decode(&outcome.generated)?,
        generated_ids: outcome.generated,
        ttft_s,
        prefill_s: ttft_s,
        prefill_tokens_per_s: ids.len() as f64 / ttft_s,
        decode_s,
        decode_tokens_per_s: per_second(outcome.step_seconds.len(), decode_s),
        prompt_ids: ids,
        prefill_logits: logits.to_vec1::<f32>()?,
    };
    if let Some(trace) = trace {
        write_trace(trace, &report, &cfg)?;
    }
    Ok(report)
}

fn per_second(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn tokenizer_origin(source: &ModelSource) -> String {
    match source {
        ModelSource::Tiny => "built-in tokenizer.json".into(),
        ModelSource::Dir(dir) => dir.join("tokenizer.json").display().to_string(),
    }
}

fn write_trace(
    trace: TraceFile,
    report: &RunReport,
    cfg: &crate::model::Qwen3Config,
) -> Result<()> {
    trace.attr_str(
        "command_line",
        &std::env::args().collect::<Vec<_>>().join(" "),
    )?;
    trace.attr_str("model", &report.model)?;
    trace.attr_str("model_config", &serde_json::to_string(cfg)?)?;
    trace.attr_str("device", &report.device)?;
    trace.attr_str("dtype", &report.dtype)?;
    trace.attr_u64("world_size", report.ranks as u64)?;
    trace.attr_u64("chunk_size", report.chunk_size as u64)?;
    trace.attr_u64("prompt_tokens", report.prompt_tokens as u64)?;
    trace.attr_u64("new_tokens", report.new_tokens as u64)?;
    trace.attr_f64("ttft_s", report.ttft_s)?;
    trace.dataset("output/prompt_ids", &report.prompt_ids)?;
    trace.dataset("output/generated_ids", &report.generated_ids)?;
    trace.dataset("output/prefill_logits", &report.prefill_logits)?;
    trace.finish("ok")?;
    Ok(())
}
