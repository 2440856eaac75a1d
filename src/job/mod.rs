//! One MPI job: setup agreed by every rank (the decode mode among it), pipelined prefill with
//! per-layer KV sync (none when decode is pipelined), first token, redundant or pipelined
//! decode, consistency check, report.

pub mod background_load;
pub mod consistency;
pub mod decode_mode;
pub mod decode_pipeline;
pub mod decode_stream;
pub mod failure;
pub mod fault;
pub mod first_token;
pub mod gather;
pub mod gather_report;
pub mod hidden_buffers;
pub mod kernel_preload;
pub mod layer_spans;
pub mod load_stage;
pub mod memory_plan;
pub mod plan;
pub mod prefill_pass;
pub mod prefill_runs;
pub mod prefill_warmup;
pub mod progress;
pub mod report;
pub mod stage_loop;
pub mod summary;
pub mod trace_guard;
pub mod trace_writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use mpi::traits::*;

use crate::abort::watchdog::Watchdog;
use crate::abort::JobAbort;
use crate::cli::environment::WeightLoad;
use crate::cli::RunArgs;
use crate::model::KvCache;
use crate::schedule::DecodeMode;
use crate::trace::spans::SpanLog;
use crate::transport::MpiEnv;
use background_load::BackgroundLoad;
use failure::JobError;
use fault::Fault;
use gather_report::JobResults;
use load_stage::{load_stage, LoadedStage};
use plan::JobPlan;
use prefill_runs::PrefillSetup;
use progress::Progress;
use report::JobReport;
use trace_writer::write_job_trace;

/// The job, phase by phase (README, "How a job runs").
pub fn run_job(args: &RunArgs, env: &MpiEnv) -> Result<JobReport, JobError> {
    let rank = env.rank;
    let abort = JobAbort { rank };
    let watchdog = Watchdog::start(
        rank,
        Duration::from_secs_f64(args.timeout),
        Box::new(move |code, line| abort.abort(code, line)),
    );
    // The common clock origin of every rank's spans.
    env.world.barrier();
    let spans = SpanLog::new(Instant::now(), 4096);

    // 1. Setup: the plan (inputs, prompt, schedule), then this rank's stage; every rank agrees
    //    that each worked. From the plan on, a rank that ends the job alone leaves its message
    //    in rank 0's trace.
    let plan = plan::prepare(args, &env.world, rank, env.size, &spans)?;
    let trace = plan.trace.clone();
    let _failures = failure::FailureChannel::open(&env.world, rank, &trace).map_err(JobError::Fatal)?;
    let stage = load_stage(args, env, &plan, &spans).inspect_err(|e| trace.fail(&e.to_string()))?;
    let plan = plan.for_decode(stage.decode.mode);

    // 2-6. From here on an error on one rank ends the job at once.
    let outcome =
        run_loaded(args, env, &plan, stage, &watchdog, &spans).and_then(|report| match trace.take() {
            Some(trace) => write_job_trace(trace, &report, &plan.files.config, args)
                .map(|_| report)
                .map_err(JobError::Fatal),
            None => Ok(report),
        });
    match outcome {
        Err(JobError::Fatal(error)) => {
            trace.fail(&format!("rank {rank}: {error:#}"));
            abort.fail(&error)
        }
        // Ok, or an error every rank found together (they disagree on the tokens)
        other => {
            if let Err(e) = &other {
                trace.fail(&e.to_string());
            }
            other
        }
    }
}

/// Phases 2-6, once every rank holds its stage.
fn run_loaded(
    args: &RunArgs,
    env: &MpiEnv,
    plan: &JobPlan,
    stage: LoadedStage,
    watchdog: &Watchdog,
    spans: &SpanLog,
) -> Result<JobReport, JobError> {
    let fail = JobError::Fatal;
    let LoadedStage {
        mut model,
        kv,
        device,
        transport,
        decode,
    } = stage;
    let kv = Arc::new(kv);
    let progress = Progress::for_rank(env.rank, args.progress_every);
    let owned = plan.schedule.split().range(env.rank);
    // redundant decode needs every layer: the others load while this rank runs its prefill
    // (or after it, `QWEN3_MPI_WEIGHT_LOAD=after`)
    let dtype = model.dtype();
    let start_load = || {
        BackgroundLoad::start(
            plan.files.config.clone(),
            plan.files.weights.clone(),
            plan.environment.weight_load == WeightLoad::StagedDuringPrefill,
            owned.clone(),
            decode_mode::stage_parts(env.rank, env.size - 1),
            plan.capacity,
            dtype,
            device.clone(),
            spans.clone(),
        )
        .map_err(fail)
    };
    let redundant = decode.mode == DecodeMode::Redundant;
    let load_after = redundant && plan.environment.weight_load == WeightLoad::AfterPrefill;
    let mut rest = match redundant && !load_after {
        true => Some(start_load()?),
        false => None,
    };

    // 2-4. Prefill through the pipeline, first token, KV sync drained (`--prefill-runs` times).
    let mut prefill = PrefillSetup {
        args,
        env,
        plan,
        device: &device,
        kv: &kv,
        transport: &transport,
        decode: decode.mode,
        watchdog,
        spans,
        progress: &progress,
    }
    .run(&mut model, &mut rest)?;
    if let Some(dir) = &args.dump {
        dump(
            dir,
            env.rank,
            &kv,
            plan.prompt_ids.len(),
            &prefill.last.prefill_logits,
        )
        .map_err(fail)?;
    }
    if load_after {
        tracing::info!(
            "loading the layers outside {owned:?} after the prefill (QWEN3_MPI_WEIGHT_LOAD=after)"
        );
        rest = Some(start_load()?);
    }
    if let Some(rest) = rest.take() {
        rest.complete_into(&mut model).map_err(fail)?;
    }

    // 5. Decode, on every rank alone or through the pipeline; rank 0 streams the text; the
    //    ranks agree.
    let decode_comm = env.duplicate();
    let (decoded, decode_times) = decode_stream::DecodeStream {
        plan,
        rank: env.rank,
        model: &model,
        kv: &kv,
        mode: decode.mode,
        comm: &decode_comm.0,
        watchdog,
        spans,
        progress: &progress,
    }
    .run(prefill.last.first, &mut prefill.last.sampler)
    .map_err(fail)?;
    let checked = Fault::as_checked(plan.environment.fault.as_ref(), env.rank, &decoded.generated);
    consistency::check_ranks_agree(&env.world, &checked, watchdog).map_err(|error| JobError::Failed {
        error,
        report: env.rank == 0,
    })?;

    // 6. Figures from every rank, the report on rank 0.
    JobResults {
        args,
        env,
        plan,
        model: &model,
        kv: &kv,
        device: &device,
        decode,
        prefill,
        decoded,
        decode_times,
    }
    .gather(watchdog, spans)
    .map_err(fail)
}

/// `--dump DIR`: this rank's KV cache after prefill, and on rank 0 the prefill logits.
fn dump(dir: &std::path::Path, rank: usize, kv: &KvCache, prompt_len: usize, logits: &[f32]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--dump {}: {e}", dir.display()))?;
    kv.save_prefix(&dir.join(format!("kv-rank{rank}.safetensors")), prompt_len)?;
    if rank == 0 {
        let logits = candle_core::Tensor::new(logits, &candle_core::Device::Cpu)?;
        let path = dir.join("logits.safetensors");
        candle_core::safetensors::save(&std::collections::HashMap::from([("logits", logits)]), &path)
            .map_err(|e| anyhow::anyhow!("--dump {}: {e}", path.display()))?;
    }
    Ok(())
}
