//! `--dump DIR` that cannot be written fails on every rank at once: each rank's message reaches
//! stderr as one whole line naming that rank, never mixed with another rank's text.

mod common;

use std::path::Path;

use common::*;

/// Runs 3 ranks with `--dump dump` (and a trace) `runs` times; asserts exit code 1, that every
/// line mentioning qwen3-mpi (but rank 0's chunks and decode mode at startup) is the whole message
/// `expected(rank)` of some rank, each rank's at
/// most once, at least one of them, and the trace marked failed.
fn assert_whole_lines(dump: &Path, expected: impl Fn(usize) -> String, runs: usize) {
    let out = tempfile::tempdir().unwrap();
    for run in 0..runs {
        let trace = out.path().join(format!("dump-{run}.h5"));
        let args = [
            "--max-new-tokens",
            "2",
            "--dump",
            &dump.display().to_string(),
            "--trace",
            &trace.display().to_string(),
        ];
        let (code, _, stderr, secs) = run_mpi(3, &args, &[], 60);
        assert_eq!(code, 1, "run {run}: stderr:\n{stderr}");
        assert!(secs < 20.0, "run {run}: took {secs:.1} s");
        let whole: Vec<String> = (0..3).map(&expected).collect();
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                l.contains("qwen3-mpi")
                    && !l.starts_with("qwen3-mpi: decode mode ")
                    && !l.starts_with("qwen3-mpi: chunks: ")
            })
            .collect();
        assert!(!ours.is_empty(), "run {run}: no --dump error:\n{stderr}");
        for line in &ours {
            assert!(
                whole.iter().any(|w| line == w),
                "run {run}: {line:?} is not one rank's whole message; stderr:\n{stderr}"
            );
        }
        for (rank, w) in whole.iter().enumerate() {
            let times = ours.iter().filter(|l| *l == w).count();
            assert!(
                times <= 1,
                "run {run}: rank {rank}'s line {times} times:\n{stderr}"
            );
        }
        let file = hdf5::File::open(&trace).unwrap_or_else(|e| panic!("run {run}: no trace ({e})"));
        let status: hdf5::types::VarLenUnicode = file.attr("status").unwrap().read_scalar().unwrap();
        assert_eq!(status.as_str(), "failed", "run {run}");
    }
}

#[test]
fn dump_errors_of_several_ranks_never_interleave_inside_a_line() {
    let dir = tempfile::tempdir().unwrap();
    // DIR is a file: every rank fails creating it
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let shown = file.display().to_string();
    assert_whole_lines(
        &file,
        |rank| format!("qwen3-mpi: error: rank {rank}: --dump {shown}: File exists (os error 17)"),
        3,
    );
    // each rank's own file is a directory: every rank fails writing its cache
    let dump = dir.path().join("dump");
    for rank in 0..3 {
        std::fs::create_dir_all(dump.join(format!("kv-rank{rank}.safetensors"))).unwrap();
    }
    assert_whole_lines(
        &dump,
        |rank| {
            format!(
                "qwen3-mpi: error: rank {rank}: --dump {}: cannot write (I/O error: Is a directory (os error 21))",
                dump.join(format!("kv-rank{rank}.safetensors")).display()
            )
        },
        3,
    );
}
