//! One MPI job: setup agreed by every rank, pipelined prefill with per-layer KV sync, first
//! token, redundant decode, consistency check, report.

pub mod background_load;
pub mod consistency;
pub mod failure;
pub mod fault;
pub mod first_token;
pub mod gather;
pub mod layer_spans;
pub mod memory_plan;
pub mod placement;
pub mod plan;
pub mod prefill_pass;
pub mod report;
pub mod stage_loop;
pub mod trace_guard;
pub mod trace_writer;
pub mod watchdog;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use mpi::traits::*;

use crate::cli::RunArgs;
use crate::device::{device_hardware, device_name, select_device, select_dtype};
use crate::generate::decode;
use crate::model::{KvCache, Qwen3, StageParts};
use crate::sync::{make_transport, warm_up, SyncStrategy};
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};
use crate::transport::mpi_raw::library_cuda_support;
use crate::transport::selection::HostPath;
use crate::transport::selection::CUDA_AWARE_ENV;
use crate::transport::selection::NCCL_BUILT;
use crate::transport::MpiEnv;
use crate::transport::{choose_transport, CudaAwareness, Transport, TransportArg};
use background_load::BackgroundLoad;
use failure::{agree, JobAbort, JobError};
use fault::{Fault, Phase};
use plan::JobPlan;
use prefill_pass::{Prefill, PrefillPass, PREFILL_SPANS};
use report::{JobReport, RankFigures};
use trace_writer::write_job_trace;
use watchdog::Watchdog;

