//! The mixture-of-experts fields of a `qwen3_moe` config.json (`Qwen3MoeForCausalLM`), in the
//! transformers 4.x spelling (`num_experts`, as published) and the 5.x one
//! (`num_local_experts`), and the MoE features of other architectures, refused by name.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// The sparse MoE block of Qwen3-MoE: a softmax router over `num_experts` SwiGLU experts, the
/// top `num_experts_per_tok` of them per token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    /// Each expert's intermediate size.
    pub moe_intermediate_size: usize,
    /// Whether the top-k probabilities are divided by their sum (Qwen3-30B-A3B: true).
    pub norm_topk_prob: bool,
    /// Layer `l` is sparse when `(l + 1) % decoder_sparse_step == 0` (and not in
    /// `mlp_only_layers`); the others run the dense MLP of `intermediate_size`.
    pub decoder_sparse_step: usize,
    /// Layers that run the dense MLP.
    pub mlp_only_layers: Vec<usize>,
}

impl MoeConfig {
    /// Whether decoder layer `layer` runs the sparse block (as transformers'
    /// `Qwen3MoeDecoderLayer` decides it).
    pub fn is_sparse(&self, layer: usize) -> bool {
        !self.mlp_only_layers.contains(&layer) && (layer + 1).is_multiple_of(self.decoder_sparse_step)
    }
}

/// MoE features of other architectures that change the output: (field, what it is). A config
/// that sets one to anything but its "not used" value ([`is_off`]) is refused by name.
const REFUSED: [(&str, &str); 9] = [
    ("shared_expert_intermediate_size", "shared experts"),
    ("n_shared_experts", "shared experts"),
    ("num_shared_experts", "shared experts"),
    ("moe_shared_expert_intermediate_size", "shared experts"),
    ("scoring_func", "a router other than softmax"),
    ("topk_method", "a router other than greedy top-k"),
    ("routed_scaling_factor", "scaled routing weights"),
    ("n_group", "group-limited routing"),
    ("first_k_dense_replace", "leading dense layers"),
];

/// Whether `value` of a refused field still means the feature is off.
fn is_off(field: &str, value: &Value) -> bool {
    match (field, value) {
        (_, Value::Null) => true,
        ("scoring_func", Value::String(s)) => s == "softmax",
        ("topk_method", Value::String(s)) => s == "greedy",
        ("routed_scaling_factor", v) => v.as_f64() == Some(1.0),
        ("n_group", v) => v.as_u64() == Some(1),
        (_, v) => v.as_u64() == Some(0),
    }
}

/// Refuses every MoE feature this implementation does not have (any model type).
pub fn check_unsupported_moe(obj: &Map<String, Value>) -> Result<()> {
    for (field, what) in &REFUSED {
        if let Some(value) = obj.get(*field) {
            if !is_off(field, value) {
                bail!("unsupported mixture-of-experts feature: {what} (field `{field}` is {value})");
            }
        }
    }
    Ok(())
}

/// The MoE fields of a `qwen3_moe` config; `usize_field` reads a bounded positive integer.
pub fn read(
    obj: &Map<String, Value>,
    num_hidden_layers: usize,
    usize_field: &dyn Fn(&str) -> Result<usize>,
) -> Result<MoeConfig> {
    let num_experts = match (obj.get("num_experts"), obj.get("num_local_experts")) {
        (Some(a), Some(b)) if !a.is_null() && !b.is_null() && a != b => bail!(
            "fields `num_experts` ({a}) and `num_local_experts` ({b}) disagree (one is the 4.x \
             spelling of the other)"
        ),
        (Some(v), _) if !v.is_null() => usize_field("num_experts")?,
        (_, Some(v)) if !v.is_null() => usize_field("num_local_experts")?,
        _ => bail!("missing field `num_experts` (4.x) or `num_local_experts` (5.x)"),
    };
    let num_experts_per_tok = usize_field("num_experts_per_tok")?;
    if num_experts_per_tok > num_experts {
        bail!("field `num_experts_per_tok` ({num_experts_per_tok}) is more than the {num_experts} experts");
    }
    let decoder_sparse_step = match obj.get("decoder_sparse_step") {
        None | Some(Value::Null) => 1,
        Some(_) => usize_field("decoder_sparse_step")?,
    };
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok,
        moe_intermediate_size: usize_field("moe_intermediate_size")?,
        norm_topk_prob: match obj.get("norm_topk_prob") {
            None | Some(Value::Null) => false, // transformers' default
            Some(v) => v
                .as_bool()
                .with_context(|| format!("field `norm_topk_prob` must be a bool, got {v}"))?,
        },
        decoder_sparse_step,
        mlp_only_layers: mlp_only_layers(obj.get("mlp_only_layers"), num_hidden_layers)?,
    })
}

/// `mlp_only_layers`: layer indices below `layers` (null or absent: none).
fn mlp_only_layers(value: Option<&Value>, layers: usize) -> Result<Vec<usize>> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(v) => bail!("field `mlp_only_layers` must be a list of layer indices, got {v}"),
    };
    items
        .iter()
        .map(|v| match v.as_u64() {
            Some(layer) if layer < layers as u64 => Ok(layer as usize),
            _ => bail!("field `mlp_only_layers`: {v} is not a layer index (num_hidden_layers {layers})"),
        })
        .collect()
}
