//! Setup, second half: this rank's device, the job's transport plan, the decode mode (from
//! what each mode needs on every rank), its layers and KV cache, agreed on by every rank.

use std::time::Instant;

use anyhow::Result;

use super::decode_mode::{self, DecodePlan};
use super::failure::{agree, JobError};
use super::kernel_preload::KernelPreload;
use super::memory_plan;
use super::plan::JobPlan;
use super::prefill_warmup::warm_up;
use crate::cli::RunArgs;
use crate::device::{device_name, ranks_on_gpu_of, select_device, select_dtype, visible_gpus};
use crate::model::{KvCache, Qwen3};
use crate::schedule::DecodeMode;
use crate::sync::SyncStrategy;
use crate::trace::nvtx::SpanRange;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};
use crate::transport::{plan_transport, MpiEnv, Site, TransportPlan};

/// This rank's model (its layer range), KV cache, device, how its KV blocks move, and how the
/// job decodes.
pub struct LoadedStage {
    pub model: Qwen3,
    pub kv: KvCache,
    pub device: candle_core::Device,
    pub transport: TransportPlan,
    pub decode: DecodePlan,
}

/// What setup knows before the decode mode is chosen.
struct Placed {
    device: candle_core::Device,
    transport: TransportPlan,
    dtype: candle_core::DType,
    budget: Option<(u64, String)>,
    /// Ranks that use this rank's GPU (1 on the CPU).
    gpu_sharing: usize,
}

/// Loads this rank's stage; every rank agrees that it worked (an error names the lowest
/// failing rank's cause, on every rank). Rank 0 says on a GPU which transport and kernels run.
pub fn load_stage(
    args: &RunArgs,
    env: &MpiEnv,
    plan: &JobPlan,
    spans: &SpanLog,
) -> Result<LoadedStage, JobError> {
    let rank = env.rank;
    tracing::info!(
        "node-local rank {} of {} on host {}",
        env.local_rank,
        env.local_size,
        MpiEnv::hostname()
    );
    // 1. The device, the transport plan and what this rank may use.
    let placed = (|| -> Result<Placed> {
        let device = select_device(args.device, env.local_rank, env.local_size)?;
        let settings = &plan.environment.transport;
        let site = Site::detect(device.is_cuda(), env, settings);
        let (strategy, transport_arg) = args.sync.with_transport(args.transport);
        let transport = plan_transport(
            transport_arg,
            args.hidden_transport,
            strategy == SyncStrategy::Ring,
            &site,
            settings,
        )?;
        let dtype = select_dtype(args.dtype, &device);
        // the ranks that use this rank's memory: those on its GPU, or on the CPU the node's
        let (gpu_sharing, memory_sharers) = match device.is_cuda() {
            true => {
                let on_gpu = ranks_on_gpu_of(env.local_rank, env.local_size, visible_gpus());
                (on_gpu, on_gpu)
            }
            false => (1, env.local_size),
        };
        let budget = memory_plan::memory_budget(args.max_memory, &device, memory_sharers)?;
        Ok(Placed {
            device,
            transport,
            dtype,
            budget,
            gpu_sharing,
        })
    })();
    let Placed {
        device,
        transport,
        dtype,
        budget,
        gpu_sharing,
    } = agree(&env.world, placed)?;

    // 2. The decode mode: every rank's budget and GPU sharing to every rank, the same choice
    //    on each.
    let cfg = &plan.files.config;
    let split = plan.schedule.split();
    let (budgets, sharing) =
        decode_mode::gather_budgets(&env.world, budget.as_ref().map(|(bytes, _)| *bytes), gpu_sharing);
    let source = budget
        .as_ref()
        .map_or("free on the device", |(_, source)| source.as_str());
    let ranks = decode_mode::rank_memory(cfg, plan.capacity, dtype, split, &budgets);
    let decode = agree(
        &env.world,
        decode_mode::choose(args.decode, &ranks, source, split, plan.capacity, &sharing),
    )?;

    // 3. This rank's layers and KV cache: its own layers' only, when decode is pipelined.
    let loaded = (|| -> Result<LoadedStage> {
        let owned = split.range(rank);
        let parts = decode_mode::stage_parts(rank, env.size - 1);
        let kernels = KernelPreload::start(&device, spans, env.local_rank)?;
        let started = Instant::now();
        let load_range = SpanRange::open(SpanKind::WeightLoad, SpanAt::NONE);
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
        drop(load_range);
        kernels.finish()?;
        let pipelined = decode.mode == DecodeMode::Pipeline;
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
            "loaded layers {owned:?} on {} as {dtype:?} in {:.2} s; transport {} ({})",
            device_name(&device),
            started.elapsed().as_secs_f64(),
            transport.transport.name(),
            transport.reason
        );
        let kv = match pipelined {
            true => KvCache::for_layers(cfg, owned.clone(), plan.capacity, dtype, &device, false)?,
            false => KvCache::with_memory(cfg, plan.capacity, dtype, &device, transport.ipc_capable_cache)?,
        };
        if args.warmup {
            let chunks = plan.schedule.chunks();
            let (lengths, took) = warm_up(&model, &kv, owned, parts, chunks, &plan.prompt_ids)?;
            tracing::info!("warm-up: chunks of {lengths:?} tokens through this stage in {took:.3} s");
        }
        Ok(LoadedStage {
            model,
            kv,
            device,
            transport,
            decode,
        })
    })();
    let stage = agree(&env.world, loaded)?;
    if rank == 0 {
        crate::eprint_line!("qwen3-mpi: chunks: {}", plan.chunk_reason);
        crate::eprint_line!(
            "qwen3-mpi: decode mode {} ({})",
            stage.decode.mode.name(),
            stage.decode.reason
        );
    }
    if rank == 0 && stage.device.is_cuda() {
        crate::eprint_line!(
            "qwen3-mpi: transport {} ({})",
            stage.transport.transport.name(),
            stage.transport.reason
        );
        if env.size > 1 {
            crate::eprint_line!(
                "qwen3-mpi: hidden states {} ({})",
                stage.transport.hidden.path.name(),
                stage.transport.hidden.reason
            );
        }
        crate::eprint_line!("qwen3-mpi: layers: {}", stage.model.plan().reason);
    }
    Ok(stage)
}
