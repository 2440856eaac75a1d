//! `config.json` of a Qwen3 checkpoint, dense (`qwen3`) or mixture-of-experts (`qwen3_moe`,
//! its MoE fields in `moe_config.rs`), in the transformers 4.x and 5.x spellings.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

pub use super::moe_config::MoeConfig;
use super::moe_config::{self, check_unsupported_moe};

/// The largest value each size field may take: far beyond any published Qwen3 (Qwen3-235B has 94
/// layers, hidden 4096, 64 heads, 151,936 tokens, 40,960 positions), and small enough that every
/// product the job forms from them (weights, cache, schedule) fits 64 bits: all experts of all
/// layers at the largest sizes are 3·2^58 parameters, 3·2^60 bytes in f32 (Qwen3-235B-A22B has
/// 128 experts of 1536, 8 per token).
const FIELD_LIMITS: [(&str, u64); 13] = [
    ("hidden_size", 1 << 16),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 4096),
    ("num_attention_heads", 4096),
    ("num_key_value_heads", 4096),
    ("head_dim", 1024),
    ("max_position_embeddings", 1 << 24),
    ("vocab_size", 1 << 24),
    ("num_experts", 1024),
    ("num_local_experts", 1024),
    ("num_experts_per_tok", 1024),
    ("moe_intermediate_size", 1 << 20),
    ("decoder_sparse_step", 4096),
];

/// The architecture hyper-parameters this implementation reads and supports.
/// (Deserialize: read back from a trace's `model_config`, which older traces wrote without
/// the optional fields.)
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Qwen3Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub vocab_size: usize,
    /// Checkpoint dtype as written (`torch_dtype` or `dtype`), e.g. "bfloat16".
    #[serde(default)]
    pub checkpoint_dtype: Option<String>,
    /// EOS ids from config.json (generation_config.json may add more).
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
    /// The sparse MoE block (`qwen3_moe`); `None` for dense Qwen3.
    #[serde(default)]
    pub moe: Option<MoeConfig>,
}

