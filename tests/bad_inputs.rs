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
