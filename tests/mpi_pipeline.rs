//! Real `mpirun` jobs on the CPU against fixture models: every rank count, sync strategy and
//! chunking reproduces the one-process run and transformers' tokens, and leaves every rank
//! with the one-process KV cache.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use common::*;

/// A fixture with 5 layers (max 64 positions; the prompt has 38 tokens).
const FIXTURE: &str = "gqa-untied-odd-4x";

struct Case {
    ranks: usize,
    sync: &'static str,
    chunk: usize,
    layers: Option<&'static str>,
    /// `--chunking`: `uniform`, or `balanced` (shorter chunks later)
    chunking: &'static str,
}

/// The allgather sync over chunks of 5 positions, uniform.
fn chunks_of_five(ranks: usize, layers: Option<&'static str>) -> Case {
    Case {
        ranks,
        sync: "allgather",
        chunk: 5,
        layers,
        chunking: "uniform",
    }
}

/// One process's tokens and KV cache for `prompt` (chunks of 5 positions).
fn one_process(model: &Path, prompt: &str) -> (Vec<u32>, HashMap<String, Tensor>) {
    let one = tempfile::tempdir().unwrap();
    let ids = job(model, &chunks_of_five(1, None), prompt, one.path());
    (ids, load_kv(&one.path().join("kv-rank0.safetensors")))
}

fn job(model: &Path, case: &Case, prompt: &str, dump: &Path) -> Vec<u32> {
    job_with_env(model, case, prompt, dump, &[]).0
}

/// As [`job`], with `env` set for every rank; also gives stderr.
fn job_with_env(
    model: &Path,
    case: &Case,
    prompt: &str,
    dump: &Path,
    env: &[(&str, &str)],
) -> (Vec<u32>, String) {
    job_with_args(model, case, prompt, dump, env, &[])
}

/// As [`job_with_env`], with `extra` flags.
fn job_with_args(
    model: &Path,
    case: &Case,
    prompt: &str,
    dump: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (Vec<u32>, String) {
    let model = model.display().to_string();
    let chunk = case.chunk.to_string();
    let dump = dump.display().to_string();
    let mut args = vec![
        "--model",
        &model,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "8",
        "--chunk-size",
        &chunk,
    ];
    args.extend(["--sync", case.sync, "--dump", &dump, "--json", "--timeout", "60"]);
    args.extend(["--chunking", case.chunking]);
    if let Some(layers) = case.layers {
        args.extend(["--layers", layers]);
    }
    args.extend(extra);
    let (code, stdout, stderr, _) = run_mpi(case.ranks, &args, env, 120);
    assert_eq!(code, 0, "{} ranks {} {env:?}: {stderr}", case.ranks, case.sync);
    let report = json_report(&stdout);
    let lengths: Vec<u64> = report["chunk_lengths"]
        .as_array()
        .expect("chunk_lengths in the report")
        .iter()
        .map(|l| l.as_u64().unwrap())
        .collect();
    assert_eq!(
        lengths.iter().sum::<u64>(),
        report["prompt_tokens"].as_u64().unwrap()
    );
    if case.chunking == "balanced" {
        assert!(
            lengths[0] > lengths[lengths.len() - 1],
            "balanced chunks {lengths:?}"
        );
    }
    (expected_ids(&report, "generated_ids"), stderr)
}

#[test]
fn ranks_strategies_and_chunkings_reproduce_one_process_and_transformers() {
    let model = materialize(FIXTURE);
    let exp = expected(FIXTURE);
    let prompt = exp["prompt"].as_str().unwrap();
    let reference = expected_ids(&exp, "greedy_ids");
    let cases = [
        Case {
            ranks: 2,
            sync: "allgather",
            chunk: 7,
            layers: None,
            chunking: "uniform",
        },
        Case {
            ranks: 2,
            sync: "ring",
            chunk: 7,
            layers: None,
            chunking: "uniform",
        },
        Case {
            ranks: 3,
            sync: "ring",
            chunk: 5,
            layers: Some("1,3,1"),
            chunking: "uniform",
        },
        Case {
            ranks: 3,
            sync: "allgather",
            chunk: 38,
            layers: None,
            chunking: "uniform",
        }, // one chunk, three ranks
        Case {
            ranks: 4,
            sync: "allgather",
            chunk: 16,
            layers: Some("2,1,1,1"),
            chunking: "uniform",
        }, // 3 chunks < 4 ranks
        Case {
            ranks: 4,
            sync: "ring",
            chunk: 3,
            layers: None,
            chunking: "uniform",
        },
        Case {
            ranks: 3,
            sync: "allgather",
            chunk: 5,
            layers: None,
            chunking: "balanced",
        }, // 8 chunks, later ones shorter
    ];
    let mut baselines: HashMap<(usize, &str), HashMap<String, Tensor>> = HashMap::new();
    for case in &cases {
        let base = baselines.entry((case.chunk, case.chunking)).or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let one = Case {
                ranks: 1,
                sync: "allgather",
                chunk: case.chunk,
                layers: None,
                chunking: case.chunking,
            };
            assert_eq!(
                job(model.path(), &one, prompt, dir.path()),
                reference,
                "1 rank, chunk {}",
                case.chunk
            );
            load_kv(&dir.path().join("kv-rank0.safetensors"))
        });
        let dir = tempfile::tempdir().unwrap();
        let ids = job(model.path(), case, prompt, dir.path());
        let what = format!(
            "{} ranks, {}, chunk {} {}, layers {:?}",
            case.ranks, case.sync, case.chunk, case.chunking, case.layers
        );
        assert_eq!(ids, reference, "{what}: tokens differ from transformers");
        for rank in 0..case.ranks {
            let cache = load_kv(&dir.path().join(format!("kv-rank{rank}.safetensors")));
            assert_same_cache(&cache, base, &format!("{what}, rank {rank}"));
        }
    }
}

