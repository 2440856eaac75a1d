//! `qwen3-mpi trace summary FILE...`: one row per trace file.

use std::fmt::Write as _;

use super::read::TraceView;

fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A fixed-width table, one row per file.
pub fn summary_table(traces: &[TraceView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:<8} {:>5} {:>6} {:<10} {:<9} {:>9} {:>12} {:>11} {:>12}",
        "file",
        "status",
        "ranks",
        "chunk",
        "sync",
        "transport",
        "TTFT s",
        "prefill t/s",
        "decode t/s",
        "exposed ms"
    );
    for t in traces {
        let name = t
            .path
            .file_name()
            .map_or_else(|| t.path.display().to_string(), |n| n.to_string_lossy().into());
        let exposed = t
            .exposed_sync_s
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let status = if t.status == "ok" { "ok" } else { "failed" };
        let _ = writeln!(
            out,
            "{:<32} {:<8} {:>5} {:>6} {:<10} {:<9} {:>9} {:>12} {:>11} {:>12}",
            name,
            status,
            t.world_size,
            or_dash(t.chunk_size),
            or_dash(t.sync.clone()),
            or_dash(t.transport.clone()),
            or_dash(t.ttft_s.map(|v| format!("{v:.4}"))),
            or_dash(t.prefill_tokens_per_s.map(|v| format!("{v:.1}"))),
            or_dash(t.decode_tokens_per_s.map(|v| format!("{v:.1}"))),
            or_dash(exposed.map(|v| format!("{:.3}", v * 1e3))),
        );
    }
    out
}
