//! What a finished job puts in its trace file.

use anyhow::Result;

use super::report::{JobReport, RankFigures};
use crate::cli::RunArgs;
use crate::model::Qwen3Config;
use crate::trace::spans::SpanRow;
use crate::trace::TraceFile;
use crate::transport::MpiEnv;

pub fn write_job_trace(
    trace: TraceFile,
    report: &JobReport,
    cfg: &Qwen3Config,
    args: &RunArgs,
) -> Result<()> {
    trace.attr_str("command_line", &std::env::args().collect::<Vec<_>>().join(" "))?;
    trace.attr_str("model", &report.model)?;
    trace.attr_str("model_config", &serde_json::to_string(cfg)?)?;
    trace.attr_str("run_args", &serde_json::to_string(args)?)?;
    trace.attr_str("device", &report.device)?;
    trace.attr_str("dtype", &report.dtype)?;
    trace.attr_u64("world_size", report.ranks as u64)?;
    trace.attr_u64_array("layer_split", &as_u64(&report.layer_split))?;
    trace.attr_str("decode_mode", report.decode_mode.name())?;
    trace.attr_str("decode_mode_reason", &report.decode_mode_reason)?;
    trace.attr_str("sync_strategy", &report.sync)?;
    trace.attr_str("transport", &report.transport)?;
    trace.attr_str("hidden_transport", &report.hidden_transport)?;
    trace.attr_u64("chunk_size", report.chunk_size as u64)?;
    trace.attr_str("chunking", report.chunking.name())?;
    trace.attr_u64_array("chunk_lengths", &as_u64(&report.chunk_lengths))?;
    trace.attr_u64("chunks", report.chunks as u64)?;
    trace.attr_str("chunk_choice", &report.chunk_choice)?;
    trace.attr_f64("predicted_ttft_s", report.predicted_ttft_s)?;
    trace.attr_str("prefill_attention", &report.prefill_attention)?;
    trace.attr_str("decode_path", &report.decode_path)?;
    trace.attr_str("layer_kernels", &report.layer_kernels)?;
    trace.attr_u64("prompt_tokens", report.prompt_tokens as u64)?;
    trace.attr_u64("new_tokens", report.new_tokens as u64)?;
    trace.attr_str("mpi_library_version", &MpiEnv::library_version())?;
    trace.attr_str("git_commit", env!("QWEN3_MPI_GIT_COMMIT"))?;
    trace.attr_str("start_time", &report.start_time)?;
    trace.attr_str_array("hostnames", &report.hostnames)?;
    trace.attr_str_array("device_names", &report.devices)?;
    trace.attr_u64("ranks_per_gpu", report.ranks_per_gpu as u64)?;
    trace.attr_f64("ttft_s", report.ttft_s)?;
    trace.attr_f64("prefill_s", report.prefill_s)?;
    trace.attr_f64("decode_s", report.decode_s)?;
    trace.dataset("output/prompt_ids", &report.prompt_ids)?;
    trace.dataset("output/generated_ids", &report.generated_ids)?;
    trace.dataset("output/prefill_logits", &report.prefill_logits)?;
    write_summary(&trace, report)?;
    for (rank, spans) in report.spans_per_rank.iter().enumerate() {
        let rows: Vec<SpanRow> = spans.iter().map(|s| SpanRow::new(rank, s)).collect();
        trace.dataset(&format!("ranks/{rank}/events"), &rows)?;
    }
    trace.finish("ok")?;
    Ok(())
}

/// `/summary`: the job's headline figures as attributes, per-rank figures as datasets
/// (index = rank).
fn write_summary(trace: &TraceFile, report: &JobReport) -> Result<()> {
    for (name, value) in [
        ("ttft_s", report.ttft_s),
        ("prefill_s", report.prefill_s),
        ("prefill_tokens_per_s", report.prefill_tokens_per_s),
        ("decode_s", report.decode_s),
        ("decode_tokens_per_s", report.decode_tokens_per_s),
        ("decode_ms_per_token_median", report.decode_ms_per_token_median),
        ("pipeline_overlap", report.pipeline_overlap),
        ("pipeline_ideal", report.pipeline_ideal),
        ("pipeline_efficiency", report.pipeline_efficiency),
    ] {
        trace.group_attr_f64("summary", name, value)?;
    }
    // not under /summary, whose datasets are per rank
    trace.dataset("prefill_runs/ttft_s", &report.ttft_runs_s)?;
    let per_rank = &report.per_rank;
    trace.dataset(
        "summary/kv_bytes_sent",
        &per_rank.iter().map(|r| r.kv_bytes_sent).collect::<Vec<_>>(),
    )?;
    trace.dataset(
        "summary/kv_bytes_received",
        &per_rank.iter().map(|r| r.kv_bytes_received).collect::<Vec<_>>(),
    )?;
    trace.dataset(
        "summary/exposed_sync_s",
        &per_rank.iter().map(|r| r.exposed_sync_s).collect::<Vec<_>>(),
    )?;
    trace.dataset(
        "summary/compute_s",
        &per_rank.iter().map(|r| r.stage.compute_s).collect::<Vec<_>>(),
    )?;
    trace.dataset(
        "summary/sync_busy_s",
        &per_rank.iter().map(|r| r.sync.busy_s).collect::<Vec<_>>(),
    )?;
    for (name, value) in [
        (
            "summary/weight_bytes",
            (|r| r.weight_bytes) as fn(&RankFigures) -> u64,
        ),
        ("summary/kv_cache_bytes", |r| r.kv_cache_bytes),
    ] {
        trace.dataset(name, &per_rank.iter().map(value).collect::<Vec<_>>())?;
    }
    for (name, value) in [
        (
            "summary/decode_compute_s",
            (|r| r.decode.compute_s) as fn(&RankFigures) -> f64,
        ),
        ("summary/decode_send_s", |r| r.decode.send_s),
        ("summary/decode_recv_s", |r| r.decode.recv_s),
        ("summary/decode_wait_s", |r| r.decode.wait_s),
    ] {
        trace.dataset(name, &per_rank.iter().map(value).collect::<Vec<_>>())?;
    }
    Ok(())
}

fn as_u64(values: &[usize]) -> Vec<u64> {
    values.iter().map(|&v| v as u64).collect()
}
