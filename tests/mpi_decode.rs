//! `--decode pipeline` and `auto` as real `mpirun` jobs on the CPU: pipelined decode gives the
//! one-process run's and transformers' tokens on dense and MoE fixtures over 1-4 ranks and uneven
//! splits, with each rank holding only its own layers and their K/V (measured); seeded sampling
//! gives the same tokens in both modes; a model that does not fit redundant decode under
//! `--max-memory` runs pipelined and `auto` picks it; its trace shows each rank's decode compute,
//! sends, receives and waits; a rank killed or stalled in pipelined decode ends the job.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use common::*;
use qwen3_mpi::model::weight_names::stage_parameter_count;
use qwen3_mpi::model::{Qwen3Config, StageParts};
use serde_json::Value;

/// `mpirun -n ranks` on `model` with 8 new tokens in chunks of 7, dumping each rank's cache to
/// `dump`; the report.
fn job(model: &Path, ranks: usize, mode: &str, layers: Option<&str>, prompt: &str, dump: &Path) -> Value {
    let (m, d) = (model.display().to_string(), dump.display().to_string());
    let mut args = vec!["--model", &m, "--prompt", prompt, "--max-new-tokens", "8"];
    args.extend([
        "--chunk-size",
        "7",
        "--decode",
        mode,
        "--dump",
        &d,
        "--json",
        "--timeout",
        "60",
    ]);
    if let Some(layers) = layers {
        args.extend(["--layers", layers]);
    }
    let (code, stdout, stderr, _) = run_mpi(ranks, &args, &[], 120);
    assert_eq!(code, 0, "{ranks} ranks, {mode}, layers {layers:?}: {stderr}");
    json_report(&stdout)
}

fn bits(t: &Tensor) -> Vec<u32> {
    let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    values.iter().map(|v| v.to_bits()).collect()
}

