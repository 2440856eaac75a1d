//! One prefill run: every rank runs its stage with the KV sync thread trailing it, the first
//! token comes from the last rank's logits, then the sync drains. `--prefill-runs` repeats it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use mpi::traits::*;

use super::failure::JobAbort;
use super::fault::Fault;
use super::first_token;
use super::hidden_buffers::HiddenBuffers;
use super::plan::JobPlan;
use super::progress::Progress;
use super::stage_loop::{run_stage, StageContext, StageTimes};
use crate::abort::watchdog::Watchdog;
use crate::generate::Sampler;
use crate::model::{KvCache, Qwen3};
use crate::sync::{KvSyncWorker, KvTransport, SyncStats};
use crate::trace::device_spans::DeviceSpans;
use crate::trace::nvtx::SpanRange;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};
use crate::transport::progress::{poll_interval, MpiProgress};
use crate::transport::{MpiEnv, SharedComm};

/// Spans of one prefill run (dropped from the trace when another run follows).
pub const PREFILL_SPANS: [SpanKind; 12] = [
    SpanKind::Embed,
    SpanKind::LayerCompute,
    SpanKind::KvSync,
    SpanKind::Send,
    SpanKind::Recv,
    SpanKind::HiddenCopy,
    SpanKind::Wait,
    SpanKind::LmHead,
    SpanKind::Gemm,
    SpanKind::Attention,
    SpanKind::Elementwise,
    SpanKind::Moe,
];

/// What one prefill run leaves: the first token (and the sampler that drew it), the logits
/// and where the time went.
pub struct Prefill {
    pub sampler: Sampler,
    pub first: u32,
    pub prefill_logits: Vec<f32>,
    pub ttft_s: f64,
    pub prefill_s: f64,
    pub stage_times: StageTimes,
    pub sync_stats: SyncStats,
    pub exposed_sync_s: f64,
}

/// Everything one prefill run needs.
pub struct PrefillPass<'a> {
    pub env: &'a MpiEnv,
    pub plan: &'a JobPlan,
    pub model: &'a Qwen3,
    pub kv: &'a Arc<KvCache>,
    pub device: &'a candle_core::Device,
    pub pipe: &'a mpi::topology::SimpleCommunicator,
    pub watchdog: &'a Watchdog,
    pub fault: Option<Fault>,
    pub spans: &'a SpanLog,
    /// Spans of each layer's parts (`--op-spans`).
    pub op_spans: bool,
    pub progress: &'a Progress,
}

impl PrefillPass<'_> {
    /// Every rank runs its stage with the KV sync thread trailing it; the first token comes
    /// from the last rank's logits; then the KV sync drains.
    pub fn run(
        &self,
        transport: Box<dyn KvTransport>,
        idle: SharedComm,
        hidden_buffers: &mut HiddenBuffers,
    ) -> Result<(Prefill, Box<dyn KvTransport>, SharedComm)> {
        let (env, plan, spans, watchdog) = (self.env, self.plan, self.spans, self.watchdog);
        let (rank, ranks) = (env.rank, env.size);
        let device_spans = DeviceSpans::start(self.device, spans)?;
        env.world.barrier();
        let t0 = Instant::now();
        let sync = KvSyncWorker::spawn(
            transport,
            rank,
            plan.schedule.clone(),
            watchdog.clone(),
            spans.clone(),
        )?;
        let ctx = StageContext {
            model: self.model,
            kv: self.kv,
            schedule: &plan.schedule,
            rank,
            prompt_ids: &plan.prompt_ids,
            pipe: self.pipe,
            sync: &sync,
            watchdog,
            abort: JobAbort { rank },
            fault: self.fault,
            spans,
            device_spans: &device_spans,
            op_spans: self.op_spans,
            progress: self.progress,
        };
        self.progress.start_phase();
        let poll = poll_interval(self.device.is_cuda(), plan.environment.transport.progress_poll);
        let progress = MpiProgress::start(idle, poll, self.device)?;
        let (logits, stage_times, outputs_finite) = run_stage(&ctx, hidden_buffers);
        self.progress.clear();
        let idle = progress.stop()?;

        // The first token from the last rank's logits.
        let mut sampler = Sampler::new(plan.sampling);
        let last_rank = SpanAt {
            peer: ranks as i32 - 1,
            ..SpanAt::NONE
        };
        let waited = Instant::now();
        let first_token_range = SpanRange::open(SpanKind::Wait, last_rank);
        let vocab = plan.files.config.vocab_size;
        let stages = first_token::StageHealth {
            outputs_finite,
            split: plan.schedule.split(),
        };
        // (an error here, such as NaN in a stage's output, is returned once the KV sync has
        // drained: its thread must not be left inside MPI)
        let shared =
            first_token::share_first_token(&env.world, logits, vocab, &mut sampler, watchdog, &stages);
        let ttft_s = t0.elapsed().as_secs_f64();
        spans.record(SpanKind::Wait, SpanThread::Compute, last_rank, waited);
        drop(first_token_range);

        // Every rank needs the whole cache before decoding (a pipelined decode has no KV sync:
        // its thread only stops, which is no wait for the sync and not recorded as one).
        let drain = Instant::now();
        let syncs = !plan.schedule.kv_sync_calls().is_empty();
        let drain_range = syncs.then(|| SpanRange::open(SpanKind::Wait, SpanAt::NONE));
        let (sync_stats, transport) = {
            let _wait = watchdog.waiting_for("the KV sync to finish");
            sync.finish()?
        };
        let exposed_sync_s = if syncs { drain.elapsed().as_secs_f64() } else { 0.0 };
        if syncs {
            spans.record(SpanKind::Wait, SpanThread::Compute, SpanAt::NONE, drain);
        }
        drop(drain_range);
        let (first, prefill_logits) = shared?;
        let prefill = Prefill {
            sampler,
            first,
            prefill_logits,
            ttft_s,
            prefill_s: t0.elapsed().as_secs_f64(),
            stage_times,
            sync_stats,
            exposed_sync_s,
        };
        Ok((prefill, transport, idle))
    }
}
