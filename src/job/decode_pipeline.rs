//! Pipelined decode (`--decode pipeline`): each rank holds only its own layers and their K/V.
//! Every step runs the rank's program from the schedule (`decode_step_program`): rank 0 embeds
//! the token, each rank runs its layers and sends the hidden state (one row) to the next, the
//! last rank samples, and every rank takes the token from its broadcast. Every wait is
//! registered with the watchdog; each op is a span (compute, send, receive, wait).

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use candle_core::Tensor;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::abort::watchdog::Watchdog;
use crate::generate::decode::{token_loop, DecodeOutcome};
use crate::generate::Sampler;
use crate::model::{KvCache, Qwen3, StageDecoder, StageInput, StageOutput, StageParts};
use crate::schedule::{decode_step_program, DecodeMode, DecodeOp, LayerSplit};
use crate::trace::nvtx::SpanRange;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};
use crate::transport::host_bytes::{tensor_from_bytes, tensor_to_bytes};

/// Where one rank's decode time went, summed over the steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct DecodeTimes {
    /// This rank's computation (in redundant decode, the whole step).
    pub compute_s: f64,
    /// Sending hidden states to the next rank.
    pub send_s: f64,
    /// Waiting for hidden states from the previous rank.
    pub recv_s: f64,
    /// Waiting for each step's token from the last rank.
    pub wait_s: f64,
}

/// What one rank's pipelined decode runs on.
pub struct PipelinedDecode<'a> {
    pub model: &'a Qwen3,
    pub kv: &'a KvCache,
    pub split: &'a LayerSplit,
    pub rank: usize,
    /// The decode's own communicator (this thread only).
    pub comm: &'a SimpleCommunicator,
    pub watchdog: &'a Watchdog,
    pub spans: &'a SpanLog,
}

/// What a step carries from op to op.
struct StepState {
    /// The token to embed, until this rank's layers (which start from it) run.
    token_in: Option<u32>,
    hidden: Option<Tensor>,
    /// The logits, where this rank's layers end with the head.
    logits: Option<Tensor>,
    token: Option<u32>,
    /// When this step's current run of compute ops began, and its NVTX range.
    compute_started: Option<(Instant, SpanRange)>,
}

/// What a step reads and writes besides the program: this rank's stage step, the sampler,
/// the receive buffer, the decode's times.
struct StepIo<'s, 'm> {
    stage: &'s mut StageDecoder<'m>,
    sampler: &'s mut Sampler,
    incoming: &'s mut [u8],
    times: &'s mut DecodeTimes,
}

