//! Decode on every rank with no communication; rank 0 streams the text as it comes.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;

use super::fault::{Fault, Phase};
use super::plan::JobPlan;
use super::progress::Progress;
use crate::generate::decode::DecodeOutcome;
use crate::generate::{decode, Sampler};
use crate::model::{KvCache, Qwen3};
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
    pub spans: &'a SpanLog,
    pub progress: &'a Progress,
}

impl DecodeStream<'_> {
    /// Decodes from `first` (the prefill's token) up to `--max-new-tokens` (the cache's
    /// capacity past the prompt); each step after the first is a `DecodeStep` span. Rank 0
    /// (which holds the tokenizer) writes each piece of text to stdout as it is decoded, and a
    /// line break at the end; before the built-in model's text, a line saying that it is
    /// meaningless.
    pub fn run(&self, first: u32, sampler: &mut Sampler) -> Result<DecodeOutcome> {
        let Self {
            plan,
            rank,
            model,
            kv,
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
        progress.start_phase();
        let outcome = decode(
            model,
            kv,
            first,
            plan.prompt_ids.len(),
            total,
            sampler,
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
                progress.decode(decoded, total);
                if let Some(piece) = stream.as_mut().map(|s| s.step(id)).transpose()?.flatten() {
                    stdout.write_all(piece.as_bytes())?;
                    stdout.flush()?;
                }
                Ok(())
            },
        )?;
        progress.clear();
        if rank == 0 {
            let _ = writeln!(stdout);
        }
        Ok(outcome)
    }
}
