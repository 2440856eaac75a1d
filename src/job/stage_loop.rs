//! One rank's prefill: its program from the schedule, op by op. Hidden states arrive by
//! receives posted before the first step and leave by non-blocking sends; each computed layer's
//! K/V goes to the KV sync thread.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use mpi::request::{LocalScope, Request};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::failure::JobAbort;
use super::fault::{Fault, Phase};
use super::hidden_buffers::{GpuRows, HiddenBuffers};
use super::layer_spans::LayerPartSpans;
use super::progress::Progress;
use crate::abort::watchdog::Watchdog;
use crate::model::layer_probe::LayerProbe;
use crate::model::{KvCache, Qwen3};
use crate::schedule::{Schedule, StageOp};
use crate::sync::ready::BlockReady;
use crate::sync::KvSyncWorker;
use crate::trace::device_spans::DeviceSpans;
use crate::trace::nvtx::SpanRange;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};
use crate::transport::hidden_out::{HostBuffer, StagedHidden};
use crate::transport::host_bytes::tensor_from_bytes;
use crate::transport::mpi_raw::RawRequest;

/// Where one rank's prefill time went.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimes {
    pub compute_s: f64,
    /// Waiting for hidden states from the previous rank.
    pub recv_wait_s: f64,
    /// Waiting at the end for hidden-state sends to complete.
    pub send_wait_s: f64,
}

pub struct StageContext<'a> {
    pub model: &'a Qwen3,
    pub kv: &'a KvCache,
    pub schedule: &'a Schedule,
    pub rank: usize,
    pub prompt_ids: &'a [u32],
    /// Communicator for hidden states (used by this thread only).
    pub pipe: &'a SimpleCommunicator,
    pub sync: &'a KvSyncWorker,
    pub watchdog: &'a Watchdog,
    pub abort: JobAbort,
    pub fault: Option<Fault>,
    pub spans: &'a SpanLog,
    /// Times compute spans on the GPU's clock (events) where there is one.
    pub device_spans: &'a DeviceSpans,
    /// Spans of each layer's parts too (`--op-spans`).
    pub op_spans: bool,
    /// Rank 0's progress line.
    pub progress: &'a Progress,
}

/// Runs this rank's prefill. Returns the last prompt position's logits on the last rank.
/// An error here ends the job (pending MPI requests cannot be abandoned).
/// Runs this rank's part of the prefill. → the logits (on the last rank), the stage's times,
/// and whether every hidden state it output was finite.
pub fn run_stage(ctx: &StageContext, buffers: &mut HiddenBuffers) -> (Option<Tensor>, StageTimes, bool) {
    let HiddenBuffers {
        outgoing,
        incoming,
        gpu,
    } = buffers;
    let gpu = gpu.as_ref();
    mpi::request::scope(|scope| {
        let mut loop_state = LoopState {
            hidden: None,
            health: None,
            logits: None,
            times: StageTimes::default(),
            out_buffers: outgoing.iter_mut().map(Some).collect(),
            staged: VecDeque::new(),
            sends: Vec::new(),
            gpu,
            data_sends: Vec::new(),
            data_recvs: Vec::new(),
        };
        let mut recvs: Vec<Option<Request<'_, [u8], &LocalScope<'_>>>> = Vec::new();
        if ctx.rank > 0 {
            let prev = ctx.pipe.process_at_rank(ctx.rank as i32 - 1);
            for (index, buffer) in incoming.iter_mut().enumerate() {
                recvs.push(Some(prev.immediate_receive_into_with_tag(
                    scope,
                    buffer.as_mut_slice(),
                    index as i32,
                )));
            }
            // the device path: each chunk's bytes straight into its rows of this rank's buffer
            if let Some(GpuRows::Device(device)) = gpu {
                for chunk in ctx.schedule.chunks() {
                    match device.receive(chunk.start, chunk.len(), ctx.rank - 1, chunk.index) {
                        Ok(request) => loop_state.data_recvs.push(Some(request)),
                        Err(error) => ctx.abort.fail(&error),
                    }
                }
            }
        }
        let mut checked_step = None;
        for (step, op) in ctx.schedule.rank_program(ctx.rank) {
            if checked_step != Some(step) {
                checked_step = Some(step);
                if let Err(error) = Fault::check(ctx.fault.as_ref(), ctx.rank, Phase::Prefill, step) {
                    ctx.abort.fail(&error);
                }
            }
            tracing::debug!("prefill step {step}: {op:?}");
            let done = run_op(ctx, scope, &mut recvs, &mut loop_state, step, op)
                .and_then(|_| post_staged_sends(ctx, scope, &mut loop_state, false));
            if let Err(error) = done {
                ctx.abort.fail(&error);
            }
            report_progress(ctx, op);
        }
        let started = Instant::now();
        if let Err(error) = post_staged_sends(ctx, scope, &mut loop_state, true) {
            ctx.abort.fail(&error);
        }
        for (chunk, send) in loop_state.sends.drain(..) {
            let _wait = ctx.watchdog.waiting_for(format!(
                "send of chunk {chunk}'s hidden state to rank {}",
                ctx.rank + 1
            ));
            send.wait();
        }
        for (chunk, mut send) in loop_state.data_sends.drain(..) {
            let _wait = ctx.watchdog.waiting_for(format!(
                "send of chunk {chunk}'s hidden state (GPU memory) to rank {}",
                ctx.rank + 1
            ));
            if let Err(error) = send.wait() {
                ctx.abort.fail(&error);
            }
        }
        if loop_state.gpu.is_some() && ctx.rank > 0 {
            // this stage's reads of its GPU buffer are done before the next run's pushes into
            // it (which follow the world barrier at its start); rank 0 has no such buffer
            if let Err(error) = ctx.model.device().synchronize() {
                ctx.abort.fail(&error.into());
            }
        }
        loop_state.times.send_wait_s = started.elapsed().as_secs_f64();
        match ctx.device_spans.finish(ctx.spans) {
            Ok(Some(gpu_busy_s)) => loop_state.times.compute_s = gpu_busy_s,
            Ok(None) => {}
            Err(error) => ctx.abort.fail(&error),
        }
        let finite = loop_state
            .outputs_finite()
            .unwrap_or_else(|error| ctx.abort.fail(&error));
        (loop_state.logits, loop_state.times, finite)
    })
}

