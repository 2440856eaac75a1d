//! Qwen3-MoE against Hugging Face transformers' `Qwen3MoeForCausalLM` on the same weights (a
//! 4.x and a 5.x config file, a dense layer among sparse ones, renormalised and plain top-k, a
//! sharded checkpoint), in one process and as real `mpirun` jobs: every rank count, both syncs
//! and uneven splits give transformers' tokens and leave every rank with the one-process cache.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use qwen3_mpi::generate::{decode, prefill_local, Sampler, SamplingParams};
use qwen3_mpi::model::source::ModelSource;
use qwen3_mpi::model::{KvCache, Qwen3, StageParts};
use qwen3_mpi::tokenize::TextTokenizer;

const TOLERANCE: f32 = 1e-5;

/// 3 layers (4.x config, layer 1 dense, renormalised top-2 of 8, untied) and 4 layers (5.x
/// config, layers 0 and 2 dense, plain top-3 of 6, tied, 3 shards).
const MOE_FIXTURES: [&str; 2] = ["moe-norm-dense-4x", "moe-unnorm-sharded-5x"];

fn greedy_sampler() -> Sampler {
    Sampler::new(SamplingParams {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    })
}

#[test]
fn moe_prompt_ids_logits_and_greedy_continuation_match_transformers_chunked_or_not() {
    for name in MOE_FIXTURES {
        let exp = expected(name);
        let dir = materialize(name);
        let files = ModelSource::Dir(dir.path().to_owned()).open().unwrap();
        let cfg = &files.config;
        let moe = cfg.moe.as_ref().expect("a qwen3_moe config");
        let dense: Vec<usize> = (0..cfg.num_hidden_layers)
            .filter(|&l| !cfg.is_sparse_layer(l))
            .collect();
        assert!(
            !dense.is_empty() && dense.len() < cfg.num_hidden_layers,
            "{name}: dense {dense:?}"
        );
        eprintln!(
            "{name}: {} experts, top {}, normalised {}, dense layers {dense:?}",
            moe.num_experts, moe.num_experts_per_tok, moe.norm_topk_prob
        );
        let tokenizer = TextTokenizer::from_bytes(&files.tokenizer_json, "tokenizer.json").unwrap();
        let prompt_ids = tokenizer.encode(exp["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(prompt_ids, expected_ids(&exp, "prompt_ids"), "{name}: prompt ids");
        let all = 0..cfg.num_hidden_layers;
        let model = Qwen3::load(
            cfg,
            files.weights.as_ref(),
            all,
            StageParts::ALL,
            256,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let max_new = exp["max_new_tokens"].as_u64().unwrap() as usize;
        let want_logits = expected_logits(name);
        for chunk_size in [prompt_ids.len(), 7] {
            let kv = KvCache::new(cfg, 256, DType::F32, &Device::Cpu).unwrap();
            let logits: Vec<f32> = prefill_local(&model, &prompt_ids, chunk_size, &kv)
                .unwrap()
                .to_vec1()
                .unwrap();
            let err = relative_error(&logits, &want_logits);
            eprintln!("{name}: chunk {chunk_size}: logits relative error vs transformers {err:e}");
            assert!(
                err <= TOLERANCE,
                "{name}: chunk {chunk_size}: relative error {err:e}"
            );
            let mut sampler = greedy_sampler();
            let first = sampler
                .next_token(&Tensor::new(logits.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
            let eos = files.eos_token_ids();
            let generated = decode(
                &model,
                &kv,
                first,
                prompt_ids.len(),
                max_new,
                &mut sampler,
                &eos,
                |_| Ok(()),
            )
            .unwrap()
            .generated;
            assert_eq!(
                generated,
                expected_ids(&exp, "greedy_ids"),
                "{name}: chunk {chunk_size}: greedy continuation"
            );
        }
    }
}

/// Last-position logits of a one-chunk prefill of `prompt_ids` on the checkpoint in `dir`.
fn logits_of(dir: &Path, prompt_ids: &[u32]) -> Vec<f32> {
    let files = ModelSource::Dir(dir.to_owned()).open().unwrap();
    let cfg = &files.config;
    let all = 0..cfg.num_hidden_layers;
    let model = Qwen3::load(
        cfg,
        files.weights.as_ref(),
        all,
        StageParts::ALL,
        64,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let kv = KvCache::new(cfg, 64, DType::F32, &Device::Cpu).unwrap();
    let logits = prefill_local(&model, prompt_ids, prompt_ids.len(), &kv).unwrap();
    logits.to_vec1().unwrap()
}

#[test]
fn experts_saved_fused_by_transformers_5x_load_like_the_per_expert_tensors() {
    // save_pretrained(save_original_format=False) writes mlp.experts.gate_up_proj
    // (E, 2·I, hidden; each expert's gate rows, then its up rows) and mlp.experts.down_proj
    // (E, hidden, I) instead of one tensor per expert
    let name = "moe-norm-dense-4x";
    let dir = materialize(name);
    let prompt_ids = expected_ids(&expected(name), "prompt_ids");
    let per_expert = logits_of(dir.path(), &prompt_ids);
    let cfg = qwen3_mpi::model::Qwen3Config::from_file(&dir.path().join("config.json")).unwrap();
    let experts = cfg.moe.as_ref().unwrap().num_experts;
    let file = dir.path().join("model.safetensors");
    let mut tensors = load_kv(&file);
    let mut fused_layers = 0;
    for layer in (0..cfg.num_hidden_layers).filter(|&l| cfg.is_sparse_layer(l)) {
        let mut take = |e: usize, proj: &str| {
            tensors
                .remove(&format!("model.layers.{layer}.mlp.experts.{e}.{proj}.weight"))
                .unwrap()
        };
        let (mut gate_up, mut down) = (Vec::new(), Vec::new());
        for e in 0..experts {
            gate_up.push(Tensor::cat(&[take(e, "gate_proj"), take(e, "up_proj")], 0).unwrap()); // (2·I, hidden)
            down.push(take(e, "down_proj")); // (hidden, I)
        }
        let p = format!("model.layers.{layer}.mlp.experts");
        tensors.insert(format!("{p}.gate_up_proj"), Tensor::stack(&gate_up, 0).unwrap());
        tensors.insert(format!("{p}.down_proj"), Tensor::stack(&down, 0).unwrap());
        fused_layers += 1;
    }
    assert!(fused_layers > 0);
    assert!(!tensors.keys().any(|k| k.contains("experts.0.")));
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let fused = logits_of(dir.path(), &prompt_ids);
    assert!(
        fused
            .iter()
            .zip(&per_expert)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "fused experts give other logits"
    );
    let err = relative_error(&fused, &expected_logits(name));
    assert!(
        err <= TOLERANCE,
        "fused experts: relative error {err:e} vs transformers"
    );
}

#[test]
fn a_stage_maps_only_the_shards_of_its_layers_experts() {
    // 3 shards of 26 tensors: [embedding, layer 0 (dense), 14 of layer 1's], [13 of layer 1's,
    // layer 2 (dense), 2 of layer 3's], [25 of layer 3's, the final norm]
    let name = "moe-unnorm-sharded-5x";
    let dir = materialize(name);
    let cfg = qwen3_mpi::model::Qwen3Config::from_file(&dir.path().join("config.json")).unwrap();
    let none = StageParts {
        embed: false,
        head: false,
    };
    for (layers, parts, want) in [
        (
            0..1,
            StageParts {
                embed: true,
                head: false,
            },
            1,
        ),
        (2..3, none, 1),
        (1..2, none, 2),
        (0..4, StageParts::ALL, 3),
    ] {
        let mapped = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = mapped.clone();
        let after_map: qwen3_mpi::model::weights::AfterMap = std::sync::Arc::new(move |path, _| {
            seen.lock()
                .unwrap()
                .push(path.file_name().unwrap().to_string_lossy().into_owned());
            Ok(())
        });
        let source = qwen3_mpi::model::weights::Checkpoint::open_with(dir.path(), Some(after_map)).unwrap();
        Qwen3::load(&cfg, &source, layers.clone(), parts, 64, DType::F32, &Device::Cpu).unwrap();
        let files = mapped.lock().unwrap().clone();
        assert_eq!(files.len(), want, "layers {layers:?} mapped {files:?}");
    }
}

/// `mpirun -n ranks` on `model` with chunks of 7 tokens; the generated ids.
fn job(model: &Path, ranks: usize, sync: &str, layers: Option<&str>, prompt: &str, dump: &Path) -> Vec<u32> {
    let (model, dump) = (model.display().to_string(), dump.display().to_string());
    let mut args = vec!["--model", &model, "--prompt", prompt, "--max-new-tokens", "8"];
    args.extend([
        "--chunk-size",
        "7",
        "--sync",
        sync,
        "--dump",
        &dump,
        "--json",
        "--timeout",
        "60",
    ]);
    if let Some(layers) = layers {
        args.extend(["--layers", layers]);
    }
    let (code, stdout, stderr, _) = run_mpi(ranks, &args, &[], 120);
    assert_eq!(code, 0, "{ranks} ranks {sync} {layers:?}: {stderr}");
    expected_ids(&json_report(&stdout), "generated_ids")
}

#[test]
fn moe_under_mpirun_every_rank_count_and_sync_gives_transformers_tokens_and_the_one_process_cache() {
    // (fixture, ranks, sync, --layers): 1 to 4 ranks, both syncs, uneven splits that put dense
    // and sparse layers on different ranks
    let cases = [
        ("moe-unnorm-sharded-5x", 2, "ring", Some("3,1")),
        ("moe-unnorm-sharded-5x", 3, "allgather", Some("1,2,1")),
        ("moe-unnorm-sharded-5x", 4, "ring", None),
        ("moe-norm-dense-4x", 2, "allgather", Some("1,2")),
    ];
    let mut baselines = HashMap::new();
    for (name, ranks, sync, layers) in cases {
        let exp = expected(name);
        let prompt = exp["prompt"].as_str().unwrap().to_owned();
        let reference = expected_ids(&exp, "greedy_ids");
        let (model, base) = baselines.entry(name).or_insert_with(|| {
            let model = materialize(name);
            let dir = tempfile::tempdir().unwrap();
            let ids = job(model.path(), 1, "allgather", None, &prompt, dir.path());
            assert_eq!(ids, reference, "{name}: 1 rank: tokens differ from transformers");
            let base = load_kv(&dir.path().join("kv-rank0.safetensors"));
            (model, base)
        });
        let what = format!("{name}: {ranks} ranks, {sync}, layers {layers:?}");
        let dir = tempfile::tempdir().unwrap();
        let ids = job(model.path(), ranks, sync, layers, &prompt, dir.path());
        assert_eq!(ids, reference, "{what}: tokens differ from transformers");
        for rank in 0..ranks {
            let cache = load_kv(&dir.path().join(format!("kv-rank{rank}.safetensors")));
            assert_same_cache(&cache, base, &format!("{what}, rank {rank}"));
        }
    }
}

#[test]
fn tiny_moe_runs_built_in_on_three_ranks_like_one() {
    let args = [
        "--model",
        "tiny-moe",
        "--max-new-tokens",
        "6",
        "--chunk-size",
        "19",
        "--json",
        "--timeout",
        "60",
    ];
    let run = |ranks| {
        let (code, stdout, stderr, _) = run_mpi(ranks, &args, &[], 120);
        assert_eq!(code, 0, "tiny-moe, {ranks} ranks: {stderr}");
        let report = json_report(&stdout);
        assert_eq!(report["model"], "tiny-moe (built-in)");
        assert_eq!(report["random_weights"], true);
        expected_ids(&report, "generated_ids")
    };
    let one = run(1);
    assert_eq!(one.len(), 6);
    assert_eq!(run(3), one, "3 ranks against 1");
}

#[test]
fn op_spans_time_each_sparse_layers_moe_block_inside_its_layer() {
    use qwen3_mpi::trace::spans::{Span, SpanKind, SpanRow};
    let name = "moe-unnorm-sharded-5x"; // layers 1 and 3 sparse
    let model = materialize(name);
    let m = model.path().display().to_string();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("moe.h5");
    let p = path.display().to_string();
    let prompt = expected(name)["prompt"].as_str().unwrap().to_owned(); // 38 tokens: 6 chunks of 7
    let args = [
        "--model",
        &m,
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "2",
        "--chunk-size",
        "7",
    ];
    let args = [&args[..], &["--trace", &p, "--op-spans"]].concat();
    let (code, _, stderr, _) = run_mpi(2, &args, &[], 120);
    assert_eq!(code, 0, "{stderr}");
    let file = hdf5::File::open(&path).unwrap();
    let mut moe = Vec::new();
    for rank in 0..2 {
        let rows: Vec<SpanRow> = file
            .dataset(&format!("ranks/{rank}/events"))
            .unwrap()
            .read_raw()
            .unwrap();
        let spans: Vec<Span> = rows.iter().map(SpanRow::span).collect();
        for s in spans.iter().filter(|s| s.kind == SpanKind::Moe) {
            let layer = spans
                .iter()
                .find(|l| l.kind == SpanKind::LayerCompute && (l.layer, l.chunk) == (s.layer, s.chunk))
                .unwrap_or_else(|| {
                    panic!(
                        "rank {rank}: MoE span of layer {} chunk {} outside a layer",
                        s.layer, s.chunk
                    )
                });
            assert!(
                layer.t_start_ns <= s.t_start_ns && s.t_end_ns <= layer.t_end_ns && s.t_end_ns > s.t_start_ns,
                "rank {rank}: {s:?} not inside {layer:?}"
            );
            moe.push((s.layer, s.chunk));
        }
    }
    moe.sort();
    let want: Vec<(i32, i32)> = [1, 3].iter().flat_map(|&l| (0..6).map(move |c| (l, c))).collect();
    assert_eq!(
        moe, want,
        "one MoE span per sparse layer and chunk, none for the dense layers"
    );
}
