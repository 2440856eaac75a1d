//! A checkpoint file cut short: before the job (its header's byte ranges are checked against
//! the file's length before mapping) and while a rank loads it (the mapped read raises SIGBUS,
//! which becomes one line naming the file, and the job ends like any other failure).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use qwen3_mpi::model::Qwen3Config;

/// 5 layers, untied head, 3 shards. On 2 ranks (layers 0-2 | 3-4) rank 0 alone reads shard 1
/// (the embedding and the first layers) and rank 1 alone shard 3 (the last layer, the final
/// norm and lm_head, which rank 1 maps first); both read shard 2.
fn three_shard_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "generation_config.json"] {
        std::fs::copy(fixture_dir("gqa-untied-odd-4x").join(file), dir.path().join(file)).unwrap();
    }
    copy_tokenizer(dir.path());
    let cfg = Qwen3Config::from_file(&dir.path().join("config.json")).unwrap();
    write_checkpoint(dir.path(), &cfg, 13, 3);
    dir
}

fn shard(model: &Path, i: usize) -> PathBuf {
    model.join(format!("model-{i:05}-of-00003.safetensors"))
}

fn read_attr(file: &hdf5::File, name: &str) -> String {
    file.attr(name)
        .unwrap()
        .read_scalar::<hdf5::types::VarLenUnicode>()
        .unwrap()
        .to_string()
}

/// The `qwen3-mpi: error:` lines of `stderr`.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("qwen3-mpi: error:"))
        .collect()
}

/// Runs 2 ranks on `model` with a trace; asserts exit code 1 within bounds, no death by the
/// signal, and a complete trace marked failed; returns the error lines and the trace's `error`.
fn run_failing(model: &Path, env: &[(&str, &str)]) -> (Vec<String>, String) {
    let out = tempfile::tempdir().unwrap();
    let trace = out.path().join("job.h5");
    let args = [
        "--model",
        &model.display().to_string(),
        "--prompt",
        SHORT_PROMPT,
        "--max-new-tokens",
        "3",
        "--trace",
        &trace.display().to_string(),
        "--timeout",
        "60",
    ];
    let (code, _, stderr, secs) = run_mpi(2, &args, env, 90);
    assert_eq!(code, 1, "{env:?}: exit code {code}, stderr:\n{stderr}");
    assert!(
        secs < 30.0,
        "{env:?}: took {secs:.1} s (the --timeout of 60 s must not end it)"
    );
    assert!(
        !stderr.contains("Bus error"),
        "{env:?}: the rank died of the signal:\n{stderr}"
    );
    let file = hdf5::File::open(&trace)
        .unwrap_or_else(|e| panic!("{env:?}: no complete trace ({e}); stderr:\n{stderr}"));
    assert_eq!(read_attr(&file, "status"), "failed", "{env:?}");
    assert!(partial_files(out.path()).is_empty(), "{env:?}: a .partial left");
    let lines = error_lines(&stderr).into_iter().map(String::from).collect();
    (lines, read_attr(&file, "error"))
}

/// What a rank prints when `file` is cut under its mapping.
fn bus_error_body(rank: usize, file: &Path) -> String {
    format!(
        "rank {rank}: {}: bus error (SIGBUS) reading this memory-mapped checkpoint file: it was \
         truncated or replaced on disk while the job loaded it",
        file.display()
    )
}

#[test]
fn a_shard_cut_before_the_job_is_refused_before_mapping_naming_the_file_and_tensor() {
    let model = three_shard_model();
    let path = shard(model.path(), 3);
    let bytes = std::fs::read(&path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let last = metadata.offset_keys().pop().unwrap();
    let (start, end) = metadata.info(&last).unwrap().data_offsets;
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap(); // one byte short
    let line = format!(
        "qwen3-mpi: error: rank 1: {}: not a valid safetensors file (tensor {last} lies at data bytes \
         {start}..{end}, but the file holds {} bytes of data: it is truncated)",
        path.display(),
        end - 1
    );
    let (lines, error) = run_failing(model.path(), &[]);
    assert_eq!(lines, vec![line.clone()]);
    assert!(line.ends_with(&error), "trace error {error:?}");
}

#[test]
fn a_shard_truncated_while_a_rank_loads_it_ends_the_job_with_one_line_naming_it() {
    let model = three_shard_model();
    // (the fault, the rank that maps the file first, the file), at setup: nobody else reads it
    for (fault, rank, file) in [("truncate@1:load:0", 1, 3), ("truncate@0:load:0", 0, 1)] {
        let path = shard(model.path(), file);
        let bytes = std::fs::read(&path).unwrap();
        let body = bus_error_body(rank, &path);
        let (lines, error) = run_failing(model.path(), &[("QWEN3_MPI_FAULT", fault)]);
        assert_eq!(lines, vec![format!("qwen3-mpi: error: {body}")], "{fault}");
        assert_eq!(error, body, "{fault}: the trace's error");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "{fault}: not truncated"
        );
        std::fs::write(&path, bytes).unwrap(); // whole again for the next case
    }
}

#[test]
fn a_shard_truncated_under_the_background_load_ends_the_job_from_that_thread() {
    // Rank 0's third file is shard 3, mapped by its weight-loading thread during prefill (the
    // main thread is in MPI calls meanwhile). Rank 1's own background load may read shard 3
    // too and meet the cut as well: then it prints its own whole line.
    let model = three_shard_model();
    let path = shard(model.path(), 3);
    let (lines, error) = run_failing(model.path(), &[("QWEN3_MPI_FAULT", "truncate@0:load:2")]);
    let expected: Vec<String> = (0..2).map(|rank| bus_error_body(rank, &path)).collect();
    assert!(
        lines.contains(&format!("qwen3-mpi: error: {}", expected[0])),
        "rank 0's line is missing: {lines:#?}"
    );
    for line in &lines {
        assert!(
            expected
                .iter()
                .any(|body| *line == format!("qwen3-mpi: error: {body}")),
            "{line:?} is not a whole bus-error line"
        );
    }
    assert!(expected.contains(&error), "the trace's error: {error:?}");
}