impl Qwen3Config {
    /// Reads and validates `config.json`; every error names the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(&json).with_context(|| format!("{}", path.display()))
    }

    /// Parses a config object; errors name the offending field.
    pub fn from_json(json: &Value) -> Result<Self> {
        let obj = json.as_object().context("config is not a JSON object")?;
        let sparse = check_supported(obj)?;
        let usize_field = |name: &str| read_usize(obj, name);
        let f64_field = |name: &str| -> Result<f64> {
            let v = obj.get(name).with_context(|| format!("missing field `{name}`"))?;
            v.as_f64()
                .with_context(|| format!("field `{name}` must be a number, got {v}"))
        };
        let num_hidden_layers = usize_field("num_hidden_layers")?;
        let cfg = Self {
            hidden_size: usize_field("hidden_size")?,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads: usize_field("num_attention_heads")?,
            num_key_value_heads: usize_field("num_key_value_heads")?,
            head_dim: usize_field("head_dim")?,
            rms_norm_eps: f64_field("rms_norm_eps")?,
            rope_theta: rope_theta(obj)?,
            max_position_embeddings: usize_field("max_position_embeddings")?,
            tie_word_embeddings: match obj.get("tie_word_embeddings") {
                None | Some(Value::Null) => false,
                Some(v) => v
                    .as_bool()
                    .with_context(|| format!("field `tie_word_embeddings` must be a bool, got {v}"))?,
            },
            vocab_size: usize_field("vocab_size")?,
            checkpoint_dtype: obj
                .get("dtype")
                .or_else(|| obj.get("torch_dtype"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            eos_token_ids: token_ids(obj.get("eos_token_id")).context("field `eos_token_id`")?,
            moe: if sparse {
                Some(moe_config::read(obj, num_hidden_layers, &usize_field)?)
            } else {
                None
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether decoder layer `layer` runs the sparse MoE block (else the dense MLP).
    pub fn is_sparse_layer(&self, layer: usize) -> bool {
        self.moe.as_ref().is_some_and(|moe| moe.is_sparse(layer))
    }

    fn validate(&self) -> Result<()> {
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            bail!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim ({}) must be even for RoPE", self.head_dim);
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            bail!("field `rms_norm_eps` must be positive, got {}", self.rms_norm_eps);
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            bail!("RoPE theta must be positive, got {}", self.rope_theta);
        }
        Ok(())
    }
}

/// A positive integer field, bounded by [`FIELD_LIMITS`] before anything is sized from it.
fn read_usize(obj: &Map<String, Value>, name: &str) -> Result<usize> {
    let v = obj.get(name).with_context(|| format!("missing field `{name}`"))?;
    let n = v
        .as_u64()
        .with_context(|| format!("field `{name}` must be a non-negative integer, got {v}"))?;
    if n == 0 {
        bail!("field `{name}` must be positive");
    }
    if let Some(&(_, limit)) = FIELD_LIMITS.iter().find(|(field, _)| *field == name) {
        if n > limit {
            bail!("field `{name}` is {n}, more than this implementation takes ({limit})");
        }
    }
    Ok(n as usize)
}

/// Rejects configs whose features this implementation does not have, instead of running them
/// with silently wrong output; whether the model is the mixture-of-experts `qwen3_moe`.
fn check_supported(obj: &Map<String, Value>) -> Result<bool> {
    let (sparse, architecture) = match obj.get("model_type").and_then(Value::as_str) {
        Some("qwen3") => (false, "Qwen3ForCausalLM"),
        Some("qwen3_moe") => (true, "Qwen3MoeForCausalLM"),
        Some(other) => bail!("unsupported model_type `{other}` (only `qwen3` and `qwen3_moe`)"),
        None => bail!("missing field `model_type` (expected \"qwen3\" or \"qwen3_moe\")"),
    };
    if let Some(architectures) = obj.get("architectures").and_then(Value::as_array) {
        let names: Vec<&str> = architectures.iter().filter_map(Value::as_str).collect();
        if !names.is_empty() && !names.contains(&architecture) {
            bail!(
                "unsupported architecture {} (field `architectures`; model_type `{}` takes {architecture})",
                names.join(", "),
                if sparse { "qwen3_moe" } else { "qwen3" }
            );
        }
    }
    if !sparse {
        for key in [
            "num_experts",
            "num_local_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
        ] {
            if obj.get(key).is_some_and(|v| !v.is_null() && v != 0) {
                bail!(
                    "unsupported feature: mixture-of-experts (`{key}` is set) with model_type `qwen3` \
                     (Qwen3-MoE is model_type `qwen3_moe`)"
                );
            }
        }
    }
    check_unsupported_moe(obj)?;
    if obj.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
        bail!("unsupported feature: sliding-window attention (`use_sliding_window` is true)");
    }
    if obj.get("attention_bias").and_then(Value::as_bool) == Some(true) {
        bail!("unsupported feature: `attention_bias` is true");
    }
    if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            bail!("unsupported `hidden_act` `{act}` (only silu)");
        }
    }
    for key in ["rope_scaling", "rope_parameters"] {
        if let Some(Value::Object(rope)) = obj.get(key) {
            let kind = rope
                .get("rope_type")
                .or_else(|| rope.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                bail!("unsupported RoPE scaling `{kind}` in `{key}` (only default RoPE)");
            }
        }
    }
    Ok(sparse)
}

/// RoPE theta: top-level `rope_theta` (transformers 4.x) or `rope_parameters.rope_theta` (5.x);
/// transformers' default 10000 when neither is written.
fn rope_theta(obj: &Map<String, Value>) -> Result<f64> {
    let nested = obj.get("rope_parameters").and_then(|p| p.get("rope_theta"));
    match nested.or_else(|| obj.get("rope_theta")) {
        None | Some(Value::Null) => Ok(10_000.0),
        Some(v) => v
            .as_f64()
            .with_context(|| format!("RoPE theta must be a number, got {v}")),
    }
}

