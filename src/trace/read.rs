//! Reading a trace file back: what the `trace` subcommands need. Reads schema 2 and schema 1
//! (JSON strings for list attributes, events without a `rank` column).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hdf5::types::VarLenUnicode;

use super::file::{READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION};
use super::spans::{Span, SpanRow};
use crate::model::Qwen3Config;

/// The parts of a trace file the tools show.
pub struct TraceView {
    pub path: PathBuf,
    pub schema_version: u64,
    pub status: String,
    pub model: Option<String>,
    pub world_size: u64,
    pub prompt_tokens: Option<u64>,
    pub chunk_size: Option<u64>,
    pub chunks: Option<u64>,
    pub sync: Option<String>,
    pub transport: Option<String>,
    /// `redundant` or `pipeline` (traces before issue 18 have none).
    pub decode_mode: Option<String>,
    /// How hidden states went stage to stage (traces before issue 19 have none: `host`).
    pub hidden_transport: Option<String>,
    /// `bf16`, `f32`, …
    pub dtype: Option<String>,
    /// Rank 0's device: `cpu`, `Cuda { gpu_id: 0 }`, …
    pub device: Option<String>,
    /// The model's config as the job read it (`model_config`).
    pub model_config: Option<Qwen3Config>,
    /// Decoder layers per rank.
    pub layer_split: Vec<u64>,
    /// Tokens of each chunk, in order.
    pub chunk_lengths: Vec<u64>,
    pub ttft_s: Option<f64>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// Per rank (index = rank).
    pub exposed_sync_s: Vec<f64>,
    /// Per rank (index = rank).
    pub spans: Vec<Vec<Span>>,
}

impl TraceView {
    /// Opens and validates a trace: ours (a `schema_version` this build reads, a known
    /// `status`), and, when it says `ok`, holding every rank's events. Errors are one line
    /// naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let file = hdf5::File::open(path).map_err(|e| {
            let why = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            anyhow::anyhow!("{shown}: not a readable HDF5 file ({why})")
        })?;
        let text = |name: &str| -> Option<String> {
            file.attr(name)
                .ok()?
                .read_scalar::<VarLenUnicode>()
                .ok()
                .map(|v| v.to_string())
        };
        let int = |name: &str| -> Option<u64> { file.attr(name).ok()?.read_scalar::<u64>().ok() };
        // an array (schema 2) or a JSON string (schema 1)
        let ints = |name: &str| -> Vec<u64> {
            let Ok(attr) = file.attr(name) else {
                return Vec::new();
            };
            attr.read_raw::<u64>()
                .ok()
                .or_else(|| serde_json::from_str(attr.read_scalar::<VarLenUnicode>().ok()?.as_str()).ok())
                .unwrap_or_default()
        };
        let summary = file.group("summary").ok();
        let figure =
            |name: &str| -> Option<f64> { summary.as_ref()?.attr(name).ok()?.read_scalar::<f64>().ok() };
        let schema_version = match int("schema_version") {
            None => bail!("{shown}: no `schema_version`: not a qwen3-mpi trace"),
            Some(v) if !READABLE_SCHEMA_VERSIONS.iter().any(|&r| u64::from(r) == v) => {
                bail!("{shown}: schema_version {v}, but this qwen3-mpi reads versions 1 to {SCHEMA_VERSION}")
            }
            Some(v) => v,
        };
        let status = text("status").with_context(|| format!("{shown}: no `status` attribute"))?;
        if !matches!(status.as_str(), "ok" | "failed" | "running") {
            bail!("{shown}: unknown status `{status}` (a trace is ok, failed or running)");
        }
        let world_size = int("world_size").unwrap_or(0);
        if status == "ok" && world_size == 0 {
            bail!("{shown}: status ok but no `world_size`");
        }
        let mut spans = Vec::new();
        for rank in 0..world_size {
            match read_events(&file, rank, schema_version) {
                Ok(events) => spans.push(events),
                // a failed job's file holds rank 0's spans only
                Err(_) if status != "ok" => spans.push(Vec::new()),
                Err(_) => {
                    bail!("{shown}: status ok but rank {rank}'s events (/ranks/{rank}/events) are missing")
                }
            }
        }
        let chunk_size = int("chunk_size");
        let prompt_tokens = int("prompt_tokens");
        let chunks = int("chunks").or_else(|| Some(prompt_tokens?.div_ceil(chunk_size.filter(|&c| c > 0)?)));
        Ok(Self {
            path: path.to_owned(),
            schema_version,
            status,
            model: text("model"),
            world_size,
            prompt_tokens,
            chunk_size,
            chunks,
            sync: text("sync_strategy"),
            transport: text("transport"),
            decode_mode: text("decode_mode"),
            hidden_transport: text("hidden_transport"),
            dtype: text("dtype"),
            device: text("device"),
            model_config: text("model_config").and_then(|json| serde_json::from_str(&json).ok()),
            layer_split: ints("layer_split"),
            chunk_lengths: ints("chunk_lengths"),
            ttft_s: figure("ttft_s"),
            prefill_tokens_per_s: figure("prefill_tokens_per_s"),
            decode_tokens_per_s: figure("decode_tokens_per_s"),
            exposed_sync_s: file
                .dataset("summary/exposed_sync_s")
                .and_then(|d| d.read_raw::<f64>())
                .unwrap_or_default(),
            spans,
        })
    }
}

/// Rank `rank`'s events: rows with a `rank` column from schema 2, bare spans from schema 1.
fn read_events(file: &hdf5::File, rank: u64, schema_version: u64) -> hdf5::Result<Vec<Span>> {
    let events = file.dataset(&format!("ranks/{rank}/events"))?;
    match schema_version {
        1 => events.read_raw::<Span>(),
        _ => Ok(events.read_raw::<SpanRow>()?.iter().map(SpanRow::span).collect()),
    }
}
