//! What a job reports: the figures rank 0 prints (`summary.rs`) and puts in `--json` and the
//! trace.

use crate::schedule::{Chunking, DecodeMode};
use crate::sync::SyncStats;

use super::decode_pipeline::DecodeTimes;
use super::stage_loop::StageTimes;

/// One rank's figures, gathered to rank 0.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RankFigures {
    pub rank: usize,
    pub kv_bytes_sent: u64,
    pub kv_bytes_received: u64,
    /// Time compute waited at the end of prefill for the KV sync to finish.
    pub exposed_sync_s: f64,
    pub sync: SyncStats,
    pub stage: StageTimes,
    /// Bytes of the weights this rank held at the end, summed over the tensors it loaded.
    pub weight_bytes: u64,
    /// Bytes of this rank's KV cache (every layer's, or with pipelined decode its own).
    pub kv_cache_bytes: u64,
    /// Where this rank's decode time went.
    pub decode: DecodeTimes,
}

impl RankFigures {
    pub const FIELDS: usize = 15;

    pub fn to_row(&self) -> [f64; Self::FIELDS] {
        [
            self.rank as f64,
            self.kv_bytes_sent as f64,
            self.kv_bytes_received as f64,
            self.exposed_sync_s,
            self.sync.calls as f64,
            self.sync.busy_s,
            self.stage.compute_s,
            self.stage.recv_wait_s,
            self.stage.send_wait_s,
            self.weight_bytes as f64,
            self.kv_cache_bytes as f64,
            self.decode.compute_s,
            self.decode.send_s,
            self.decode.recv_s,
            self.decode.wait_s,
        ]
    }

    pub fn from_row(row: &[f64]) -> Self {
        Self {
            rank: row[0] as usize,
            kv_bytes_sent: row[1] as u64,
            kv_bytes_received: row[2] as u64,
            exposed_sync_s: row[3],
            sync: SyncStats {
                calls: row[4] as u64,
                bytes_sent: row[1] as u64,
                bytes_received: row[2] as u64,
                busy_s: row[5],
            },
            stage: StageTimes {
                compute_s: row[6],
                recv_wait_s: row[7],
                send_wait_s: row[8],
            },
            weight_bytes: row[9] as u64,
            kv_cache_bytes: row[10] as u64,
            decode: DecodeTimes {
                compute_s: row[11],
                send_s: row[12],
                recv_s: row[13],
                wait_s: row[14],
            },
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobReport {
    pub model: String,
    /// The built-in model's weights are random: its text means nothing.
    pub random_weights: bool,
    pub device: String,
    pub dtype: String,
    pub ranks: usize,
    pub layer_split: Vec<usize>,
    /// `redundant` or `pipeline` (what `--decode` resolved to), and why.
    pub decode_mode: DecodeMode,
    pub decode_mode_reason: String,
    /// The most ranks that share one GPU (1: a GPU for each rank, or the CPU).
    pub ranks_per_gpu: usize,
    /// The KV sync strategy and transport; `none` with pipelined decode (no KV sync).
    pub sync: String,
    pub transport: String,
    /// How the hidden states went from stage to stage: `host` or `ipc` (after any fallback).
    pub hidden_transport: String,
    /// `--chunk-size`, or the default; with balanced chunking, the average chunk length.
    pub chunk_size: usize,
    pub chunks: usize,
    /// `--chunking`: `uniform` or `balanced`.
    pub chunking: Chunking,
    pub chunk_lengths: Vec<usize>,
    /// How the chunk length was chosen (`schedule::chunk_choice`), and the cost model's
    /// prefill time for these chunks, to hold against the measured TTFT.
    pub chunk_choice: String,
    pub predicted_ttft_s: f64,
    /// The kernels the layers ran on (`LayerPlan`): prefill attention, decode path, and why.
    pub prefill_attention: String,
    pub decode_path: String,
    pub layer_kernels: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub ttft_s: f64,
    /// TTFT of every prefill run (`--prefill-runs`); `ttft_s` is the last.
    pub ttft_runs_s: Vec<f64>,
    pub prefill_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_s: f64,
    pub decode_tokens_per_s: f64,
    /// Median time of one decode step (the first steps also load kernels).
    pub decode_ms_per_token_median: f64,
    /// How much of the prefill the ranks' compute overlapped: the sum of every rank's compute
    /// time over TTFT (1 for a pipeline whose stages never overlap).
    pub pipeline_overlap: f64,
    /// What that would be for equal stages and free communication: R·C/(C+R−1).
    pub pipeline_ideal: f64,
    /// `pipeline_overlap / pipeline_ideal`.
    pub pipeline_efficiency: f64,
    pub per_rank: Vec<RankFigures>,
    #[serde(skip)]
    pub prompt_ids: Vec<u32>,
    #[serde(skip)]
    pub prefill_logits: Vec<f32>,
    /// Every rank's spans, on rank 0 (empty elsewhere).
    #[serde(skip)]
    pub spans_per_rank: Vec<Vec<crate::trace::spans::Span>>,
    /// Host of each rank.
    pub hostnames: Vec<String>,
    /// Device hardware of each rank (GPU name or "cpu").
    pub devices: Vec<String>,
    /// UTC, RFC 3339, when the job started.
    pub start_time: String,
}
