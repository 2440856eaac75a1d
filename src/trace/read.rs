//! Reading a trace file back: what the `trace` subcommands need.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hdf5::types::VarLenUnicode;

use super::spans::Span;

/// The parts of a trace file the tools show.
pub struct TraceView {
    pub path: PathBuf,
    pub status: String,
    pub world_size: u64,
    pub chunk_size: Option<u64>,
    pub sync: Option<String>,
    pub transport: Option<String>,
    pub ttft_s: Option<f64>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// Per rank (index = rank).
    pub exposed_sync_s: Vec<f64>,
    /// Per rank (index = rank).
    pub spans: Vec<Vec<Span>>,
}

impl TraceView {
    pub fn open(path: &Path) -> Result<Self> {
        let file = hdf5::File::open(path)
            .map_err(|e| anyhow::anyhow!("{}: not a readable HDF5 trace ({e})", path.display()))?;
        let text = |name: &str| -> Option<String> {
            file.attr(name)
                .ok()?
                .read_scalar::<VarLenUnicode>()
                .ok()
                .map(|v| v.to_string())
        };
        let int = |name: &str| -> Option<u64> { file.attr(name).ok()?.read_scalar::<u64>().ok() };
        let summary = file.group("summary").ok();
        let figure =
            |name: &str| -> Option<f64> { summary.as_ref()?.attr(name).ok()?.read_scalar::<f64>().ok() };
        let world_size = int("world_size").unwrap_or(0);
        let spans = (0..world_size)
            .map(|rank| {
                file.dataset(&format!("ranks/{rank}/events"))
                    .and_then(|d| d.read_raw::<Span>())
                    .unwrap_or_default()
            })
            .collect();
        Ok(Self {
            path: path.to_owned(),
            status: text("status").with_context(|| format!("{}: no `status` attribute", path.display()))?,
            world_size,
            chunk_size: int("chunk_size"),
            sync: text("sync_strategy"),
            transport: text("transport"),
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
