//! Bad input under `mpirun`: every rank exits non-zero within a bound, one line names the cause
//! (file, flag or rank), and nobody hangs.

mod common;

use common::*;

/// Runs `ranks` ranks with `args`; asserts the exit code, the time bound and that exactly one
/// `error:` line on stderr contains `needle`.
fn assert_job_fails(ranks: usize, args: &[&str], code: i32, needle: &str) {
    let (got, _, stderr, secs) = run_mpi(ranks, args, &[], 60);
    assert_eq!(got, code, "{args:?}: exit code {got}, stderr:\n{stderr}");
    assert!(secs < 20.0, "{args:?}: took {secs:.1} s");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{args:?}: expected one error line, got:\n{stderr}"
    );
    assert!(
        errors[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        errors[0]
    );
}

#[test]
fn more_ranks_than_layers_and_bad_layer_splits() {
    let model = materialize("gqa-untied-odd-4x"); // 5 layers
    let m = model.path().display().to_string();
    assert_job_fails(6, &["--model", &m], 1, "6 ranks but the model has only 5 layers");
    assert_job_fails(
        2,
        &["--model", &m, "--layers", "1,1"],
        1,
        "--layers sums to 2 but the model has 5 layers",
    );
    assert_job_fails(
        2,
        &["--model", &m, "--layers", "5,0"],
        1,
        "--layers gives rank 1 no layers",
    );
}

#[test]
fn unknown_flags_values_and_missing_cuda_are_named() {
    assert_job_fails(2, &["--sync", "butterfly"], 2, "butterfly");
    assert_job_fails(2, &["--transport", "carrier-pigeon"], 2, "carrier-pigeon");
    assert_job_fails(2, &["--chunk-size", "0"], 2, "--chunk-size");
    assert_job_fails(2, &["--transport", "ipc"], 1, "--transport ipc needs GPUs");
    assert_job_fails(2, &["--chunking", "zigzag"], 2, "zigzag");
    if !cfg!(feature = "cuda") {
        assert_job_fails(2, &["--device", "cuda"], 1, "built without CUDA support");
    }
}

#[test]
fn a_corrupt_file_only_one_rank_reads_fails_that_rank_and_ends_the_job() {
    let model = materialize("mqa-tied-sharded-5x"); // 4 layers over 3 shards
    let m = model.path().display().to_string();
    // The last shard holds only the last layers and the final norm: rank 1's part of 2 ranks.
    let shard = model.path().join("model-00003-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 3]).unwrap();
    assert_job_fails(2, &["--model", &m], 1, "rank 1: ");
    let (_, _, stderr, _) = run_mpi(2, &["--model", &m], &[], 60);
    assert!(
        stderr.contains("model-00003-of-00003.safetensors: not a valid safetensors file"),
        "{stderr}"
    );
}

#[test]
fn a_model_too_large_for_the_memory_stops_before_loading_with_the_numbers() {
    let model = materialize("gqa-tied-5x");
    let m = model.path().display().to_string();
    let out = tempfile::tempdir().unwrap();
    let trace = out.path().join("too-big.h5");
    let t = trace.display().to_string();
    let args = ["--model", &m, "--max-memory", "64KiB", "--trace", &t];
    assert_job_fails(3, &args, 1, "the model does not fit: it needs");
    let (_, _, stderr, _) = run_mpi(3, &args, &[], 60);
    assert!(stderr.contains("but 0.000 GiB is --max-memory"), "{stderr}");
    // the trace is complete and says why, or absent; never half-written
    let file = hdf5::File::open(&trace).expect("a trace marked failed");
    let status = file
        .attr("status")
        .unwrap()
        .read_scalar::<hdf5::types::VarLenUnicode>()
        .unwrap();
    assert_eq!(status.as_str(), "failed");
    assert!(!out.path().join("too-big.h5.partial").exists());
    // and with room, the same job runs
    let (code, _, stderr, _) = run_mpi(3, &["--model", &m, "--max-memory", "4GiB"], &[], 60);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn ranks_that_generate_different_tokens_are_reported() {
    let (code, _, stderr, secs) = run_mpi(
        3,
        &["--max-new-tokens", "6"],
        &[("QWEN3_MPI_FAULT", "diverge@1:decode:3")],
        60,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(secs < 20.0);
    assert!(
        stderr.contains("ranks disagree on the generated tokens: ranks [1] differ from rank 0"),
        "{stderr}"
    );
}
