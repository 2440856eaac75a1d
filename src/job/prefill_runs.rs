//! Prefill, as many times as `--prefill-runs` asks: the KV transport is opened once (its
//! first-use costs paid before the clock starts), each run recomputes the same cache (warm
//! timings), the trace keeps the last run's spans, and the transport is closed at the end
//! (decode needs no KV sync). With pipelined decode there is no KV sync at all: no transport
//! is opened.

use std::sync::Arc;

use anyhow::anyhow;

use super::background_load::BackgroundLoad;
use super::failure::JobError;
use super::first_token;
use super::hidden_buffers::HiddenBuffers;
use super::plan::JobPlan;
use super::prefill_pass::{Prefill, PrefillPass, PREFILL_SPANS};
use super::progress::Progress;
use crate::abort::watchdog::Watchdog;
use crate::cli::RunArgs;
use crate::model::{KvCache, Qwen3};
use crate::schedule::DecodeMode;
use crate::sync::skipped::SkippedSync;
use crate::sync::{open_transport, warm_up, KvTransport};
use crate::trace::spans::SpanLog;
use crate::transport::{HiddenPath, MpiEnv, Transport, TransportPlan};

/// What the prefill runs leave: the last run, every run's TTFT, and the KV transport that ran
/// (none with pipelined decode).
pub struct PrefillRuns {
    pub last: Prefill,
    pub ttft_runs_s: Vec<f64>,
    pub transport: Option<Transport>,
    /// The path the hidden states took between stages.
    pub hidden: HiddenPath,
}

/// Everything the runs share.
pub struct PrefillSetup<'a> {
    pub args: &'a RunArgs,
    pub env: &'a MpiEnv,
    pub plan: &'a JobPlan,
    pub device: &'a candle_core::Device,
    pub kv: &'a Arc<KvCache>,
    pub transport: &'a TransportPlan,
    /// Pipelined decode: the prefill runs without KV sync.
    pub decode: DecodeMode,
    pub watchdog: &'a Watchdog,
    pub spans: &'a SpanLog,
    pub progress: &'a Progress,
}

impl PrefillSetup<'_> {
    /// Runs every prefill. The layers loading in the background (`rest`) are moved into
    /// `model` before a warm run, so warm runs time prefill alone.
    pub fn run(&self, model: &mut Qwen3, rest: &mut Option<BackgroundLoad>) -> Result<PrefillRuns, JobError> {
        let fail = JobError::Fatal;
        let (env, plan, kv) = (self.env, self.plan, self.kv);
        let (rank, ranks) = (env.rank, env.size);
        let pipe_comm = env.duplicate();
        let mut idle_comm = Some(env.duplicate()); // for the progress thread
        let mut hidden_buffers = HiddenBuffers::for_plan(
            &self.transport.hidden,
            &pipe_comm.0,
            &plan.schedule,
            plan.files.config.hidden_size,
            model.dtype(),
            self.device,
        )
        .map_err(fail)?;
        let hidden = hidden_buffers.path();
        let (strategy, _) = self.args.sync.with_transport(self.args.transport);
        let longest = plan.schedule.chunks().iter().map(|c| c.len()).max().unwrap_or(0);
        let (mut kv_transport, transport): (Box<dyn KvTransport>, _) = match self.decode {
            DecodeMode::Redundant => {
                let (mut opened, transport) =
                    open_transport(env, strategy, self.transport, kv.clone(), longest).map_err(fail)?;
                warm_up(opened.as_mut(), ranks, longest.min(plan.capacity / ranks)).map_err(fail)?;
                (opened, Some(transport))
            }
            DecodeMode::Pipeline => (Box::new(SkippedSync), None),
        };
        let runs = self.args.prefill_runs.max(1) as usize;
        let mut ttft_runs_s = Vec::with_capacity(runs);
        let mut last = None;
        for run in 0..runs {
            if run > 0 {
                self.spans.forget(&PREFILL_SPANS);
            }
            let pass = PrefillPass {
                env,
                plan,
                model,
                kv,
                device: self.device,
                pipe: &pipe_comm.0,
                watchdog: self.watchdog,
                fault: if run == 0 { plan.environment.fault } else { None },
                spans: self.spans,
                op_spans: self.args.op_spans,
                progress: self.progress,
            };
            let idle = idle_comm
                .take()
                .ok_or_else(|| fail(anyhow!("no progress communicator")))?;
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
                    rest.complete_into(model).map_err(fail)?;
                }
            }
            ttft_runs_s.push(prefill.ttft_s);
            last = Some(prefill);
        }
        kv_transport.close().map_err(fail)?;
        hidden_buffers.close().map_err(fail)?;
        let last = last.ok_or_else(|| fail(anyhow!("no prefill ran")))?;
        Ok(PrefillRuns {
            last,
            ttft_runs_s,
            transport,
            hidden,
        })
    }
}
