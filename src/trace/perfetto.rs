//! `qwen3-mpi trace perfetto FILE -o out.json`: Chrome trace-event JSON (Perfetto's UI and
//! chrome://tracing open it): one process per rank, one track per thread.

use serde_json::{json, Value};

use super::read::TraceView;
use super::spans::{SpanKind, SpanThread};

fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Embed => "embed",
        SpanKind::LayerCompute => "layer",
        SpanKind::KvSync => "kv-sync",
        SpanKind::Send => "send",
        SpanKind::Recv => "recv",
        SpanKind::Wait => "wait",
        SpanKind::LmHead => "lm-head",
        SpanKind::DecodeStep => "decode",
        SpanKind::WeightLoad => "weight-load",
        SpanKind::Gemm => "gemm",
        SpanKind::Attention => "attention",
        SpanKind::Elementwise => "elementwise",
    }
}

fn thread_name(thread: SpanThread) -> &'static str {
    match thread {
        SpanThread::Compute => "compute",
        SpanThread::KvSync => "kv-sync",
        SpanThread::WeightLoad => "weight-load",
        SpanThread::GpuStream => "gpu-stream",
    }
}

pub fn perfetto_json(trace: &TraceView) -> Value {
    let mut events = Vec::new();
    for (rank, spans) in trace.spans.iter().enumerate() {
        events.push(
            json!({"ph": "M", "name": "process_name", "pid": rank, "args": {"name": format!("rank {rank}")}}),
        );
        for thread in SpanThread::ALL {
            events.push(
                json!({"ph": "M", "name": "thread_name", "pid": rank, "tid": thread as u8,
                "args": {"name": thread_name(thread)}}),
            );
        }
        for s in spans {
            let name = match s.kind {
                SpanKind::LayerCompute => format!("layer {} chunk {}", s.layer, s.chunk),
                kind => kind_name(kind).to_owned(),
            };
            events.push(json!({
                "ph": "X", "name": name, "cat": kind_name(s.kind), "pid": rank, "tid": s.thread as u8,
                "ts": s.t_start_ns as f64 / 1e3, "dur": (s.t_end_ns - s.t_start_ns) as f64 / 1e3,
                "args": {"layer": s.layer, "chunk": s.chunk, "step": s.step, "peer": s.peer, "bytes": s.bytes},
            }));
        }
    }
    json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}