/// Each rank's (weight bytes, KV cache bytes) from the report.
fn held(report: &Value) -> Vec<(u64, u64)> {
    let rows = report["per_rank"].as_array().unwrap();
    rows.iter()
        .map(|r| {
            (
                r["weight_bytes"].as_u64().unwrap(),
                r["kv_cache_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The layer range of each rank in the report.
fn ranges(report: &Value) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    report["layer_split"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let end = start + n.as_u64().unwrap() as usize;
            let range = start..end;
            start = end;
            range
        })
        .collect()
}

/// f32 bytes of the K/V of `layers` layers over the job's positions (prompt + `new` tokens).
fn kv_bytes(cfg: &Qwen3Config, report: &Value, new: usize, layers: usize) -> u64 {
    let positions = report["prompt_tokens"].as_u64().unwrap() as usize + new;
    (layers * positions * 2 * cfg.num_key_value_heads * cfg.head_dim * 4) as u64
}

#[test]
fn pipelined_decode_gives_the_one_process_and_transformers_tokens_and_each_rank_holds_only_its_own_layers() {
    // (fixture, ranks, --layers): dense over 1-4 ranks with uneven splits; MoE with dense and
    // sparse layers on different ranks, tied (the last rank's head is its own copy) and untied
    let cases = [
        ("gqa-untied-odd-4x", 1, None),
        ("gqa-untied-odd-4x", 2, Some("4,1")),
        ("gqa-untied-odd-4x", 3, Some("1,3,1")),
        ("gqa-untied-odd-4x", 4, None),
        ("moe-unnorm-sharded-5x", 3, Some("1,2,1")),
        ("moe-unnorm-sharded-5x", 2, Some("3,1")),
        ("moe-norm-dense-4x", 2, Some("1,2")),
    ];
    let mut baselines = HashMap::new();
    for (name, ranks, layers) in cases {
        let exp = expected(name);
        let prompt = exp["prompt"].as_str().unwrap().to_owned();
        let reference = expected_ids(&exp, "greedy_ids");
        let (model, cfg, one_process, base_kv) = baselines.entry(name).or_insert_with(|| {
            // the one-process run, which holds the whole model and cache
            let model = materialize(name);
            let cfg = Qwen3Config::from_file(&model.path().join("config.json")).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let report = job(model.path(), 1, "redundant", None, &prompt, dir.path());
            let whole = stage_parameter_count(&cfg, 0..cfg.num_hidden_layers, StageParts::ALL) * 4;
            let all = kv_bytes(&cfg, &report, 8, cfg.num_hidden_layers);
            assert_eq!(
                held(&report),
                [(whole, all)],
                "{name}: one process holds the model and cache"
            );
            let ids = expected_ids(&report, "generated_ids");
            let kv = load_kv(&dir.path().join("kv-rank0.safetensors"));
            (model, cfg, ids, kv)
        });
        let what = format!("{name}: {ranks} ranks, layers {layers:?}");
        let dir = tempfile::tempdir().unwrap();
        let report = job(model.path(), ranks, "pipeline", layers, &prompt, dir.path());
        assert_eq!(report["decode_mode"], "pipeline", "{what}");
        assert_eq!(
            (&report["sync"], &report["transport"]),
            (&"none".into(), &"none".into()),
            "{what}"
        );
        let ids = expected_ids(&report, "generated_ids");
        assert_eq!(
            &ids, one_process,
            "{what}: tokens differ from the one-process run"
        );
        assert_eq!(ids, reference, "{what}: tokens differ from transformers");
        let last = ranks - 1;
        for (rank, (range, (weights, kv))) in ranges(&report).into_iter().zip(held(&report)).enumerate() {
            let parts = StageParts {
                embed: rank == 0,
                head: rank == last,
            };
            let own = stage_parameter_count(cfg, range.clone(), parts) * 4;
            assert_eq!(
                weights, own,
                "{what}: rank {rank} holds other weights than its layers {range:?}'"
            );
            assert_eq!(
                kv,
                kv_bytes(cfg, &report, 8, range.len()),
                "{what}: rank {rank}'s KV cache"
            );
            // its cache holds its own layers, bit for bit the one-process run's
            let cache = load_kv(&dir.path().join(format!("kv-rank{rank}.safetensors")));
            let mut names: Vec<&String> = cache.keys().collect();
            names.sort();
            let mut want: Vec<String> = range
                .clone()
                .flat_map(|l| [format!("layers.{l}.k"), format!("layers.{l}.v")])
                .collect();
            want.sort();
            assert_eq!(
                names,
                want.iter().collect::<Vec<_>>(),
                "{what}: rank {rank}'s cache"
            );
            for (name, tensor) in &cache {
                assert!(
                    bits(tensor) == bits(&base_kv[name]),
                    "{what}: rank {rank}: {name} differs from one process"
                );
            }
        }
    }
}

#[test]
fn seeded_sampling_gives_the_same_tokens_in_both_modes() {
    let sampled = |model: &str, ranks: usize, mode: &str, layers: Option<&str>| {
        let mut args = vec!["--model", model, "--max-new-tokens", "8", "--chunk-size", "10"];
        args.extend([
            "--temperature",
            "0.9",
            "--top-k",
            "50",
            "--seed",
            "7",
            "--decode",
            mode,
            "--json",
        ]);
        if let Some(layers) = layers {
            args.extend(["--layers", layers]);
        }
        let (code, stdout, stderr, _) = run_mpi(ranks, &args, &[], 120);
        assert_eq!(code, 0, "{model} {ranks} ranks {mode}: {stderr}");
        let report = json_report(&stdout);
        assert_eq!(report["decode_mode"], mode);
        expected_ids(&report, "generated_ids")
    };
    let one = sampled("tiny", 1, "redundant", None);
    assert_eq!(one.len(), 8);
    assert_eq!(
        sampled("tiny", 3, "pipeline", Some("2,7,3")),
        one,
        "tiny, 3 ranks pipelined"
    );
    assert_eq!(
        sampled("tiny", 2, "redundant", None),
        one,
        "tiny, 2 ranks redundant"
    );
    let moe = sampled("tiny-moe", 1, "redundant", None);
    assert_eq!(
        sampled("tiny-moe", 2, "pipeline", None),
        moe,
        "tiny-moe, 2 ranks pipelined"
    );
}

/// Bytes each decode mode needs on each of the 3 ranks of the fixture (2, 2, 1 layers) for a
/// job of `positions`: (redundant, the largest stage).
fn needs(cfg: &Qwen3Config, positions: usize) -> (u64, u64) {
    let kv_layer = (positions * 2 * cfg.num_key_value_heads * cfg.head_dim * 4) as u64;
    let n = cfg.num_hidden_layers;
    let redundant = stage_parameter_count(cfg, 0..n, StageParts::ALL) * 4 + n as u64 * kv_layer;
    let stages = [(0..2, true, false), (2..4, false, false), (4..5, false, true)];
    let largest = stages
        .into_iter()
        .map(|(layers, embed, head)| {
            let count = layers.len() as u64;
            stage_parameter_count(cfg, layers, StageParts { embed, head }) * 4 + count * kv_layer
        })
        .max()
        .unwrap();
    (redundant, largest)
}

#[test]
fn a_model_too_large_for_redundant_decode_runs_pipelined_and_auto_picks_it_with_spans_per_rank() {
    use qwen3_mpi::trace::spans::{Span, SpanKind, SpanRow};
    let name = "gqa-untied-odd-4x"; // 5 layers, 3 ranks: 2, 2, 1
    let model = materialize(name);
    let cfg = Qwen3Config::from_file(&model.path().join("config.json")).unwrap();
    let exp = expected(name);
    let prompt = exp["prompt"].as_str().unwrap();
    let m = model.path().display().to_string();
    let positions = expected_ids(&exp, "prompt_ids").len() + 5;
    let (redundant, stage) = needs(&cfg, positions);
    assert!(stage < redundant, "{stage} {redundant}");
    let limit = ((stage + redundant) / 2).to_string();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("pipeline.h5");
    let p = path.display().to_string();
    let base = [
        "--model",
        &m,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "5",
        "--chunk-size",
        "7",
    ];

    // --decode redundant does not fit, and says that pipeline would
    let args = [&base[..], &["--max-memory", &limit, "--decode", "redundant"]].concat();
    let (code, _, stderr, _) = run_mpi(3, &args, &[], 60);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--decode redundant: the model does not fit: it needs"),
        "{stderr}"
    );
    assert!(stderr.contains("; --decode pipeline fits every rank"), "{stderr}");

    // auto picks pipeline, says why, and writes it in the trace
    let args = [&base[..], &["--max-memory", &limit, "--trace", &p, "--json"]].concat();
    let (code, stdout, stderr, _) = run_mpi(3, &args, &[], 60);
    assert_eq!(code, 0, "{stderr}");
    let report = json_report(&stdout);
    assert_eq!(report["decode_mode"], "pipeline");
    assert_eq!(
        expected_ids(&report, "generated_ids"),
        &expected_ids(&exp, "greedy_ids")[..5]
    );
    let line = "qwen3-mpi: decode mode pipeline (auto: the whole model and KV cache do not fit rank 0, each rank's own layers do;";
    assert_eq!(stderr.matches(line).count(), 1, "{stderr}");
    assert!(stdout.contains("KV sync skipped"), "{stdout}");
    // the per-rank prefill lines report no KV sync that did not run
    assert!(!stdout.contains("exposed KV sync"), "{stdout}");
    assert_eq!(stdout.matches("| no KV sync").count(), 3, "{stdout}");
    let file = hdf5::File::open(&path).unwrap();
    let attr = |name: &str| {
        let value = file
            .attr(name)
            .unwrap()
            .read_scalar::<hdf5::types::VarLenUnicode>()
            .unwrap();
        value.as_str().to_owned()
    };
    assert_eq!(attr("decode_mode"), "pipeline");
    assert_eq!(
        attr("decode_mode_reason"),
        report["decode_mode_reason"].as_str().unwrap()
    );
    assert_eq!(attr("transport"), "none");
    let weights: Vec<u64> = file.dataset("summary/weight_bytes").unwrap().read_raw().unwrap();
    assert_eq!(weights, held(&report).iter().map(|h| h.0).collect::<Vec<_>>());
    let waited: Vec<f64> = file.dataset("summary/decode_wait_s").unwrap().read_raw().unwrap();
    assert!(
        waited[0] > 0.0 && waited[1] > 0.0,
        "ranks 0 and 1 wait for the last rank's token: {waited:?}"
    );
    for (rank, range) in ranges(&report).into_iter().enumerate() {
        let rows: Vec<SpanRow> = file
            .dataset(&format!("ranks/{rank}/events"))
            .unwrap()
            .read_raw()
            .unwrap();
        let spans: Vec<Span> = rows.iter().map(SpanRow::span).collect();
        let steps = |kind| {
            let mut steps: Vec<i32> = spans.iter().filter(|s| s.kind == kind).map(|s| s.step).collect();
            steps.dedup();
            steps
        };
        let all: Vec<i32> = (1..5).collect();
        assert_eq!(
            steps(SpanKind::DecodeStep),
            all,
            "rank {rank}: compute of each step"
        );
        assert_eq!(
            steps(SpanKind::DecodeWait),
            all,
            "rank {rank}: the token of each step"
        );
        let (sends, recvs) = (steps(SpanKind::DecodeSend), steps(SpanKind::DecodeRecv));
        assert_eq!(
            sends,
            if rank < 2 { all.clone() } else { vec![] },
            "rank {rank}'s sends"
        );
        assert_eq!(
            recvs,
            if rank > 0 { all.clone() } else { vec![] },
            "rank {rank}'s receives"
        );
        for s in spans
            .iter()
            .filter(|s| matches!(s.kind, SpanKind::DecodeSend | SpanKind::DecodeRecv))
        {
            let peer = if s.kind == SpanKind::DecodeSend {
                rank + 1
            } else {
                rank - 1
            };
            assert_eq!(
                (s.peer, s.bytes),
                (peer as i32, (cfg.hidden_size * 4) as u64),
                "rank {rank}: {s:?}"
            );
        }
        assert!(
            !spans.iter().any(|s| s.kind == SpanKind::KvSync),
            "rank {rank}: a KV sync span"
        );
        assert!(
            !spans.iter().any(|s| s.kind == SpanKind::Wait && s.peer < 0),
            "rank {rank}: a wait for a KV sync that does not run"
        );
        let loads = spans.iter().filter(|s| s.kind == SpanKind::WeightLoad).count();
        assert_eq!(loads, 1, "rank {rank}: its own layers only, no background load");
        assert!(
            spans
                .iter()
                .filter(|s| s.kind == SpanKind::LayerCompute)
                .all(|s| range.contains(&(s.layer as usize))),
            "rank {rank}: a layer outside {range:?}"
        );
        let mut compute: Vec<&Span> = spans.iter().filter(|s| s.thread as u8 == 0).collect();
        compute.sort_by_key(|s| s.t_start_ns);
        for pair in compute.windows(2) {
            assert!(
                pair[0].t_end_ns <= pair[1].t_start_ns,
                "rank {rank}: {:?} overlaps {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    // with room for the whole model, auto decodes redundant, and every rank holds all of it
    let (code, stdout, stderr, _) = run_mpi(3, &[&base[..], &["--json"]].concat(), &[], 60);
    assert_eq!(code, 0, "{stderr}");
    let report = json_report(&stdout);
    assert_eq!(report["decode_mode"], "redundant");
    let whole = stage_parameter_count(&cfg, 0..5, StageParts::ALL) * 4;
    assert_eq!(held(&report), vec![(whole, kv_bytes(&cfg, &report, 5, 5)); 3]);
}

#[test]
fn a_rank_that_dies_stalls_or_diverges_in_pipelined_decode_ends_the_job() {
    let with_fault = |fault: &str, timeout: &str| {
        let args = [
            "--max-new-tokens",
            "6",
            "--chunk-size",
            "4",
            "--decode",
            "pipeline",
            "--timeout",
            timeout,
        ];
        let (code, _, stderr, secs) = run_mpi(3, &args, &[("QWEN3_MPI_FAULT", fault)], 60);
        assert_ne!(code, 0, "{fault}: the job succeeded\n{stderr}");
        assert_ne!(code, 124, "{fault}: the job hung until the test's time limit");
        assert!(secs < 20.0, "{fault}: took {secs:.1} s");
        (code, stderr)
    };
    for fault in ["kill@1:decode:2", "kill@2:decode:1"] {
        with_fault(fault, "15");
    }
    for fault in ["stall@1:decode:2", "stall@2:decode:3"] {
        let (code, stderr) = with_fault(fault, "3");
        assert_eq!(code, 3, "{fault}: {stderr}");
        assert!(
            stderr.contains("timed out after 3 s waiting for"),
            "{fault}: {stderr}"
        );
        assert!(
            stderr.contains("decode step"),
            "{fault}: the wait is not named: {stderr}"
        );
    }
    let (code, stderr) = with_fault("diverge@1:decode:3", "15");
    assert_eq!(code, 1, "{stderr}");
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

#[test]
fn an_unknown_decode_mode_is_a_command_line_error_naming_the_flag() {
    let (code, _, stderr) = run_cli(&["--decode", "sideways"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--decode") && stderr.contains("pipeline"),
        "{stderr}"
    );
}
