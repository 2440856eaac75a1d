//! Every fixture shape against Hugging Face transformers' outputs on the same weights, and the
//! chunking and layer-range seams against the whole model.

mod common;

use candle_core::{DType, Device};
use common::*;
use qwen3_mpi::generate::{decode, prefill_local, Sampler, SamplingParams};
use qwen3_mpi::model::source::{ModelFiles, ModelSource};
use qwen3_mpi::model::{KvCache, Qwen3, StageParts};
use qwen3_mpi::tokenize::{ChatTemplate, TextTokenizer};

const TOLERANCE: f32 = 1e-5;

struct Loaded {
    _dir: tempfile::TempDir,
    files: ModelFiles,
    model: Qwen3,
    prompt_ids: Vec<u32>,
}

fn load(name: &str) -> Loaded {
    let dir = materialize(name);
    let files = ModelSource::Dir(dir.path().to_owned()).open().unwrap();
    let tokenizer = TextTokenizer::from_bytes(&files.tokenizer_json, "tokenizer.json").unwrap();
    let exp = expected(name);
    let prompt_ids = tokenizer.encode(exp["prompt"].as_str().unwrap()).unwrap();
    let cfg = files.config.clone();
    let model = Qwen3::load(
        &cfg,
        files.weights.as_ref(),
        0..cfg.num_hidden_layers,
        StageParts::ALL,
        256,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    Loaded {
        _dir: dir,
        files,
        model,
        prompt_ids,
    }
}

fn prefill(l: &Loaded, chunk_size: usize) -> (Vec<f32>, KvCache) {
    let kv = KvCache::new(&l.files.config, 256, DType::F32, &Device::Cpu).unwrap();
    let logits = prefill_local(&l.model, &l.prompt_ids, chunk_size, &kv).unwrap();
    (logits.to_vec1().unwrap(), kv)
}

fn greedy(l: &Loaded, logits: &[f32], kv: &KvCache, max_new: usize) -> Vec<u32> {
    let mut sampler = Sampler::new(SamplingParams {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    });
    let first = sampler
        .next_token(&candle_core::Tensor::new(logits, &Device::Cpu).unwrap())
        .unwrap();
    let eos = l.files.eos_token_ids();
    decode(
        &l.model,
        kv,
        first,
        l.prompt_ids.len(),
        max_new,
        &mut sampler,
        &eos,
        |_| Ok(()),
    )
    .unwrap()
    .generated
}

#[test]
fn prompt_ids_and_chat_template_match_transformers() {
    for name in FIXTURES {
        let exp = expected(name);
        let l = load(name);
        assert_eq!(
            l.prompt_ids,
            expected_ids(&exp, "prompt_ids"),
            "{name}: prompt ids"
        );
        let template = ChatTemplate::from_tokenizer_config(
            l.files.tokenizer_config.as_ref().unwrap(),
            "tokenizer_config.json",
        )
        .unwrap();
        let chat_text = template
            .render_user_prompt(exp["chat_message"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            chat_text,
            exp["chat_text"].as_str().unwrap(),
            "{name}: chat template text"
        );
        let tokenizer = TextTokenizer::from_bytes(&l.files.tokenizer_json, "tokenizer.json").unwrap();
        assert_eq!(
            tokenizer.encode(&chat_text).unwrap(),
            expected_ids(&exp, "chat_ids"),
            "{name}: chat ids"
        );
    }
}

#[test]
fn last_position_logits_and_greedy_continuation_match_transformers() {
    for name in FIXTURES {
        let exp = expected(name);
        let l = load(name);
        let (logits, kv) = prefill(&l, l.prompt_ids.len());
        let err = relative_error(&logits, &expected_logits(name));
        eprintln!("{name}: logits relative error vs transformers {err:e}");
        assert!(
            err <= TOLERANCE,
            "{name}: logits relative error {err:e} > {TOLERANCE:e}"
        );
        let max_new = exp["max_new_tokens"].as_u64().unwrap() as usize;
        assert_eq!(
            greedy(&l, &logits, &kv, max_new),
            expected_ids(&exp, "greedy_ids"),
            "{name}: greedy continuation"
        );
    }
}

#[test]
fn chunked_prefill_equals_unchunked() {
    for name in FIXTURES {
        let l = load(name);
        let whole = l.prompt_ids.len();
        let (reference, ref_kv) = prefill(&l, whole);
        let reference_tokens = greedy(&l, &reference, &ref_kv, 6);
        for chunk_size in [1, 7, whole] {
            let (logits, kv) = prefill(&l, chunk_size);
            let err = relative_error(&logits, &reference);
            assert!(
                err <= TOLERANCE,
                "{name}: chunk size {chunk_size}: relative error {err:e}"
            );
            assert_eq!(
                greedy(&l, &logits, &kv, 6),
                reference_tokens,
                "{name}: chunk size {chunk_size}"
            );
        }
    }
}

#[test]
fn layer_ranges_on_separate_stages_equal_the_whole_model() {
    for name in FIXTURES {
        let l = load(name);
        let cfg = &l.files.config;
        let n = cfg.num_hidden_layers;
        let (reference, _) = prefill(&l, l.prompt_ids.len());
        // Stages hold only their layers: first has the embedding, last the head.
        let cuts: Vec<usize> = match n {
            1 => vec![0, 1],
            2 => vec![0, 1, 2],
            _ => vec![0, 1, n / 2 + 1, n],
        };
        let kv = KvCache::new(cfg, 256, DType::F32, &Device::Cpu).unwrap();
        let mut hidden = None;
        for (i, pair) in cuts.windows(2).enumerate() {
            let parts = StageParts {
                embed: i == 0,
                head: pair[1] == n,
            };
            let stage = Qwen3::load(
                cfg,
                l.files.weights.as_ref(),
                pair[0]..pair[1],
                parts,
                256,
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
            let input = match hidden.take() {
                None => stage.embed(&l.prompt_ids).unwrap(),
                Some(h) => h,
            };
            let out = stage.forward_layers(pair[0]..pair[1], input, 0, &kv).unwrap();
            if parts.head {
                let logits: Vec<f32> = stage.logits_last(&out).unwrap().to_vec1().unwrap();
                let err = relative_error(&logits, &reference);
                assert!(
                    err <= TOLERANCE,
                    "{name}: staged {cuts:?}: relative error {err:e}"
                );
            }
            hidden = Some(out);
            // A stage refuses a layer it does not hold.
            if pair[0] > 0 {
                let probe = hidden.as_ref().unwrap();
                assert!(
                    stage.forward_layer(0, probe, 0, &kv).is_err(),
                    "{name}: stage {pair:?} ran layer 0"
                );
            }
        }
    }
}