impl PipelinedDecode<'_> {
    /// As [`crate::generate::decode`]: from `first` (the prefill's token) until an EOS id or
    /// `max_new_tokens` tokens, `on_token` seeing each token on every rank. Only the last rank's
    /// `sampler` draws.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        first: u32,
        prompt_len: usize,
        max_new_tokens: usize,
        sampler: &mut Sampler,
        eos_token_ids: &[u32],
        on_token: impl FnMut(u32) -> Result<()>,
        times: &mut DecodeTimes,
    ) -> Result<DecodeOutcome> {
        let program = decode_step_program(self.split, self.rank, DecodeMode::Pipeline);
        // this rank's layers as one step (fused on a GPU), with the ends its program has
        let parts = StageParts {
            embed: program.iter().any(|op| matches!(op, DecodeOp::Embed)),
            head: program.iter().any(|op| matches!(op, DecodeOp::Sample)),
        };
        let mut stage = StageDecoder::new(self.model, self.kv, self.split.range(self.rank), parts)?;
        let row_bytes = self.model.config().hidden_size * self.model.dtype().size_in_bytes();
        let mut incoming = vec![0u8; row_bytes];
        token_loop(
            first,
            prompt_len,
            max_new_tokens,
            eos_token_ids,
            on_token,
            |token, position, step| {
                let io = StepIo {
                    stage: &mut stage,
                    sampler: &mut *sampler,
                    incoming: &mut incoming,
                    times: &mut *times,
                };
                self.step(&program, token, position, step, io)
            },
        )
    }

    /// One decode step: this rank's program for token `token` at `position`. → the next token.
    fn step(
        &self,
        program: &[DecodeOp],
        token: u32,
        position: usize,
        step: usize,
        io: StepIo,
    ) -> Result<u32> {
        let StepIo {
            stage,
            sampler,
            incoming,
            times,
        } = io;
        let model = self.model;
        let mut state = StepState {
            token_in: None,
            hidden: None,
            logits: None,
            token: None,
            compute_started: None,
        };
        // the hidden state an op takes: received, computed, or the pending token's embedding
        let take = |state: &mut StepState, what: &str| match (state.hidden.take(), state.token_in.take()) {
            (Some(hidden), _) => Ok(hidden),
            (None, Some(token)) => model.embed(&[token]), // (1, hidden)
            (None, None) => Err(anyhow!("decode step {step}: {what} has no input")),
        };
        for op in program {
            if op.is_compute() {
                state.compute_started.get_or_insert_with(|| {
                    (
                        Instant::now(),
                        SpanRange::open(SpanKind::DecodeStep, at(step, -1, 0)),
                    )
                });
            } else {
                self.end_compute(&mut state, step, times)?;
            }
            match op {
                // the stage's step embeds the token itself
                DecodeOp::Embed => state.token_in = Some(token),
                DecodeOp::RecvHidden { from } => {
                    state.hidden = Some(self.receive(*from, step, incoming, times)?);
                }
                DecodeOp::ComputeLayers { .. } => {
                    let output = match (state.token_in.take(), state.hidden.take()) {
                        (Some(token), _) => stage.step(StageInput::Token(token), position)?,
                        (None, Some(hidden)) => stage.step(StageInput::Hidden(&hidden), position)?,
                        (None, None) => return Err(anyhow!("decode step {step}: the layers have no input")),
                    };
                    match output {
                        StageOutput::Logits(logits) => state.logits = Some(logits), // (vocab)
                        StageOutput::Hidden(hidden) => state.hidden = Some(hidden), // (1, hidden)
                    }
                }
                DecodeOp::SendHidden { to } => {
                    let hidden = take(&mut state, "the send")?;
                    self.send(&hidden, *to, step, times)?;
                }
                DecodeOp::Sample => {
                    let logits = match state.logits.take() {
                        Some(logits) => logits,
                        None => model.logits_last(&take(&mut state, "the lm_head")?)?, // (vocab)
                    };
                    state.token = Some(sampler.next_token(&logits)?);
                }
                DecodeOp::ShareToken { root } => {
                    state.token = Some(self.share_token(*root, state.token, step, times)?);
                }
            }
        }
        self.end_compute(&mut state, step, times)?;
        state
            .token
            .ok_or_else(|| anyhow!("decode step {step}: no token (the program has no sample or share)"))
    }

    /// Ends a run of compute ops: waits for the device (so the span is the work, not its
    /// queueing), records it.
    fn end_compute(&self, state: &mut StepState, step: usize, times: &mut DecodeTimes) -> Result<()> {
        if let Some((started, _range)) = state.compute_started.take() {
            self.model.device().synchronize()?;
            times.compute_s += started.elapsed().as_secs_f64();
            self.spans.record(
                SpanKind::DecodeStep,
                SpanThread::Compute,
                at(step, -1, 0),
                started,
            );
        }
        Ok(())
    }

    fn receive(
        &self,
        from: usize,
        step: usize,
        buffer: &mut [u8],
        times: &mut DecodeTimes,
    ) -> Result<Tensor> {
        let started = Instant::now();
        let _range = SpanRange::open(SpanKind::DecodeRecv, at(step, from as i32, buffer.len() as u64));
        {
            let _wait = self
                .watchdog
                .waiting_for(format!("hidden state of decode step {step} from rank {from}"));
            self.comm.process_at_rank(from as i32).receive_into(buffer);
        }
        times.recv_s += started.elapsed().as_secs_f64();
        let bytes = buffer.len() as u64;
        self.spans.record(
            SpanKind::DecodeRecv,
            SpanThread::Compute,
            at(step, from as i32, bytes),
            started,
        );
        let shape = (1, self.model.config().hidden_size);
        tensor_from_bytes(buffer, self.model.dtype(), shape, self.model.device())
            .with_context(|| format!("decode step {step}: the hidden state from rank {from}"))
    }

    fn send(&self, hidden: &Tensor, to: usize, step: usize, times: &mut DecodeTimes) -> Result<()> {
        let started = Instant::now();
        let _range = SpanRange::open(SpanKind::DecodeSend, at(step, to as i32, 0));
        let bytes = tensor_to_bytes(hidden)?;
        {
            let _wait = self
                .watchdog
                .waiting_for(format!("send of decode step {step}'s hidden state to rank {to}"));
            self.comm.process_at_rank(to as i32).send(&bytes[..]);
        }
        times.send_s += started.elapsed().as_secs_f64();
        let at = at(step, to as i32, bytes.len() as u64);
        self.spans
            .record(SpanKind::DecodeSend, SpanThread::Compute, at, started);
        Ok(())
    }

    /// Collective: the token `root` sampled (`mine` there), on every rank.
    fn share_token(
        &self,
        root: usize,
        mine: Option<u32>,
        step: usize,
        times: &mut DecodeTimes,
    ) -> Result<u32> {
        if (root == self.rank) != mine.is_some() {
            return Err(anyhow!(
                "decode step {step}: rank {} {} a token before its broadcast from rank {root}",
                self.rank,
                if mine.is_some() { "sampled" } else { "has no" }
            ));
        }
        let started = Instant::now();
        let _range = SpanRange::open(SpanKind::DecodeWait, at(step, root as i32, 4));
        let mut token = mine.unwrap_or(0);
        {
            let _wait = self
                .watchdog
                .waiting_for(format!("the token of decode step {step} from rank {root}"));
            self.comm.process_at_rank(root as i32).broadcast_into(&mut token);
        }
        times.wait_s += started.elapsed().as_secs_f64();
        self.spans.record(
            SpanKind::DecodeWait,
            SpanThread::Compute,
            at(step, root as i32, 4),
            started,
        );
        Ok(token)
    }
}

fn at(step: usize, peer: i32, bytes: u64) -> SpanAt {
    SpanAt {
        step: i32::try_from(step).unwrap_or(i32::MAX),
        peer,
        bytes,
        ..SpanAt::NONE
    }
}
