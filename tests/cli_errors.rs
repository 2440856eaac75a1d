//! Bad input: a non-zero exit and one clear line naming the cause.

mod common;

use std::path::Path;

use common::*;
use qwen3_mpi::model::Qwen3Config;

/// Runs with `args` and asserts: exit code 1, stderr is one `error:` line containing `needle`.
fn assert_fails_with(args: &[&str], needle: &str) {
    let (code, _stdout, stderr) = run_cli(args);
    assert_eq!(code, 1, "args {args:?}: exit code {code}, stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "args {args:?}: expected one line, got:\n{stderr}");
    assert!(
        lines[0].contains("error:") && lines[0].contains(needle),
        "args {args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
}

fn model_arg(dir: &Path) -> String {
    dir.display().to_string()
}

#[test]
fn missing_model_dir() {
    assert_fails_with(
        &["--model", "/nonexistent/qwen3"],
        "/nonexistent/qwen3 does not exist",
    );
}

#[test]
fn config_missing_malformed_or_incomplete() {
    let dir = materialize("gqa-tied-5x");
    let m = model_arg(dir.path());
    let config = dir.path().join("config.json");
    let original = std::fs::read_to_string(&config).unwrap();

    std::fs::write(&config, "{ not json").unwrap();
    assert_fails_with(&["--model", &m], "config.json is not valid JSON");

    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    json.as_object_mut().unwrap().remove("num_key_value_heads");
    std::fs::write(&config, json.to_string()).unwrap();
    assert_fails_with(&["--model", &m], "missing field `num_key_value_heads`");

    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    json["model_type"] = "llama".into();
    std::fs::write(&config, json.to_string()).unwrap();
    assert_fails_with(&["--model", &m], "unsupported model_type `llama`");

    std::fs::remove_file(&config).unwrap();
    assert_fails_with(&["--model", &m], "config.json: not found");
}

#[test]
fn missing_tensor_and_wrong_shape_name_file_and_tensor() {
    let dir = materialize("gqa-tied-5x");
    let m = model_arg(dir.path());
    let cfg = Qwen3Config::from_file(&dir.path().join("config.json")).unwrap();
    write_checkpoint_with(dir.path(), &cfg, 11, 1, |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    assert_fails_with(
        &["--model", &m],
        "model.safetensors: tensor model.layers.1.mlp.up_proj.weight is missing",
    );

    write_checkpoint_with(dir.path(), &cfg, 11, 1, |t| {
        let w = t["model.layers.2.self_attn.k_proj.weight"]
            .narrow(0, 0, 32)
            .unwrap();
        t.insert("model.layers.2.self_attn.k_proj.weight".into(), w);
    });
    assert_fails_with(
        &["--model", &m],
        "tensor model.layers.2.self_attn.k_proj.weight has shape [32, 64], expected [64, 64]",
    );
}

#[test]
fn missing_shard_and_truncated_file() {
    let dir = materialize("mqa-tied-sharded-5x");
    let m = model_arg(dir.path());
    let shard = dir.path().join("model-00002-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_with(
        &["--model", &m],
        "model-00002-of-00003.safetensors: not a valid safetensors file",
    );
    std::fs::remove_file(&shard).unwrap();
    assert_fails_with(
        &["--model", &m],
        "model-00002-of-00003.safetensors: file named in model.safetensors.index.json does not exist",
    );
}

#[test]
fn missing_or_invalid_tokenizer() {
    let dir = materialize("gqa-tied-5x");
    let m = model_arg(dir.path());
    let tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(&tokenizer, "{}").unwrap();
    assert_fails_with(&["--model", &m], "tokenizer.json: invalid tokenizer");
    std::fs::remove_file(&tokenizer).unwrap();
    assert_fails_with(&["--model", &m], "tokenizer.json: cannot read");
}

#[test]
fn empty_prompt_and_prompt_too_long() {
    assert_fails_with(&["--prompt", ""], "the prompt is empty");
    let dir = materialize("gqa-untied-odd-4x"); // max_position_embeddings 64
    let m = model_arg(dir.path());
    assert_fails_with(
        &["--model", &m, "--synthetic-prompt", "65"],
        "--synthetic-prompt 65: more tokens than the model's max_position_embeddings (64)",
    );
    assert_fails_with(
        &["--model", &m, "--synthetic-prompt", "60", "--max-new-tokens", "8"],
        "exceeds max_position_embeddings (64)",
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--chunk-size", "0"][..],
        &["--dtype", "f64"],
        &["--device", "tpu"],
        &["--prompt", "a", "--synthetic-prompt", "3"],
    ] {
        let (code, _, stderr) = run_cli(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
    // sampling flags are checked like the others: the flag named, exit 2
    for (args, needle) in [
        (&["--top-p", "0"][..], "is not a top-p: a number in (0, 1]"),
        (&["--top-p", "1.5"], "is not a top-p"),
        (&["--top-k", "0"], "is not a top-k: a whole number >= 1"),
        (&["--temperature", "nan"], "is not a temperature: a number >= 0"),
        (&["--temperature=-1"], "is not a temperature"),
    ] {
        let (code, _, stderr) = run_cli(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let flag = args[0].split('=').next().unwrap_or_default();
        assert!(
            stderr.contains(flag) && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_model_path_naming_a_file_says_to_give_its_directory() {
    let dir = materialize("gqa-tied-5x");
    let config = dir.path().join("config.json");
    let c = config.display().to_string();
    assert_fails_with(&["--model", &c], "is a file; give the model's directory");
}

#[test]
fn fixture_directory_runs_from_the_command_line() {
    let dir = materialize("gqa-tied-5x");
    let exp = expected("gqa-tied-5x");
    let m = model_arg(dir.path());
    let prompt = exp["prompt"].as_str().unwrap();
    let (code, stdout, stderr) = run_cli(&[
        "--model",
        &m,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        expected_ids(&report, "generated_ids"),
        expected_ids(&exp, "greedy_ids")
    );
    assert_eq!(
        report["prompt_tokens"].as_u64().unwrap() as usize,
        expected_ids(&exp, "prompt_ids").len()
    );
}