/// Rank 0 has passed a chunk once its last layer of it is computed.
fn report_progress(ctx: &StageContext, op: StageOp) {
    if let StageOp::ComputeLayer { layer, chunk } = op {
        if ctx.rank == 0 && layer + 1 == ctx.schedule.split().range(0).end {
            let chunks = ctx.schedule.chunks();
            let total = chunks.last().map_or(0, |c| c.end);
            ctx.progress.prefill(
                chunk.index + 1,
                chunks.len(),
                chunk.end,
                total,
                ctx.schedule.ranks(),
            );
        }
    }
}

struct LoopState<'a, 's> {
    hidden: Option<Tensor>,
    /// The sum of every hidden state this stage has output: NaN or ±Inf if any element was.
    /// Summed on the device as the chunks pass, read once at the end of the stage.
    health: Option<Tensor>,
    logits: Option<Tensor>,
    times: StageTimes,
    /// One host buffer per chunk, taken when the chunk's hidden state is staged.
    out_buffers: Vec<Option<&'a mut HostBuffer>>,
    /// Hidden states on their way to host memory: (chunk, destination rank, step, staging).
    staged: VecDeque<(usize, usize, usize, StagedHidden<'a>)>,
    sends: Vec<(usize, Request<'a, [u8], &'s LocalScope<'a>>)>,
    /// The IPC or device path's GPU buffers (the host buffers are then the 8-byte messages
    /// that announce each hidden state); `None`: the host path.
    gpu: Option<&'a GpuRows>,
    /// The device path: its sends of GPU memory (chunk, request) and this rank's receives
    /// (index = chunk).
    data_sends: Vec<(usize, RawRequest)>,
    data_recvs: Vec<Option<RawRequest>>,
}

impl LoopState<'_, '_> {
    /// Adds a stage output's sum to the stage's health sum: one reduction kernel a chunk, no wait.
    fn add_to_health(&mut self, hidden: &Tensor) -> Result<()> {
        let sum = hidden.sum_all()?.to_dtype(candle_core::DType::F32)?; // ()
        self.health = Some(match self.health.take() {
            Some(health) => (health + sum)?,
            None => sum,
        });
        Ok(())
    }

    /// Whether every hidden state this stage output was finite (waits for the device once).
    fn outputs_finite(&self) -> Result<bool> {
        match &self.health {
            Some(health) => Ok(health.to_scalar::<f32>()?.is_finite()),
            None => Ok(true),
        }
    }
}

/// Posts the sends of staged hidden states whose bytes have reached host memory, in chunk
/// order; with `wait`, all of them.
fn post_staged_sends<'a, 's>(
    ctx: &StageContext,
    scope: &'s LocalScope<'a>,
    state: &mut LoopState<'a, 's>,
    wait: bool,
) -> Result<()> {
    while let Some((chunk, _, _, staged)) = state.staged.front() {
        if !staged.is_ready()? {
            if !wait {
                return Ok(());
            }
            let _wait = ctx.watchdog.waiting_for(format!(
                "the copy of chunk {chunk}'s hidden state to host memory (the GPU)"
            ));
            staged.wait()?;
        }
        let Some((chunk, to, step, staged)) = state.staged.pop_front() else {
            return Ok(());
        };
        let started = Instant::now();
        let buffer: &'a HostBuffer = staged.buffer;
        let bytes = buffer.as_slice();
        let at = SpanAt {
            chunk: chunk as i32,
            step: step as i32,
            peer: to as i32,
            bytes: staged.payload_bytes as u64,
            ..SpanAt::NONE
        };
        let _range = SpanRange::open(SpanKind::Send, at);
        if let Some(GpuRows::Device(device)) = state.gpu {
            // the bytes from GPU memory first, then the message that announces them
            let positions = ctx.schedule.chunks()[chunk];
            let data = device.send(positions.start, positions.len(), to, chunk)?;
            state.data_sends.push((chunk, data));
        }
        let next = ctx.pipe.process_at_rank(to as i32);
        tracing::debug!("posting the send of chunk {chunk}'s hidden state to rank {to}");
        state
            .sends
            .push((chunk, next.immediate_send_with_tag(scope, bytes, chunk as i32)));
        ctx.spans.record(SpanKind::Send, SpanThread::Compute, at, started);
    }
    Ok(())
}

fn run_op<'a, 's>(
    ctx: &StageContext,
    scope: &'s LocalScope<'a>,
    recvs: &mut [Option<Request<'a, [u8], &'s LocalScope<'a>>>],
    state: &mut LoopState<'a, 's>,
    step: usize,
    op: StageOp,
) -> Result<()> {
    let model = ctx.model;
    let started = Instant::now();
    let record = |kind, at: SpanAt| ctx.spans.record(kind, SpanThread::Compute, at, started);
    let record_compute = |mark, kind, at: SpanAt| ctx.device_spans.end(mark, kind, at, ctx.spans);
    let at = |chunk: usize| SpanAt {
        chunk: chunk as i32,
        step: step as i32,
        ..SpanAt::NONE
    };
    let take_hidden = |state: &mut LoopState, what: &str| {
        state
            .hidden
            .take()
            .ok_or_else(|| anyhow::anyhow!("{what} has no input"))
    };
    match op {
        StageOp::Embed { chunk } => {
            let _range = SpanRange::open(SpanKind::Embed, at(chunk.index));
            let mark = ctx.device_spans.begin()?;
            state.hidden = Some(model.embed(&ctx.prompt_ids[chunk.positions()])?); // (L, hidden)
            state.times.compute_s += started.elapsed().as_secs_f64();
            record_compute(mark, SpanKind::Embed, at(chunk.index))?;
        }
        StageOp::RecvHidden { chunk, from } => {
            let peer = from as i32;
            let _range = SpanRange::open(
                SpanKind::Recv,
                SpanAt {
                    peer,
                    ..at(chunk.index)
                },
            );
            let request = recvs[chunk.index]
                .take()
                .ok_or_else(|| anyhow::anyhow!("chunk {} received twice", chunk.index))?;
            let bytes = {
                let what = format!(
                    "hidden state of chunk {} from rank {from} (step {step})",
                    chunk.index
                );
                let _wait = ctx.watchdog.waiting_for(what);
                // Posts this rank's own sends as soon as their copies have passed, rather than
                // after the input has come (the next stage would wait for both).
                let mut request = request;
                loop {
                    match request.test_with_data() {
                        Ok((_, bytes)) => break bytes,
                        Err(pending) => request = pending,
                    }
                    // an error must not drop the pending request (rsmpi panics): end the job here
                    if let Err(error) = post_staged_sends(ctx, scope, state, false) {
                        ctx.abort.fail(&error);
                    }
                    std::hint::spin_loop();
                }
            };
            if let Some(GpuRows::Device(_)) = state.gpu {
                // the message has come: the bytes are on their way into this rank's rows
                let mut data = state
                    .data_recvs
                    .get_mut(chunk.index)
                    .and_then(Option::take)
                    .ok_or_else(|| anyhow::anyhow!("chunk {}'s bytes received twice", chunk.index))?;
                let _wait = ctx.watchdog.waiting_for(format!(
                    "hidden state of chunk {} (GPU memory) from rank {from} (step {step})",
                    chunk.index
                ));
                // as above: an error ends the job here, with the request still pending
                loop {
                    match data.test() {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(error) => ctx.abort.fail(&error),
                    }
                    if let Err(error) = post_staged_sends(ctx, scope, state, false) {
                        ctx.abort.fail(&error);
                    }
                    std::hint::spin_loop();
                }
            }
            tracing::debug!("received chunk {}'s hidden state from rank {from}", chunk.index);
            state.times.recv_wait_s += started.elapsed().as_secs_f64();
            let shape = (chunk.len(), model.config().hidden_size);
            let payload = shape.0 * shape.1 * model.dtype().size_in_bytes();
            record(
                SpanKind::Recv,
                SpanAt {
                    peer: from as i32,
                    bytes: payload as u64,
                    ..at(chunk.index)
                },
            );
            if state.gpu.is_some() {
                let announced = <[u8; 8]>::try_from(bytes).ok().map(u64::from_le_bytes);
                if announced != Some(payload as u64) {
                    anyhow::bail!(
                        "rank {from} announced chunk {} as {announced:?} bytes, not {payload}",
                        chunk.index
                    );
                }
            }
            state.hidden = Some(match state.gpu {
                // the previous rank's copy into this rank's buffer passed before it sent this
                Some(GpuRows::Ipc(ipc)) => ipc.incoming(chunk.start, chunk.len())?,
                // MPI has written the rows (the receive above has finished)
                Some(GpuRows::Device(device)) => device.incoming(chunk.start, chunk.len())?,
                // From page-locked memory the copy to the GPU is asynchronous. The buffer is
                // next written by the following prefill run's receive, after this run's KV sync
                // has finished, which waits for the layers queued behind this copy.
                None => tensor_from_bytes(bytes, model.dtype(), shape, model.device())?,
            });
        }
        StageOp::ComputeLayer { layer, chunk } => {
            let at = SpanAt::layer_chunk(layer, chunk.index, step);
            let _range = SpanRange::open(SpanKind::LayerCompute, at);
            let mark = ctx.device_spans.begin()?;
            let hidden = take_hidden(state, &format!("layer {layer}"))?;
            let parts = LayerPartSpans::new(ctx.device_spans, ctx.spans, at);
            let probe = ctx.op_spans.then_some(&parts as &dyn LayerProbe);
            state.hidden = Some(model.forward_layer_probed(layer, &hidden, chunk.start, ctx.kv, probe)?);
            state.times.compute_s += started.elapsed().as_secs_f64();
            record_compute(mark, SpanKind::LayerCompute, at)?;
        }
        StageOp::KvSync { call } => ctx.sync.submit(call, BlockReady::mark(model.device())?)?,
        StageOp::SendHidden { chunk, to } => {
            // The copy to host memory is queued behind this chunk's kernels; the send is posted
            // once it has passed (post_staged_sends), while this thread queues the next chunk.
            let hidden = take_hidden(state, &format!("the send of chunk {}", chunk.index))?;
            state.add_to_health(&hidden)?;
            let buffer = state
                .out_buffers
                .get_mut(chunk.index)
                .and_then(Option::take)
                .ok_or_else(|| anyhow::anyhow!("chunk {} sent twice", chunk.index))?;
            // on a GPU the copy is timed on the GPU track (where a hop's time goes: the copy,
            // then the send posted once this thread sees it has passed)
            let mark = model
                .device()
                .is_cuda()
                .then(|| ctx.device_spans.begin())
                .transpose()?;
            let staged = match state.gpu {
                Some(GpuRows::Ipc(ipc)) => StagedHidden::push(&hidden, chunk.start, ipc, buffer)?,
                Some(GpuRows::Device(device)) => {
                    StagedHidden::stage_on_gpu(&hidden, chunk.start, device, buffer)?
                }
                None => StagedHidden::stage(&hidden, buffer)?,
            };
            if let Some(mark) = mark {
                let copy_at = SpanAt {
                    peer: to as i32,
                    bytes: staged.payload_bytes as u64,
                    ..at(chunk.index)
                };
                record_compute(mark, SpanKind::HiddenCopy, copy_at)?;
            }
            state.staged.push_back((chunk.index, to, step, staged));
        }
        StageOp::Logits { chunk } => {
            let _range = SpanRange::open(SpanKind::LmHead, at(chunk.index));
            let mark = ctx.device_spans.begin()?;
            let hidden = take_hidden(state, "the lm_head")?;
            state.add_to_health(&hidden)?;
            state.logits = Some(model.logits_last(&hidden)?);
            state.times.compute_s += started.elapsed().as_secs_f64();
            record_compute(mark, SpanKind::LmHead, at(chunk.index))?;
        }
    }
    Ok(())
}