pub fn run_job(args: &RunArgs, env: &MpiEnv) -> Result<JobReport, JobError> {
    let (rank, ranks) = (env.rank, env.size);
    let abort = JobAbort { rank };
    let watchdog = Watchdog::start(
        rank,
        Duration::from_secs_f64(args.timeout),
        Box::new(move |code, line| abort.abort(code, line)),
    );
    // The common clock origin of every rank's spans.
    env.world.barrier();
    let spans = SpanLog::new(Instant::now(), 4096);

    // 1. Plan and load this rank's stage; every rank agrees that both worked.
    let plan = plan::prepare(args, &env.world, rank, ranks, &spans)?;
    let trace = plan.trace.clone();
    // From here a rank that ends the job alone leaves its message in rank 0's trace.
    let _failures = failure::FailureChannel::open(&env.world, rank, &trace).map_err(JobError::Fatal)?;
    let loaded = (|| -> Result<(Qwen3, KvCache, candle_core::Device, Transport, String)> {
        let device = select_device(args.device, env.local_rank, env.local_size)?;
        let override_value = std::env::var(CUDA_AWARE_ENV).ok();
        let awareness = CudaAwareness::detect(override_value.as_deref(), library_cuda_support())?;
        let (_, transport_arg) = args.sync.with_transport(args.transport);
        let (transport, why) = choose_transport(
            transport_arg,
            device.is_cuda(),
            // a ring was asked for: ipc pushes have none
            env.local_size == env.size && args.sync != SyncStrategy::Ring,
            &awareness,
            NCCL_BUILT,
        )?;
        HostPath::from_env()?; // read again by the host transport
        crate::transport::progress::check_env()?; // read again by each prefill
        let dtype = select_dtype(args.dtype, &device);
        let cfg = &plan.files.config;
        let owned = plan.schedule.split().range(rank);
        let parts = StageParts {
            embed: rank == 0,
            head: rank == ranks - 1,
        };
        let need = memory_plan::MemoryNeed::of(cfg, plan.capacity, dtype);
        let budget = memory_plan::memory_budget(args.max_memory, &device)?;
        memory_plan::check_fits(need, budget, cfg, plan.capacity)?;
        let started = Instant::now();
        let mut model = Qwen3::load(
            cfg,
            plan.files.weights.as_ref(),
            owned.clone(),
            parts,
            plan.capacity,
            dtype,
            &device,
        )?;
        spans.record(SpanKind::WeightLoad, SpanThread::Compute, SpanAt::NONE, started);
        let chunks: Vec<_> = plan
            .schedule
            .chunks()
            .iter()
            .map(|c| (c.len(), c.start))
            .collect();
        if let Some(took) = model.prepare_prefill(&chunks, plan.capacity)? {
            tracing::info!(
                "prefill attention prepared for {} chunks in {took:.3} s",
                chunks.len()
            );
        }
        tracing::info!(
            "loaded layers {owned:?} on {} as {dtype:?} in {:.2} s; transport {} ({why})",
            device_name(&device),
            started.elapsed().as_secs_f64(),
            transport.name()
        );
        // CUDA IPC maps it: our own pushes, or a CUDA-aware MPI's
        let ipc = matches!(transport, Transport::Device | Transport::Ipc);
        let kv = KvCache::with_memory(cfg, plan.capacity, dtype, &device, ipc)?;
        Ok((model, kv, device, transport, why))
    })();
    let (model, kv, device, transport, why) =
        agree(&env.world, loaded).inspect_err(|e| trace.fail(&e.to_string()))?;
    if rank == 0 && device.is_cuda() {
        crate::eprint_line!("qwen3-mpi: transport {} ({why})", transport.name());
        crate::eprint_line!("qwen3-mpi: layers: {}", model.plan().reason);
    }
    let stage = LoadedStage {
        model,
        kv,
        device,
        transport,
    };
    let fault = plan.fault;

    // 2. From here on an error on one rank ends the job at once.
    let outcome =
        run_loaded(args, env, &plan, stage, &watchdog, fault, &spans).and_then(|report| match trace.take() {
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

/// This rank's model (its layer range), KV cache and device.
struct LoadedStage {
    model: Qwen3,
    kv: KvCache,
    device: candle_core::Device,
    transport: Transport,
}

fn run_loaded(
    args: &RunArgs,
    env: &MpiEnv,
    plan: &JobPlan,
    stage: LoadedStage,
    watchdog: &Watchdog,
    fault: Option<Fault>,
    spans: &SpanLog,
) -> Result<JobReport, JobError> {
    let fail = JobError::Fatal;
    let LoadedStage {
        mut model,
        kv,
        device,
        transport,
    } = stage;
    let device = &device;
    let (rank, ranks) = (env.rank, env.size);
    let cfg = plan.files.config.clone();
    let kv = Arc::new(kv);
    let owned = plan.schedule.split().range(rank);
    let mut rest = Some(
        BackgroundLoad::start(
            cfg.clone(),
            plan.files.weights.clone(),
            owned,
            plan.capacity,
            model.dtype(),
            device.clone(),
            spans.clone(),
        )
        .map_err(fail)?,
    );
    let pipe_comm = env.duplicate();
    let mut idle_comm = Some(env.duplicate()); // for the progress thread
    let row_bytes = cfg.hidden_size * model.dtype().size_in_bytes();
    let mut hidden_buffers =
        stage_loop::HiddenBuffers::new(rank, ranks, &plan.schedule, row_bytes, device).map_err(fail)?;

    // 2-4. Prefill, first token, KV sync drained; `--prefill-runs N` repeats it (warm timings:
    //      every run recomputes the same cache), and the trace keeps the last run's spans.
    let (strategy, transport_arg) = args.sync.with_transport(args.transport);
    // One transport for every run, its first-use costs paid before the clock starts.
    let longest = plan.schedule.chunks().iter().map(|c| c.len()).max().unwrap_or(0);
    let made = make_transport(strategy, transport, env.duplicate(), rank, kv.clone(), longest);
    let (transport, made) = match made {
        // IPC setup fails on every rank alike (it agrees first), so every rank falls back alike
        Err(error) if transport == Transport::Ipc && transport_arg == TransportArg::Auto => {
            let (fallback, why) = transport_across_nodes(device).map_err(fail)?;
            if rank == 0 {
                eprintln!(
                    "qwen3-mpi: transport ipc unavailable ({error:#}); transport {} ({why})",
                    fallback.name()
                );
            }
            let made = make_transport(strategy, fallback, env.duplicate(), rank, kv.clone(), longest);
            (fallback, made)
        }
        made => (transport, made),
    };
    let transport_name = transport.name();
    let mut kv_transport = made
        .and_then(|mut t| warm_up(t.as_mut(), ranks, longest.min(plan.capacity / ranks)).map(|_| t))
        .map_err(fail)?;
    let runs = args.prefill_runs.max(1) as usize;
    let mut ttft_runs_s = Vec::with_capacity(runs);
    let mut last = None;
    for run in 0..runs {
        if run > 0 {
            spans.forget(&PREFILL_SPANS);
        }
        let pass = PrefillPass {
            env,
            plan,
            model: &model,
            kv: &kv,
            device,
            pipe: &pipe_comm.0,
            watchdog,
            fault: if run == 0 { fault } else { None },
            spans,
            op_spans: args.op_spans,
        };
        let idle = idle_comm
            .take()
            .ok_or_else(|| fail(anyhow::anyhow!("no progress communicator")))?;
        let (prefill, transport_back, idle) =
            pass.run(kv_transport, idle, &mut hidden_buffers)
                .map_err(|error| {
                    // NaN or Inf: every rank found it alike, so the job ends cleanly, rank 0 reporting
                    if error.is::<first_token::NonFinite>() {
                        JobError::Failed {
                            error,
                            report: rank == 0,
                        }
                    } else {
                        fail(error)
                    }
                })?;
        idle_comm = Some(idle);
        kv_transport = transport_back;
        if run + 1 < runs {
            // warm runs measure prefill alone, not beside the rest of the weights loading
            if let Some(rest) = rest.take() {
                rest.complete_into(&mut model).map_err(fail)?;
            }
        }
        ttft_runs_s.push(prefill.ttft_s);
        last = Some(prefill);
    }
    let Some(Prefill {
        mut sampler,
        first,
        prefill_logits,
        ttft_s,
        prefill_s,
        stage_times,
        sync_stats,
        exposed_sync_s,
    }) = last
    else {
        return Err(fail(anyhow::anyhow!("no prefill ran")));
    };
    kv_transport.close().map_err(fail)?; // decode needs no KV sync
    if let Some(dir) = &args.dump {
        dump(dir, rank, &kv, plan.prompt_ids.len(), &prefill_logits).map_err(fail)?;
    }
    if let Some(rest) = rest.take() {
        rest.complete_into(&mut model).map_err(fail)?;
    }

    // 5. Decode on every rank, no communication; rank 0 streams the text.
    let mut stream = plan.tokenizer.as_ref().map(|t| t.stream());
    let mut stdout = std::io::stdout();
    let eos = plan.files.eos_token_ids();
    let mut decoded = 0;
    let mut step_started = Instant::now();
    let outcome = decode(
        &model,
        &kv,
        first,
        plan.prompt_ids.len(),
        args.max_new_tokens,
        &mut sampler,
        &eos,
        |id| {
            Fault::check(fault.as_ref(), rank, Phase::Decode, decoded)?;
            if decoded > 0 {
                let at = SpanAt {
                    step: decoded as i32,
                    ..SpanAt::NONE
                };
                spans.record(SpanKind::DecodeStep, SpanThread::Compute, at, step_started);
            }
            step_started = Instant::now();
            decoded += 1;
            if let Some(piece) = stream.as_mut().map(|s| s.step(id)).transpose()?.flatten() {
                stdout.write_all(piece.as_bytes())?;
                stdout.flush()?;
            }
            Ok(())
        },
    )
    .map_err(fail)?;
    if rank == 0 {
        let _ = writeln!(stdout);
    }
    let checked = Fault::as_checked(fault.as_ref(), rank, &outcome.generated);
    consistency::check_ranks_agree(&env.world, &checked, watchdog).map_err(|error| JobError::Failed {
        error,
        report: rank == 0,
    })?;

    // 6. Figures from every rank to everyone (small), report on rank 0.
    let mine = RankFigures {
        rank,
        kv_bytes_sent: sync_stats.bytes_sent,
        kv_bytes_received: sync_stats.bytes_received,
        exposed_sync_s,
        sync: sync_stats,
        stage: stage_times,
    };
    let mut rows = vec![0f64; RankFigures::FIELDS * ranks];
    env.world.all_gather_into(&mine.to_row()[..], &mut rows[..]);
    let spans_per_rank = gather::spans_to_root(&env.world, &spans.snapshot(), watchdog).map_err(fail)?;
    let hostnames = placement::gather_strings(&env.world, &MpiEnv::hostname());
    let devices = placement::gather_strings(&env.world, &device_hardware(device));
    let decode_s: f64 = outcome.step_seconds.iter().sum();
    let text = match &plan.tokenizer {
        Some(t) => t.decode(&outcome.generated).map_err(fail)?,
        None => String::new(),
    };
    Ok(JobReport {
        model: plan.source.describe(),
        device: device_name(device),
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        ranks,
        layer_split: plan.schedule.split().counts(),
        sync: args.sync.name().into(),
        transport: transport_name.into(),
        chunk_size: plan.chunk_size,
        chunks: plan.schedule.chunks().len(),
        chunking: args.chunking,
        chunk_lengths: plan.schedule.chunks().iter().map(|c| c.len()).collect(),
        prefill_attention: model.plan().prefill_name().into(),
        decode_path: model.plan().decode_name().into(),
        layer_kernels: model.plan().reason.clone(),
        prompt_tokens: plan.prompt_ids.len(),
        new_tokens: outcome.generated.len(),
        generated_ids: outcome.generated,
        text,
        ttft_s,
        ttft_runs_s,
        prefill_s,
        prefill_tokens_per_s: plan.prompt_ids.len() as f64 / prefill_s,
        decode_s,
        decode_tokens_per_s: if decode_s > 0.0 {
            outcome.step_seconds.len() as f64 / decode_s
        } else {
            0.0
        },
        decode_ms_per_token_median: median(&outcome.step_seconds) * 1e3,
        per_rank: rows
            .chunks(RankFigures::FIELDS)
            .map(RankFigures::from_row)
            .collect(),
        prompt_ids: plan.prompt_ids.clone(),
        prefill_logits,
        spans_per_rank,
        hostnames,
        devices,
        start_time: plan.start_time.clone(),
    })
}

/// The middle value (0 for none).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// What `auto` picks when CUDA IPC cannot join the ranks: as if they spanned several nodes.
fn transport_across_nodes(device: &candle_core::Device) -> Result<(Transport, String)> {
    let awareness = CudaAwareness::detect(
        std::env::var(CUDA_AWARE_ENV).ok().as_deref(),
        library_cuda_support(),
    )?;
    choose_transport(
        TransportArg::Auto,
        device.is_cuda(),
        false,
        &awareness,
        NCCL_BUILT,
    )
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