/// A token id or list of ids (`eos_token_id` is written both ways).
pub fn token_ids(v: Option<&Value>) -> Result<Vec<u32>> {
    let as_id = |v: &Value| -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .with_context(|| format!("expected a token id, got {v}"))
    };
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "max_position_embeddings": 512, "tie_word_embeddings": true, "vocab_size": 151936,
            "torch_dtype": "bfloat16", "eos_token_id": 151645
        })
    }

    #[test]
    fn reads_4x_and_5x_rope_theta() {
        let v4 = Qwen3Config::from_json(&base()).unwrap();
        let mut j5 = base();
        let o = j5.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("torch_dtype");
        o.insert("dtype".into(), json!("bfloat16"));
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": 1000000.0}),
        );
        let v5 = Qwen3Config::from_json(&j5).unwrap();
        assert_eq!(v4, v5);
        assert_eq!(v4.head_dim, 32);
    }

    #[test]
    fn rejects_unsupported_features_with_their_name() {
        for (key, value, needle) in [
            ("use_sliding_window", json!(true), "sliding-window"),
            (
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 4.0}),
                "yarn",
            ),
            ("model_type", json!("qwen2_moe"), "qwen2_moe"),
            ("num_experts", json!(8), "mixture-of-experts"),
            ("shared_expert_intermediate_size", json!(512), "shared experts"),
        ] {
            let mut j = base();
            j.as_object_mut().unwrap().insert(key.into(), value);
            let err = format!("{:#}", Qwen3Config::from_json(&j).unwrap_err());
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn missing_field_is_named() {
        let mut j = base();
        j.as_object_mut().unwrap().remove("head_dim");
        let err = format!("{:#}", Qwen3Config::from_json(&j).unwrap_err());
        assert!(err.contains("head_dim"), "{err}");
    }

    /// Qwen3-30B-A3B's config.json as published (transformers 4.51), at toy sizes.
    fn moe_4x() -> Value {
        let mut j = base();
        let o = j.as_object_mut().unwrap();
        o.insert("model_type".into(), json!("qwen3_moe"));
        o.insert("architectures".into(), json!(["Qwen3MoeForCausalLM"]));
        for (key, value) in [
            ("num_experts", json!(8)),
            ("num_experts_per_tok", json!(2)),
            ("moe_intermediate_size", json!(16)),
            ("norm_topk_prob", json!(true)),
            ("decoder_sparse_step", json!(1)),
            ("mlp_only_layers", json!([1])),
            ("output_router_logits", json!(false)),
            ("router_aux_loss_coef", json!(0.001)),
        ] {
            o.insert(key.into(), value);
        }
        j
    }

    #[test]
    fn reads_qwen3_moe_in_the_4x_and_5x_spellings() {
        let v4 = Qwen3Config::from_json(&moe_4x()).unwrap();
        let mut j5 = moe_4x();
        let o = j5.as_object_mut().unwrap();
        o.remove("num_experts");
        o.insert("num_local_experts".into(), json!(8));
        o.remove("rope_theta");
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": 1000000.0}),
        );
        assert_eq!(Qwen3Config::from_json(&j5).unwrap(), v4);
        let moe = v4.moe.as_ref().unwrap();
        assert_eq!(
            (
                moe.num_experts,
                moe.num_experts_per_tok,
                moe.moe_intermediate_size
            ),
            (8, 2, 16)
        );
        assert!(moe.norm_topk_prob);
        let sparse: Vec<bool> = (0..3).map(|l| v4.is_sparse_layer(l)).collect();
        assert_eq!(sparse, [true, false, true], "mlp_only_layers [1]");
        assert!(Qwen3Config::from_json(&base()).unwrap().moe.is_none());
    }

    #[test]
    fn decoder_sparse_step_picks_the_sparse_layers_as_transformers_does() {
        let mut j = moe_4x();
        let o = j.as_object_mut().unwrap();
        o.insert("decoder_sparse_step".into(), json!(2));
        o.insert("mlp_only_layers".into(), json!([]));
        o.remove("norm_topk_prob"); // transformers' default: false
        let cfg = Qwen3Config::from_json(&j).unwrap();
        // (layer + 1) % step == 0
        let sparse: Vec<bool> = (0..3).map(|l| cfg.is_sparse_layer(l)).collect();
        assert_eq!(sparse, [false, true, false]);
        assert!(!cfg.moe.unwrap().norm_topk_prob);
    }

    #[test]
    fn moe_fields_are_bounded_and_checked_by_name() {
        for (key, value, needle) in [
            (
                "num_experts",
                json!(1u64 << 40),
                "field `num_experts` is 1099511627776, more than",
            ),
            (
                "moe_intermediate_size",
                json!(1u64 << 21),
                "field `moe_intermediate_size` is 2097152",
            ),
            (
                "num_experts_per_tok",
                json!(9),
                "`num_experts_per_tok` (9) is more than the 8 experts",
            ),
            (
                "num_experts_per_tok",
                json!(0),
                "field `num_experts_per_tok` must be positive",
            ),
            (
                "num_local_experts",
                json!(16),
                "`num_experts` (8) and `num_local_experts` (16) disagree",
            ),
            (
                "mlp_only_layers",
                json!([3]),
                "`mlp_only_layers`: 3 is not a layer",
            ),
            (
                "decoder_sparse_step",
                json!(0),
                "field `decoder_sparse_step` must be positive",
            ),
            ("norm_topk_prob", json!(1), "`norm_topk_prob` must be a bool"),
            (
                "n_shared_experts",
                json!(2),
                "shared experts (field `n_shared_experts` is 2)",
            ),
            ("scoring_func", json!("sigmoid"), "a router other than softmax"),
            (
                "architectures",
                json!(["Qwen3ForCausalLM"]),
                "unsupported architecture Qwen3ForCausalLM",
            ),
        ] {
            let mut j = moe_4x();
            j.as_object_mut().unwrap().insert(key.into(), value);
            let err = format!("{:#}", Qwen3Config::from_json(&j).unwrap_err());
            assert!(err.contains(needle), "{key}: {err}");
        }
        let mut j = moe_4x();
        j.as_object_mut().unwrap().remove("num_experts");
        let err = format!("{:#}", Qwen3Config::from_json(&j).unwrap_err());
        assert!(
            err.contains("missing field `num_experts` (4.x) or `num_local_experts` (5.x)"),
            "{err}"
        );
        // the neutral values of the refused features are accepted
        let mut j = moe_4x();
        let o = j.as_object_mut().unwrap();
        o.insert("scoring_func".into(), json!("softmax"));
        o.insert("shared_expert_intermediate_size".into(), json!(0));
        assert!(Qwen3Config::from_json(&j).is_ok());
    }
}

