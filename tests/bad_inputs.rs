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
    let short = ["--prompt", SHORT_PROMPT];
    assert_job_fails(
        6,
        &["--model", &m, short[0], short[1]],
        1,
        "6 ranks but the model has only 5 layers",
    );
    assert_job_fails(
        2,
        &["--model", &m, "--layers", "1,1", short[0], short[1]],
        1,
        "--layers sums to 2 but the model has 5 layers",
    );
    assert_job_fails(
        2,
        &["--model", &m, "--layers", "5,0", short[0], short[1]],
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
    assert_job_fails(
        2,
        &["--hidden-transport", "ipc"],
        1,
        "--hidden-transport ipc needs GPUs",
    );
    assert_job_fails(
        2,
        &["--hidden-transport", "device"],
        1,
        "--hidden-transport device needs GPUs",
    );
    assert_job_fails(2, &["--hidden-transport", "telepathy"], 2, "telepathy");
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
    assert!(partial_files(out.path()).is_empty());
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
    // the fault flips rank 1's token 3: the message says where rank 1 departs
    assert!(
        stderr.contains("rank 1 from generated token 3 (rank 0: "),
        "{stderr}"
    );
}

/// Rewrites one field of a materialized model's config.json.
fn edit_config(dir: &std::path::Path, field: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[field] = value;
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn sizes_from_flags_that_overflow_or_exceed_the_model_are_named_before_anything_is_allocated() {
    let max = u64::MAX.to_string();
    assert_job_fails(
        2,
        &["--synthetic-prompt", &max],
        1,
        "--synthetic-prompt 18446744073709551615: more tokens than the model's max_position_embeddings",
    );
    assert_job_fails(
        2,
        &["--max-new-tokens", &max],
        1,
        "--max-new-tokens 18446744073709551615: the prompt plus new tokens overflow",
    );
    assert_job_fails(
        2,
        &["--layers", &format!("{max},8")],
        1,
        "--layers sums to more than any model has layers",
    );
}

#[test]
fn absurd_config_sizes_and_foreign_architectures_are_refused_by_field() {
    let model = materialize("gqa-untied-odd-4x");
    let m = model.path().display().to_string();
    for (field, value, limit) in [
        ("num_hidden_layers", 100_000_000u64, "4096"),
        ("num_hidden_layers", 1_000_000_000_000, "4096"),
        ("hidden_size", 1 << 40, "65536"),
        ("vocab_size", 1 << 30, "16777216"),
    ] {
        let fresh = materialize("gqa-untied-odd-4x");
        edit_config(fresh.path(), field, value.into());
        let f = fresh.path().display().to_string();
        let needle = format!("field `{field}` is {value}, more than this implementation takes ({limit})");
        assert_job_fails(2, &["--model", &f], 1, &needle);
    }
    edit_config(
        model.path(),
        "architectures",
        serde_json::json!(["Qwen3MoeForCausalLM"]),
    );
    assert_job_fails(
        2,
        &["--model", &m],
        1,
        "unsupported architecture Qwen3MoeForCausalLM",
    );
}

#[test]
fn a_nan_weight_ends_the_job_naming_the_first_stage_that_output_one() {
    let dir = materialize("gqa-untied-odd-4x"); // 5 layers: 3 on rank 0, 2 on rank 1
    let m = dir.path().display().to_string();
    let cfg = qwen3_mpi::model::Qwen3Config::from_file(&dir.path().join("config.json")).unwrap();
    let exp = expected("gqa-untied-odd-4x");
    let seed = exp["seed"].as_u64().unwrap();
    let poison = |name: &'static str, value: f32| {
        move |t: &mut std::collections::HashMap<String, candle_core::Tensor>| {
            if let Some(w) = t.get(name) {
                let mut values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                values[0] = value;
                let poisoned = candle_core::Tensor::from_vec(values, w.shape(), w.device()).unwrap();
                t.insert(name.into(), poisoned);
            }
        }
    };
    let out = tempfile::tempdir().unwrap();
    let trace = out.path().join("nan.h5");
    let t = trace.display().to_string();
    write_checkpoint_with(
        dir.path(),
        &cfg,
        seed,
        1,
        poison("model.layers.3.mlp.down_proj.weight", f32::NAN),
    );
    let args = [
        "--model",
        &m,
        "--prompt",
        SHORT_PROMPT,
        "--trace",
        &t,
        "--temperature",
        "0.7",
    ];
    assert_job_fails(2, &args, 1, "rank 1's layers 3..5 output NaN or Inf");
    let file = hdf5::File::open(&trace).expect("a trace marked failed");
    let read = |name: &str| {
        file.attr(name)
            .unwrap()
            .read_scalar::<hdf5::types::VarLenUnicode>()
            .unwrap()
            .to_string()
    };
    assert_eq!(read("status"), "failed");
    assert!(read("error").contains("output NaN or Inf"), "{}", read("error"));
    assert_job_fails(
        1,
        &["--model", &m, "--prompt", SHORT_PROMPT],
        1,
        "rank 0's layers 0..5 output NaN or Inf",
    );
    // an Inf in the head: every stage's output is finite, the logits are not
    write_checkpoint_with(dir.path(), &cfg, seed, 1, poison("lm_head.weight", f32::INFINITY));
    assert_job_fails(
        2,
        &["--model", &m, "--prompt", SHORT_PROMPT],
        1,
        "the prefill logits on rank 1 hold NaN or Inf",
    );
}

#[test]
fn a_bad_qwen3_mpi_variable_ends_the_job_at_setup_with_one_line_naming_it() {
    // read on every rank at setup, even where the value would only matter on a GPU
    for (name, value, needle) in [
        (
            "QWEN3_MPI_STAGE_PIECE_BYTES",
            "lots",
            "QWEN3_MPI_STAGE_PIECE_BYTES=lots: expected a byte count",
        ),
        (
            "QWEN3_MPI_HOST_PATH",
            "shm",
            "QWEN3_MPI_HOST_PATH=shm: expected `mpi` or `window`",
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let trace = out.path().join("job.h5").display().to_string();
        let (code, _, stderr, secs) = run_mpi(2, &["--trace", &trace], &[(name, value)], 60);
        assert_eq!(code, 1, "{name}={value}: {stderr}");
        assert!(secs < 20.0, "{name}={value}: took {secs:.1} s");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(errors.len(), 1, "{name}={value}: {stderr}");
        assert!(errors[0].contains(needle), "{}", errors[0]);
        assert!(!out.path().join("job.h5").exists(), "nothing ran, so no trace");
    }
}