#[test]
fn host_allgather_through_mpi_and_through_the_shared_window_give_the_one_process_cache() {
    let model = materialize(FIXTURE);
    let exp = expected(FIXTURE);
    let prompt = exp["prompt"].as_str().unwrap();
    // 8 chunks of up to 5 positions over 3 ranks: calls where some ranks have no block
    let case = |ranks| chunks_of_five(ranks, (ranks == 3).then_some("2,2,1"));
    let (reference, base) = one_process(model.path(), prompt);
    for (path, used) in [
        (
            "mpi",
            "KV sync over host memory: allgather (QWEN3_MPI_HOST_PATH=mpi)",
        ),
        (
            "window",
            "KV sync over host memory: allgather through a node-shared host window",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let env = [("QWEN3_MPI_HOST_PATH", path), ("RUST_LOG", "info")];
        let (ids, stderr) = job_with_env(model.path(), &case(3), prompt, dir.path(), &env);
        assert!(
            stderr.contains(used),
            "QWEN3_MPI_HOST_PATH={path}: no `{used}` in\n{stderr}"
        );
        assert_eq!(
            ids, reference,
            "QWEN3_MPI_HOST_PATH={path}: tokens differ from one process"
        );
        for rank in 0..3 {
            let cache = load_kv(&dir.path().join(format!("kv-rank{rank}.safetensors")));
            assert_same_cache(&cache, &base, &format!("QWEN3_MPI_HOST_PATH={path}, rank {rank}"));
        }
    }
}

#[test]
fn the_other_layers_loaded_after_the_prefill_give_the_one_process_tokens_and_cache() {
    let model = materialize(FIXTURE);
    let exp = expected(FIXTURE);
    let prompt = exp["prompt"].as_str().unwrap();
    let (reference, base) = one_process(model.path(), prompt);
    let dir = tempfile::tempdir().unwrap();
    let env = [("QWEN3_MPI_WEIGHT_LOAD", "after"), ("RUST_LOG", "info")];
    let (ids, stderr) = job_with_env(model.path(), &chunks_of_five(2, None), prompt, dir.path(), &env);
    assert!(
        stderr.contains("after the prefill (QWEN3_MPI_WEIGHT_LOAD=after)"),
        "no word of the load after the prefill in\n{stderr}"
    );
    assert_eq!(
        ids, reference,
        "QWEN3_MPI_WEIGHT_LOAD=after: tokens differ from one process"
    );
    for rank in 0..2 {
        let cache = load_kv(&dir.path().join(format!("kv-rank{rank}.safetensors")));
        assert_same_cache(
            &cache,
            &base,
            &format!("QWEN3_MPI_WEIGHT_LOAD=after, rank {rank}"),
        );
    }
}

#[test]
fn a_warmed_up_job_gives_the_one_process_tokens_and_cache() {
    let model = materialize(FIXTURE);
    let exp = expected(FIXTURE);
    let prompt = exp["prompt"].as_str().unwrap();
    let (reference, base) = one_process(model.path(), prompt);
    let dir = tempfile::tempdir().unwrap();
    let env = [("RUST_LOG", "info")];
    let case = chunks_of_five(2, None);
    let (ids, stderr) = job_with_args(model.path(), &case, prompt, dir.path(), &env, &["--warmup"]);
    assert!(
        stderr.contains("warm-up: chunks of"),
        "no word of the warm-up in\n{stderr}"
    );
    assert_eq!(ids, reference, "--warmup: tokens differ from one process");
    for rank in 0..2 {
        let cache = load_kv(&dir.path().join(format!("kv-rank{rank}.safetensors")));
        assert_same_cache(&cache, &base, &format!("--warmup, rank {rank}"));
    }
}

#[test]
fn one_token_prompt_and_sampling_agree_across_rank_counts() {
    let model = materialize("mqa-tied-sharded-5x"); // 4 layers, sharded checkpoint
    let m = model.path().display().to_string();
    let mut runs = Vec::new();
    for ranks in [1, 3] {
        for extra in [
            &["--synthetic-prompt", "1"][..],
            &[
                "--temperature",
                "0.9",
                "--top-k",
                "40",
                "--top-p",
                "0.95",
                "--seed",
                "7",
            ],
        ] {
            let mut args = vec![
                "--model",
                m.as_str(),
                "--max-new-tokens",
                "6",
                "--json",
                "--timeout",
                "60",
            ];
            args.extend(extra);
            let (code, stdout, stderr, _) = run_mpi(ranks, &args, &[], 120);
            assert_eq!(code, 0, "{ranks} ranks {extra:?}: {stderr}");
            runs.push((ranks, extra, expected_ids(&json_report(&stdout), "generated_ids")));
        }
    }
    assert_eq!(runs[0].2, runs[2].2, "one-token prompt: 1 rank vs 3 ranks");
    assert_eq!(runs[1].2, runs[3].2, "sampling with a seed: 1 rank vs 3 ranks");
    assert_eq!(runs[0].2.len(), 6);
}
