//! `qwen3-mpi trace perfetto FILE -o out.json`: Chrome trace-event JSON (Perfetto's UI and
//! chrome://tracing open it): one process per rank, one track per thread; each span named with
//! its layer, chunk or peer, and a flow arrow from each hidden-state send to its receive.

use serde_json::{json, Value};

use super::read::TraceView;
use super::spans::{Span, SpanKind, SpanThread};

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
        SpanKind::Moe => "moe",
        SpanKind::DecodeSend => "decode-send",
        SpanKind::DecodeRecv => "decode-recv",
        SpanKind::DecodeWait => "decode-wait",
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
            let (ts, dur) = (
                s.t_start_ns as f64 / 1e3,
                (s.t_end_ns - s.t_start_ns) as f64 / 1e3,
            );
            events.push(json!({
                "ph": "X", "name": span_name(s), "cat": kind_name(s.kind), "pid": rank, "tid": s.thread as u8,
                "ts": ts, "dur": dur,
                "args": {"layer": s.layer, "chunk": s.chunk, "step": s.step, "peer": s.peer, "bytes": s.bytes},
            }));
            // a hidden state's flow: from the send that posts it to the receive that gets it
            let flow = match s.kind {
                SpanKind::Send => Some((hidden_state_flow(rank, s.chunk), "s", ts)),
                SpanKind::Recv if s.peer >= 0 => {
                    Some((hidden_state_flow(s.peer as usize, s.chunk), "f", ts + dur))
                }
                _ => None,
            };
            if let Some((id, phase, at)) = flow {
                events.push(json!({
                    "ph": phase, "bp": "e", "id": id, "name": "hidden state", "cat": "hidden-state",
                    "pid": rank, "tid": s.thread as u8, "ts": at,
                }));
            }
        }
    }
    json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

/// The flow id of chunk `chunk`'s hidden state leaving rank `from`.
fn hidden_state_flow(from: usize, chunk: i32) -> u64 {
    ((from as u64) << 32) | u64::from(chunk.max(0) as u32)
}

/// What the span did, with its layer, chunk and peer where they apply.
fn span_name(s: &Span) -> String {
    let of = |what: &str| match (s.layer, s.chunk) {
        (l, c) if l >= 0 && c >= 0 => format!("{what} layer {l} chunk {c}"),
        (_, c) if c >= 0 => format!("{what} chunk {c}"),
        _ if s.step >= 0 => format!("{what} step {}", s.step),
        _ => what.to_owned(),
    };
    match s.kind {
        SpanKind::Send => format!("send chunk {} to rank {}", s.chunk, s.peer),
        SpanKind::Recv => format!("recv chunk {} from rank {}", s.chunk, s.peer),
        SpanKind::Wait if s.peer >= 0 => format!("wait for the first token from rank {}", s.peer),
        SpanKind::Wait => "wait for the KV sync to finish".into(),
        SpanKind::LayerCompute => of("layer").replacen("layer layer", "layer", 1),
        SpanKind::DecodeSend => format!("send decode step {} to rank {}", s.step, s.peer),
        SpanKind::DecodeRecv => format!("recv decode step {} from rank {}", s.step, s.peer),
        SpanKind::DecodeWait => format!("wait for decode step {}'s token from rank {}", s.step, s.peer),
        kind => of(kind_name(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: SpanKind, layer: i32, chunk: i32, peer: i32) -> Span {
        Span {
            kind,
            thread: SpanThread::Compute,
            layer,
            chunk,
            step: 3,
            peer,
            bytes: 0,
            t_start_ns: 0,
            t_end_ns: 1,
        }
    }

    #[test]
    fn span_names_carry_layer_chunk_and_peer() {
        assert_eq!(
            span_name(&span(SpanKind::LayerCompute, 4, 2, -1)),
            "layer 4 chunk 2"
        );
        assert_eq!(
            span_name(&span(SpanKind::KvSync, 4, 2, -1)),
            "kv-sync layer 4 chunk 2"
        );
        assert_eq!(span_name(&span(SpanKind::KvSync, -1, -1, -1)), "kv-sync step 3");
        assert_eq!(
            span_name(&span(SpanKind::DecodeRecv, -1, -1, 1)),
            "recv decode step 3 from rank 1"
        );
        assert_eq!(
            span_name(&span(SpanKind::Send, -1, 2, 1)),
            "send chunk 2 to rank 1"
        );
        assert_eq!(
            span_name(&span(SpanKind::Recv, -1, 2, 0)),
            "recv chunk 2 from rank 0"
        );
        assert_eq!(
            span_name(&span(SpanKind::Wait, -1, -1, 2)),
            "wait for the first token from rank 2"
        );
        assert_eq!(hidden_state_flow(1, 5), (1 << 32) | 5);
    }
}