/// Configs of published shapes (random weights in the tests need only their numbers).
#[cfg(test)]
pub mod shapes {
    use super::Qwen3Config;
    use crate::model::MoeConfig;

    /// Qwen3-8B's `config.json`, as the fields read.
    pub fn qwen3_8b() -> Qwen3Config {
        Qwen3Config {
            hidden_size: 4096,
            intermediate_size: 12288,
            num_hidden_layers: 36,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            max_position_embeddings: 40960,
            tie_word_embeddings: false,
            vocab_size: 151936,
            checkpoint_dtype: None,
            eos_token_ids: vec![],
            moe: None,
        }
    }

    /// Qwen3-0.6B's shape (`scripts/gpu_check/make_checkpoint.py` makes its random checkpoints).
    pub fn qwen3_0_6b() -> Qwen3Config {
        Qwen3Config {
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            tie_word_embeddings: true,
            ..qwen3_8b()
        }
    }

    /// Qwen3-30B-A3B's `config.json`, as the fields read.
    pub fn qwen3_30b_a3b() -> Qwen3Config {
        Qwen3Config {
            hidden_size: 2048,
            intermediate_size: 6144,
            num_hidden_layers: 48,
            num_attention_heads: 32,
            num_key_value_heads: 4,
            moe: Some(MoeConfig {
                num_experts: 128,
                num_experts_per_tok: 8,
                moe_intermediate_size: 768,
                norm_topk_prob: true,
                decoder_sparse_step: 1,
                mlp_only_layers: vec![],
            }),
            ..qwen3_8b()
        }
    }
}
