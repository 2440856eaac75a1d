//! `qwen3-mpi trace perfetto FILE -o out.json`: Chrome trace-event JSON (Perfetto's UI and
//! chrome://tracing open it): one process per rank, one track per thread; each span named with
//! its layer, chunk or peer, and a flow arrow from each hidden-state send to its receive.

use serde_json::{json, Value};

use super::read::TraceView;
use super::span_names::{kind_name, span_name};
use super::spans::{SpanKind, SpanThread};

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
                "ph": "X", "name": span_name(s.kind, &s.at()), "cat": kind_name(s.kind), "pid": rank, "tid": s.thread as u8,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_state_flows_name_the_sender_and_the_chunk() {
        assert_eq!(hidden_state_flow(1, 5), (1 << 32) | 5);
    }
}
