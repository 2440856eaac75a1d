//! The end of a job: every rank's figures to every rank (small), every rank's spans and
//! placement to rank 0, and the report rank 0 prints and writes.

use anyhow::Result;
use mpi::traits::*;

use super::decode_mode::DecodePlan;
use super::decode_pipeline::DecodeTimes;
use super::gather;
use super::plan::JobPlan;
use super::prefill_runs::PrefillRuns;
use super::report::{JobReport, RankFigures};
use crate::abort::watchdog::Watchdog;
use crate::cli::RunArgs;
use crate::device::{device_hardware, device_name};
use crate::generate::DecodeOutcome;
use crate::model::{KvCache, Qwen3};
use crate::trace::spans::SpanLog;
use crate::transport::placement::gather_strings;
use crate::transport::MpiEnv;

/// What the report is made of, on every rank.
pub struct JobResults<'a> {
    pub args: &'a RunArgs,
    pub env: &'a MpiEnv,
    pub plan: &'a JobPlan,
    pub model: &'a Qwen3,
    pub kv: &'a KvCache,
    pub device: &'a candle_core::Device,
    pub decode: DecodePlan,
    pub prefill: PrefillRuns,
    pub decoded: DecodeOutcome,
    pub decode_times: DecodeTimes,
}

impl JobResults<'_> {
    /// Collective: the report (on rank 0 with every rank's spans; elsewhere without them).
    pub fn gather(self, watchdog: &Watchdog, spans: &SpanLog) -> Result<JobReport> {
        let Self {
            args,
            env,
            plan,
            model,
            kv,
            device,
            decode,
            prefill,
            decoded,
            decode_times,
        } = self;
        let ranks = env.size;
        let last = &prefill.last;
        let mine = RankFigures {
            rank: env.rank,
            kv_bytes_sent: last.sync_stats.bytes_sent,
            kv_bytes_received: last.sync_stats.bytes_received,
            exposed_sync_s: last.exposed_sync_s,
            sync: last.sync_stats,
            stage: last.stage_times,
            weight_bytes: model.resident_weight_bytes(),
            kv_cache_bytes: kv.bytes(),
            decode: decode_times,
        };
        let mut rows = vec![0f64; RankFigures::FIELDS * ranks];
        env.world.all_gather_into(&mine.to_row()[..], &mut rows[..]);
        let spans_per_rank = gather::spans_to_root(&env.world, &spans.snapshot(), watchdog)?;
        let hostnames = gather_strings(&env.world, &MpiEnv::hostname());
        let devices = gather_strings(&env.world, &device_hardware(device));
        let decode_s: f64 = decoded.step_seconds.iter().sum();
        let text = match &plan.tokenizer {
            Some(t) => t.decode(&decoded.generated)?,
            None => String::new(),
        };
        let prompt_tokens = plan.prompt_ids.len();
        let per_rank: Vec<RankFigures> = rows
            .chunks(RankFigures::FIELDS)
            .map(RankFigures::from_row)
            .collect();
        let compute_s: f64 = per_rank.iter().map(|r| r.stage.compute_s).sum();
        let pipeline_overlap = if last.ttft_s > 0.0 {
            compute_s / last.ttft_s
        } else {
            0.0
        };
        let pipeline_ideal = plan.schedule.ideal_speedup();
        Ok(JobReport {
            model: plan.source.describe(),
            random_weights: plan.source.is_builtin(),
            device: device_name(device),
            dtype: format!("{:?}", model.dtype()).to_lowercase(),
            ranks,
            layer_split: plan.schedule.split().counts(),
            decode_mode: decode.mode,
            decode_mode_reason: decode.reason,
            ranks_per_gpu: decode.ranks_per_gpu,
            sync: match prefill.transport {
                Some(_) => args.sync.name().into(),
                None => "none".into(),
            },
            transport: prefill.transport.map_or("none", |t| t.name()).into(),
            hidden_transport: prefill.hidden.name().into(),
            chunk_size: plan.chunk_size,
            chunks: plan.schedule.chunks().len(),
            chunking: args.chunking,
            chunk_lengths: plan.schedule.chunks().iter().map(|c| c.len()).collect(),
            chunk_choice: plan.chunk_reason.clone(),
            predicted_ttft_s: plan.predicted_prefill_s,
            prefill_attention: model.plan().prefill_name().into(),
            decode_path: model.plan().decode_name().into(),
            layer_kernels: model.plan().reason.clone(),
            prompt_tokens,
            new_tokens: decoded.generated.len(),
            text,
            ttft_s: last.ttft_s,
            prefill_s: last.prefill_s,
            prefill_tokens_per_s: prompt_tokens as f64 / last.prefill_s,
            decode_s,
            decode_tokens_per_s: if decode_s > 0.0 {
                decoded.step_seconds.len() as f64 / decode_s
            } else {
                0.0
            },
            decode_ms_per_token_median: median(&decoded.step_seconds) * 1e3,
            pipeline_overlap,
            pipeline_ideal,
            pipeline_efficiency: pipeline_overlap / pipeline_ideal,
            per_rank,
            prompt_ids: plan.prompt_ids.clone(),
            prefill_logits: prefill.last.prefill_logits,
            ttft_runs_s: prefill.ttft_runs_s,
            generated_ids: decoded.generated,
            spans_per_rank,
            hostnames,
            devices,
            start_time: plan.start_time.clone(),
        })
    }
}

/// The middle value (0 for none).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}
