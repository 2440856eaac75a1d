//! Decode, redundant (every rank alone, no communication) or pipelined (through the ranks'
//! layer ranges); rank 0 streams the text as it comes.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use mpi::topology::SimpleCommunicator;

use super::decode_pipeline::{DecodeTimes, PipelinedDecode};
use super::fault::{Fault, Phase};
use super::plan::JobPlan;
use super::progress::Progress;
use crate::abort::watchdog::Watchdog;
use crate::generate::decode::DecodeOutcome;
use crate::generate::{decode, Sampler};
use crate::model::{KvCache, Qwen3};
use crate::schedule::DecodeMode;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};

/// Printed before the built-in model's text, which its random weights make meaningless.
pub const TINY_NOTICE: &str = "[the built-in tiny model has random weights: the text below is meaningless; \
     --model DIR runs a real Qwen3 checkpoint]";

/// One rank's decode, and on rank 0 the text as it comes.
pub struct DecodeStream<'a> {
    pub plan: &'a JobPlan,
    pub rank: usize,
    pub model: &'a Qwen3,
    pub kv: &'a KvCache,
    pub mode: DecodeMode,
    /// The pipelined decode's communicator.
    pub comm: &'a SimpleCommunicator,
    pub watchdog: &'a Watchdog,
    pub spans: &'a SpanLog,
    pub progress: &'a Progress,
}

impl DecodeStream<'_> {
    /// Decodes from `first` (the prefill's token) up to `--max-new-tokens` (the cache's
    /// capacity past the prompt). Redundant: each step after the first is a `DecodeStep` span;
    /// pipelined: each step's compute, send, receive and wait are spans of their own. Rank 0
    /// (which holds the tokenizer) writes each piece of text to stdout as it is decoded, and a
    /// line break at the end; before the built-in model's text, a line saying that it is
    /// meaningless.
    pub fn run(&self, first: u32, sampler: &mut Sampler) -> Result<(DecodeOutcome, DecodeTimes)> {
        let Self {
            plan,
            rank,
            model,
            kv,
            mode,
            comm,
            watchdog,
            spans,
            progress,
        } = *self;
        let fault = plan.environment.fault;
        let mut stream = plan.tokenizer.as_ref().map(|t| t.stream());
        let mut stdout = std::io::stdout();
        if stream.is_some() && plan.source.is_builtin() {
            let _ = writeln!(stdout, "{TINY_NOTICE}");
        }
        let eos = plan.files.eos_token_ids();
        let mut decoded = 0;
        let mut step_started = Instant::now();
        let total = plan.capacity - plan.prompt_ids.len();
        let mut times = DecodeTimes::default();
        let redundant = mode == DecodeMode::Redundant;
        let mut on_token = |id| -> Result<()> {
            Fault::check(fault.as_ref(), rank, Phase::Decode, decoded)?;
            if decoded > 0 && redundant {
                let at = SpanAt {
                    step: decoded as i32,
                    ..SpanAt::NONE
                };
                times.compute_s += step_started.elapsed().as_secs_f64();
                spans.record(SpanKind::DecodeStep, SpanThread::Compute, at, step_started);
            }
            decoded += 1;
            progress.decode(decoded, total);
            if let Some(piece) = stream.as_mut().map(|s| s.step(id)).transpose()?.flatten() {
                stdout.write_all(piece.as_bytes())?;
                stdout.flush()?;
            }
            step_started = Instant::now();
            Ok(())
        };
        progress.start_phase();
        let prompt_len = plan.prompt_ids.len();
        let mut pipelined = DecodeTimes::default();
        let outcome = match mode {
            DecodeMode::Redundant => {
                decode(model, kv, first, prompt_len, total, sampler, &eos, &mut on_token)?
            }
            DecodeMode::Pipeline => PipelinedDecode {
                model,
                kv,
                split: plan.schedule.split(),
                rank,
                comm,
                watchdog,
                spans,
            }
            .run(
                first,
                prompt_len,
                total,
                sampler,
                &eos,
                &mut on_token,
                &mut pipelined,
            )?,
        };
        progress.clear();
        if rank == 0 {
            let _ = writeln!(std::io::stdout());
        }
        Ok((outcome, if redundant { times } else { pipelined }))
    }
}
