//! `qwen3-mpi trace summary FILE...`: one row per trace file, as a fixed-width table or as CSV
//! (`--csv`, one header line, for spreadsheets and pandas).

use std::fmt::Write as _;

use super::read::TraceView;

/// How a trace fills one column (empty where the file has no value).
type Cell = fn(&TraceView) -> String;

/// The columns, in order: header and cell.
const COLUMNS: [(&str, Cell); 14] = [
    ("file", file_name),
    ("status", |t| {
        if t.status == "ok" {
            "ok".into()
        } else {
            "failed".into()
        }
    }),
    ("model", |t| t.model.clone().unwrap_or_default()),
    ("ranks", |t| t.world_size.to_string()),
    ("prompt_tokens", |t| or_empty(t.prompt_tokens)),
    ("chunk_size", |t| or_empty(t.chunk_size)),
    ("chunks", |t| or_empty(t.chunks)),
    ("sync", |t| t.sync.clone().unwrap_or_default()),
    ("transport", |t| t.transport.clone().unwrap_or_default()),
    ("decode_mode", |t| t.decode_mode.clone().unwrap_or_default()),
    ("ttft_s", |t| or_empty(t.ttft_s.map(|v| format!("{v:.4}")))),
    ("prefill_tokens_per_s", |t| {
        or_empty(t.prefill_tokens_per_s.map(|v| format!("{v:.1}")))
    }),
    ("decode_tokens_per_s", |t| {
        or_empty(t.decode_tokens_per_s.map(|v| format!("{v:.1}")))
    }),
    ("max_exposed_sync_ms", |t| {
        or_empty(max_exposed_s(t).map(|v| format!("{:.3}", v * 1e3)))
    }),
];

fn or_empty<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn file_name(t: &TraceView) -> String {
    t.path
        .file_name()
        .map_or_else(|| t.path.display().to_string(), |n| n.to_string_lossy().into())
}

/// The slowest rank's exposed KV sync.
fn max_exposed_s(t: &TraceView) -> Option<f64> {
    t.exposed_sync_s
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
}

/// A table, one row per file, each column as wide as its widest cell ("-" where empty).
pub fn summary_table(traces: &[TraceView]) -> String {
    let cells: Vec<Vec<String>> = traces
        .iter()
        .map(|t| {
            COLUMNS
                .iter()
                .map(|(_, cell)| {
                    Some(cell(t))
                        .filter(|c| !c.is_empty())
                        .unwrap_or_else(|| "-".into())
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (head, _))| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .fold(head.len(), usize::max)
        })
        .collect();
    let mut out = String::new();
    let line = |row: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(COLUMNS.iter().map(|(head, _)| *head).collect(), &mut out);
    for row in &cells {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The same rows as CSV: a header line, then one line per file (fields quoted where needed).
pub fn summary_csv(traces: &[TraceView]) -> String {
    let mut out = String::new();
    let heads: Vec<&str> = COLUMNS.iter().map(|(head, _)| *head).collect();
    let _ = writeln!(out, "{}", heads.join(","));
    for t in traces {
        let row: Vec<String> = COLUMNS.iter().map(|(_, cell)| csv_field(&cell(t))).collect();
        let _ = writeln!(out, "{}", row.join(","));
    }
    out
}

/// `text` as one CSV field: quoted, with quotes doubled, where it holds a comma, quote or line
/// break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("tiny (built-in)"), "tiny (built-in)");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    }
}
