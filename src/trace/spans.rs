//! Timed spans of what each rank did: recorded into a preallocated in-memory log (no I/O on the
//! hot path), gathered to rank 0 at the end, written as one compound table per rank.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a span measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, hdf5::H5Type)]
#[repr(u8)]
pub enum SpanKind {
    Embed = 0,
    LayerCompute = 1,
    KvSync = 2,
    Send = 3,
    Recv = 4,
    Wait = 5,
    LmHead = 6,
    /// This rank's compute of one decode step: every layer (redundant decode), or its own
    /// layers with the embedding or the head and sampler (pipelined decode).
    DecodeStep = 7,
    WeightLoad = 8,
    /// Inside a layer (`--op-spans`, GPU track): matrix products.
    Gemm = 9,
    /// Inside a layer (`--op-spans`, GPU track): the attention kernel.
    Attention = 10,
    /// Inside a layer (`--op-spans`, GPU track): norms, RoPE, cache write, SwiGLU, residual adds.
    Elementwise = 11,
    /// Inside a layer (`--op-spans`, any device): a Qwen3-MoE layer's sparse block.
    Moe = 12,
    /// Pipelined decode: this rank's hidden state of one step to the next rank.
    DecodeSend = 13,
    /// Pipelined decode: waiting for one step's hidden state from the previous rank.
    DecodeRecv = 14,
    /// Pipelined decode: waiting for one step's token from the last rank (its broadcast).
    DecodeWait = 15,
    /// Setup: loading the GPU kernel modules (candle's PTX compiled by the driver, ours as
    /// machine code), beside this rank's weight load.
    KernelLoad = 16,
    /// A GPU's copy of one chunk's hidden state on its way to the next rank (GPU track): to
    /// page-locked host memory (`host`), into the next rank's GPU memory (`ipc`), or into this
    /// rank's outgoing GPU buffer (`device`). Its `Send` is posted once it has passed.
    HiddenCopy = 17,
}

impl SpanKind {
    /// Whether the span is a part of a layer's span (so its time is already in the layer's).
    pub fn is_layer_part(self) -> bool {
        matches!(self, Self::Gemm | Self::Attention | Self::Elementwise | Self::Moe)
    }
}

/// Which thread recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, hdf5::H5Type)]
#[repr(u8)]
pub enum SpanThread {
    Compute = 0,
    KvSync = 1,
    WeightLoad = 2,
    /// GPU work of the compute thread, timed by CUDA events on its stream.
    GpuStream = 3,
}

impl SpanThread {
    pub const ALL: [SpanThread; 4] = [Self::Compute, Self::KvSync, Self::WeightLoad, Self::GpuStream];
}

/// One span; -1 where a field does not apply. Times in ns since the job's common origin (taken
/// right after a barrier, so ranks agree to within the barrier's exit skew).
#[derive(Debug, Clone, Copy, PartialEq, hdf5::H5Type)]
#[repr(C)]
pub struct Span {
    pub kind: SpanKind,
    pub thread: SpanThread,
    pub layer: i32,
    pub chunk: i32,
    pub step: i32,
    pub peer: i32,
    pub bytes: u64,
    pub t_start_ns: i64,
    pub t_end_ns: i64,
}

impl Span {
    /// Its layer, chunk, step, peer and bytes.
    pub fn at(&self) -> SpanAt {
        SpanAt {
            layer: self.layer,
            chunk: self.chunk,
            step: self.step,
            peer: self.peer,
            bytes: self.bytes,
        }
    }
}

/// One span as the trace file stores it (`/ranks/<r>/events`): the rank that recorded it, then
/// the span's fields (schema 2; schema 1 files have no `rank` column).
#[derive(Debug, Clone, Copy, PartialEq, hdf5::H5Type)]
#[repr(C)]
pub struct SpanRow {
    pub rank: i32,
    pub kind: SpanKind,
    pub thread: SpanThread,
    pub layer: i32,
    pub chunk: i32,
    pub step: i32,
    pub peer: i32,
    pub bytes: u64,
    pub t_start_ns: i64,
    pub t_end_ns: i64,
}

impl SpanRow {
    pub fn new(rank: usize, s: &Span) -> Self {
        Self {
            rank: i32::try_from(rank).unwrap_or(i32::MAX),
            kind: s.kind,
            thread: s.thread,
            layer: s.layer,
            chunk: s.chunk,
            step: s.step,
            peer: s.peer,
            bytes: s.bytes,
            t_start_ns: s.t_start_ns,
            t_end_ns: s.t_end_ns,
        }
    }

