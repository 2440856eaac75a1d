//! The rows `bench-attention` measures, as printed and as `--json` writes them
//! (`scripts/bench/torch_attention.py` prints the same columns).

use std::fmt::Write as _;

/// One (backend, chunk shape) measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttentionRow {
    pub backend: String,
    /// Queries of the chunk (L).
    pub len: usize,
    /// Keys attended (the chunk ends at this position; it starts at `end - len`).
    pub end: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub dtype: String,
    /// `ok`, `FAILED: why` (wrong result or an error) or `unavailable: why`.
    pub status: String,
    pub iters: usize,
    pub median_ms: Option<f64>,
    pub min_ms: Option<f64>,
    /// Causal FLOPs over the median time.
    pub tflops: Option<f64>,
    /// ‖out − ref‖ / ‖ref‖ against the f32 reference, on the rows checked.
    pub rel_err: Option<f64>,
    /// cuDNN only: building this shape's graph.
    pub build_ms: Option<f64>,
}

impl AttentionRow {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    pub fn failed(&self) -> bool {
        self.status.starts_with("FAILED")
    }
}

/// Causal FLOPs of a chunk: two matmuls of 2·D FLOPs per (head, query, visible key); query i
/// of the chunk sees `end - len + i + 1` keys.
pub fn causal_flops(len: usize, end: usize, heads: usize, head_dim: usize) -> f64 {
    let start = (end - len) as f64;
    let len = len as f64;
    let visible = len * start + len * (len + 1.0) / 2.0;
    4.0 * heads as f64 * head_dim as f64 * visible
}

/// Median and minimum of per-call times (seconds), in ms.
pub fn median_min_ms(times: &[f64]) -> (Option<f64>, Option<f64>) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted.get(sorted.len() / 2).map(|t| t * 1e3),
        sorted.first().map(|t| t * 1e3),
    )
}

/// The table `bench-attention` prints (`torch_attention.py` prints the same columns).
pub fn format_rows(rows: &[AttentionRow]) -> String {
    let mut out = format!(
        "{:<14} {:>5} {:>8} {:>6} {:>6} {:>10} {:>10} {:>8} {:>10} {:>10}  status\n",
        "backend", "L", "end", "heads", "dtype", "median ms", "min ms", "TFLOP/s", "rel err", "build ms"
    );
    let num = |v: Option<f64>, width: usize, precision: usize| match v {
        Some(v) => format!("{v:>width$.precision$}"),
        None => format!("{:>width$}", "-"),
    };
    for r in rows {
        let rel_err = match r.rel_err {
            Some(e) => format!("{e:>10.2e}"),
            None => format!("{:>10}", "-"),
        };
        let _ = writeln!(
            out,
            "{:<14} {:>5} {:>8} {:>6} {:>6} {} {} {} {} {}  {}",
            r.backend,
            r.len,
            r.end,
            format!("{}/{}", r.heads, r.kv_heads),
            r.dtype,
            num(r.median_ms, 10, 3),
            num(r.min_ms, 10, 3),
            num(r.tflops, 8, 1),
            rel_err,
            num(r.build_ms, 10, 1),
            r.status
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_flops_count_visible_keys() {
        // one head of size 1: a full causal square of 4 queries sees 1+2+3+4 keys
        assert_eq!(causal_flops(4, 4, 1, 1), 4.0 * 10.0);
        // the same 4 queries after 6 cached positions see 7+8+9+10 keys
        assert_eq!(causal_flops(4, 10, 1, 1), 4.0 * 34.0);
    }

    #[test]
    fn rows_line_up_under_the_header() {
        let row = AttentionRow {
            backend: "cudnn".into(),
            len: 1024,
            end: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            dtype: "bf16".into(),
            status: "ok".into(),
            iters: 20,
            median_ms: Some(0.25),
            min_ms: Some(0.2),
            tflops: Some(240.0),
            rel_err: Some(3e-3),
            build_ms: None,
        };
        let table = format_rows(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0].find("status"), lines[1].find("ok"));
        assert_eq!(
            lines[0].find("TFLOP/s").map(|i| i + 7),
            lines[1].find("240.0").map(|i| i + 5)
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_min_ms(&[0.5, 0.125, 0.25]), (Some(250.0), Some(125.0)));
        assert_eq!(median_min_ms(&[]), (None, None));
    }
}
