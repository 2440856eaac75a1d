//! Setup, second half: this rank's device, the job's transport plan, the memory check, its
//! layers and KV cache, agreed on by every rank.

use std::time::Instant;

use anyhow::Result;

use super::failure::{agree, JobError};
use super::memory_plan;
use super::plan::JobPlan;
use crate::cli::RunArgs;
use crate::device::{device_name, select_device, select_dtype};
use crate::model::{KvCache, Qwen3, StageParts};
use crate::sync::SyncStrategy;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};
use crate::transport::{plan_transport, MpiEnv, Site, TransportPlan};

/// This rank's model (its layer range), KV cache, device, and how its KV blocks move.
pub struct LoadedStage {
    pub model: Qwen3,
    pub kv: KvCache,
    pub device: candle_core::Device,
    pub transport: TransportPlan,
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
    let loaded = (|| -> Result<LoadedStage> {
        let device = select_device(args.device, env.local_rank, env.local_size)?;
        let settings = &plan.environment.transport;
        let site = Site::detect(device.is_cuda(), env, settings);
        let (strategy, transport_arg) = args.sync.with_transport(args.transport);
        let transport = plan_transport(transport_arg, strategy == SyncStrategy::Ring, &site, settings)?;
        let dtype = select_dtype(args.dtype, &device);
        let cfg = &plan.files.config;
        let owned = plan.schedule.split().range(rank);
        let parts = StageParts {
            embed: rank == 0,
            head: rank == env.size - 1,
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
            "loaded layers {owned:?} on {} as {dtype:?} in {:.2} s; transport {} ({})",
            device_name(&device),
            started.elapsed().as_secs_f64(),
            transport.transport.name(),
            transport.reason
        );
        let kv = KvCache::with_memory(cfg, plan.capacity, dtype, &device, transport.ipc_capable_cache)?;
        Ok(LoadedStage {
            model,
            kv,
            device,
            transport,
        })
    })();
    let stage = agree(&env.world, loaded)?;
    if rank == 0 && stage.device.is_cuda() {
        crate::eprint_line!(
            "qwen3-mpi: transport {} ({})",
            stage.transport.transport.name(),
            stage.transport.reason
        );
        crate::eprint_line!("qwen3-mpi: layers: {}", stage.model.plan().reason);
    }
    Ok(stage)
}