    pub fn span(&self) -> Span {
        Span {
            kind: self.kind,
            thread: self.thread,
            layer: self.layer,
            chunk: self.chunk,
            step: self.step,
            peer: self.peer,
            bytes: self.bytes,
            t_start_ns: self.t_start_ns,
            t_end_ns: self.t_end_ns,
        }
    }
}

/// Optional fields of a span.
#[derive(Debug, Clone, Copy)]
pub struct SpanAt {
    pub layer: i32,
    pub chunk: i32,
    pub step: i32,
    pub peer: i32,
    pub bytes: u64,
}

impl SpanAt {
    pub const NONE: SpanAt = SpanAt {
        layer: -1,
        chunk: -1,
        step: -1,
        peer: -1,
        bytes: 0,
    };
}

/// The spans of one rank, shared by its threads.
#[derive(Clone)]
pub struct SpanLog {
    origin: Instant,
    spans: Arc<Mutex<Vec<Span>>>,
}

fn as_i32(value: usize) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

impl SpanAt {
    pub fn layer_chunk(layer: usize, chunk: usize, step: usize) -> Self {
        Self {
            layer: as_i32(layer),
            chunk: as_i32(chunk),
            step: as_i32(step),
            ..Self::NONE
        }
    }
}

impl SpanLog {
    /// A log whose times count from `origin`, with room for `capacity` spans before it grows.
    pub fn new(origin: Instant, capacity: usize) -> Self {
        Self {
            origin,
            spans: Arc::new(Mutex::new(Vec::with_capacity(capacity))),
        }
    }

    /// `t` in ns on the job's clock.
    pub fn ns_at(&self, t: Instant) -> i64 {
        i64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(i64::MAX)
    }

    /// Adds a span timed elsewhere (on a GPU's clock, already on the job's clock).
    pub fn push(&self, span: Span) {
        if let Ok(mut spans) = self.spans.lock() {
            spans.push(span);
        }
    }

    /// Drops the spans of `kinds` recorded so far (those of a warm-up prefill).
    pub fn forget(&self, kinds: &[SpanKind]) {
        if let Ok(mut spans) = self.spans.lock() {
            spans.retain(|s| !kinds.contains(&s.kind));
        }
    }

    /// Records a span from `started` until now.
    pub fn record(&self, kind: SpanKind, thread: SpanThread, at: SpanAt, started: Instant) {
        let span = Span {
            kind,
            thread,
            layer: at.layer,
            chunk: at.chunk,
            step: at.step,
            peer: at.peer,
            bytes: at.bytes,
            t_start_ns: self.ns_at(started),
            t_end_ns: self.ns_at(Instant::now()),
        };
        if let Ok(mut spans) = self.spans.lock() {
            spans.push(span);
        }
    }

    /// Everything recorded so far, in order of recording.
    pub fn snapshot(&self) -> Vec<Span> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Spans as rows of nine i64 for gathering over MPI.
pub const SPAN_FIELDS: usize = 9;

pub fn span_to_row(s: &Span) -> [i64; SPAN_FIELDS] {
    [
        s.kind as i64,
        s.thread as i64,
        s.layer as i64,
        s.chunk as i64,
        s.step as i64,
        s.peer as i64,
        s.bytes as i64,
        s.t_start_ns,
        s.t_end_ns,
    ]
}

pub fn span_from_row(r: &[i64]) -> Option<Span> {
    use SpanKind::*;
    let kind = [
        Embed,
        LayerCompute,
        KvSync,
        Send,
        Recv,
        Wait,
        LmHead,
        DecodeStep,
        WeightLoad,
        Gemm,
        Attention,
        Elementwise,
        Moe,
        DecodeSend,
        DecodeRecv,
        DecodeWait,
        KernelLoad,
        HiddenCopy,
    ]
    .get(usize::try_from(r[0]).ok()?)
    .copied()?;
    let thread = SpanThread::ALL.get(usize::try_from(r[1]).ok()?).copied()?;
    Some(Span {
        kind,
        thread,
        layer: r[2] as i32,
        chunk: r[3] as i32,
        step: r[4] as i32,
        peer: r[5] as i32,
        bytes: r[6] as u64,
        t_start_ns: r[7],
        t_end_ns: r[8],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_round_trip_through_rows() {
        let log = SpanLog::new(Instant::now(), 4);
        log.record(
            SpanKind::KvSync,
            SpanThread::KvSync,
            SpanAt {
                bytes: 77,
                ..SpanAt::layer_chunk(3, 1, 4)
            },
            Instant::now(),
        );
        let span = log.snapshot()[0];
        assert_eq!(span_from_row(&span_to_row(&span)), Some(span));
        assert!(span.t_end_ns >= span.t_start_ns);
        assert_eq!(span_from_row(&[42, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
