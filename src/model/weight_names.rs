//! Which checkpoint tensors a stage needs, with their expected shapes.
//!
//! Names are the Hugging Face checkpoint keys of `Qwen3ForCausalLM` and `Qwen3MoeForCausalLM`
//! (one tensor per expert and projection, as published and as transformers 5.x's
//! `save_pretrained` writes them).

use std::ops::Range;

use super::config::Qwen3Config;

/// One tensor a stage loads: its checkpoint key and expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn new(name: String, shape: &[usize]) -> Self {
        Self {
            name,
            shape: shape.to_vec(),
        }
    }
}

/// What a stage holds besides its decoder layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageParts {
    /// Token embedding (the first stage, and every rank for decode).
    pub embed: bool,
    /// Final norm and lm_head (the last stage, and every rank for decode).
    pub head: bool,
}

impl StageParts {
    pub const ALL: StageParts = StageParts {
        embed: true,
        head: true,
    };
}

pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}")
}

/// The tensors of decoder layer `layer`: attention, norms, and the dense MLP or the sparse MoE
/// block (router and every expert).
pub fn layer_specs(cfg: &Qwen3Config, layer: usize) -> Vec<TensorSpec> {
    let p = layer_prefix(layer);
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let mut specs = vec![
        TensorSpec::new(format!("{p}.input_layernorm.weight"), &[h]),
        TensorSpec::new(format!("{p}.self_attn.q_proj.weight"), &[q_out, h]),
        TensorSpec::new(format!("{p}.self_attn.k_proj.weight"), &[kv_out, h]),
        TensorSpec::new(format!("{p}.self_attn.v_proj.weight"), &[kv_out, h]),
        TensorSpec::new(format!("{p}.self_attn.o_proj.weight"), &[h, q_out]),
        TensorSpec::new(format!("{p}.self_attn.q_norm.weight"), &[d]),
        TensorSpec::new(format!("{p}.self_attn.k_norm.weight"), &[d]),
        TensorSpec::new(format!("{p}.post_attention_layernorm.weight"), &[h]),
    ];
    match cfg.moe.as_ref().filter(|moe| moe.is_sparse(layer)) {
        Some(moe) => {
            let mi = moe.moe_intermediate_size;
            specs.push(TensorSpec::new(
                format!("{p}.{ROUTER}.weight"),
                &[moe.num_experts, h],
            ));
            for expert in 0..moe.num_experts {
                let e = expert_key(expert);
                specs.push(TensorSpec::new(format!("{p}.{e}.gate_proj.weight"), &[mi, h]));
                specs.push(TensorSpec::new(format!("{p}.{e}.up_proj.weight"), &[mi, h]));
                specs.push(TensorSpec::new(format!("{p}.{e}.down_proj.weight"), &[h, mi]));
            }
        }
        None => {
            specs.push(TensorSpec::new(format!("{p}.mlp.gate_proj.weight"), &[i, h]));
            specs.push(TensorSpec::new(format!("{p}.mlp.up_proj.weight"), &[i, h]));
            specs.push(TensorSpec::new(format!("{p}.mlp.down_proj.weight"), &[h, i]));
        }
    }
    specs
}

/// The router of a sparse layer, below `model.layers.N` (its weight: (experts, hidden)).
pub const ROUTER: &str = "mlp.gate";

/// A sparse layer's experts as transformers 5.x holds them, fused, when a checkpoint was saved in
/// that layout (`save_pretrained(save_original_format=False)`): `mlp.experts.gate_up_proj`
/// (experts, 2·I, hidden), each expert's gate rows then its up rows, and `mlp.experts.down_proj`
/// (experts, hidden, I). `None` for a dense layer.
pub fn fused_expert_specs(cfg: &Qwen3Config, layer: usize) -> Option<[TensorSpec; 2]> {
    let moe = cfg.moe.as_ref().filter(|moe| moe.is_sparse(layer))?;
    let (p, h, e, mi) = (
        layer_prefix(layer),
        cfg.hidden_size,
        moe.num_experts,
        moe.moe_intermediate_size,
    );
    Some([
        TensorSpec::new(format!("{p}.mlp.experts.gate_up_proj"), &[e, 2 * mi, h]),
        TensorSpec::new(format!("{p}.mlp.experts.down_proj"), &[e, h, mi]),
    ])
}

/// Expert `expert` of a sparse layer, below `model.layers.N`.
pub fn expert_key(expert: usize) -> String {
    format!("mlp.experts.{expert}")
}

pub fn embed_spec(cfg: &Qwen3Config) -> TensorSpec {
    TensorSpec::new(
        "model.embed_tokens.weight".into(),
        &[cfg.vocab_size, cfg.hidden_size],
    )
}

pub fn final_norm_spec(cfg: &Qwen3Config) -> TensorSpec {
    TensorSpec::new("model.norm.weight".into(), &[cfg.hidden_size])
}

/// lm_head weight; with tied embeddings it is the embedding table itself.
pub fn lm_head_spec(cfg: &Qwen3Config) -> TensorSpec {
    if cfg.tie_word_embeddings {
        embed_spec(cfg)
    } else {
        TensorSpec::new("lm_head.weight".into(), &[cfg.vocab_size, cfg.hidden_size])
    }
}

/// Every tensor a stage with `layers` and `parts` loads (each name once).
pub fn stage_specs(cfg: &Qwen3Config, layers: Range<usize>, parts: StageParts) -> Vec<TensorSpec> {
    let mut specs = Vec::new();
    if parts.embed {
        specs.push(embed_spec(cfg));
    }
    for layer in layers {
        specs.extend(layer_specs(cfg, layer));
    }
    if parts.head {
        specs.push(final_norm_spec(cfg));
        let head = lm_head_spec(cfg);
        if !specs.contains(&head) {
            specs.push(head);
        }
    }
    specs
}

/// Parameters of the whole model (every layer, every expert, the embedding and the head once
/// each): what every rank holds to decode redundantly. Counted from the sizes, not from
/// [`stage_specs`] (which would name every expert of every layer); the two agree (tested).
pub fn parameter_count(cfg: &Qwen3Config) -> u64 {
    stage_parameter_count(cfg, 0..cfg.num_hidden_layers, StageParts::ALL)
}

/// Parameters of a stage with `layers` and `parts` (each tensor of [`stage_specs`] once: with
/// tied embeddings, a stage holding both the embedding and the head holds the table once).
pub fn stage_parameter_count(cfg: &Qwen3Config, layers: Range<usize>, parts: StageParts) -> u64 {
    let (h, d) = (cfg.hidden_size as u64, cfg.head_dim as u64);
    let (q, kv) = (
        cfg.num_attention_heads as u64 * d,
        cfg.num_key_value_heads as u64 * d,
    );
    let attention = 2 * h * q + 2 * h * kv + 2 * d; // q, k, v, o projections; q and k norms
    let norms = 2 * h;
    let dense_mlp = 3 * h * cfg.intermediate_size as u64;
    let sparse_mlp = cfg.moe.as_ref().map_or(0, |moe| {
        let experts = moe.num_experts as u64;
        experts * h + experts * 3 * h * moe.moe_intermediate_size as u64 // router, experts
    });
    let decoder: u64 = layers
        .map(|layer| {
            let mlp = if cfg.is_sparse_layer(layer) {
                sparse_mlp
            } else {
                dense_mlp
            };
            attention + norms + mlp
        })
        .sum();
    let table = cfg.vocab_size as u64 * h;
    let embed = if parts.embed { table } else { 0 };
    let shares_table = cfg.tie_word_embeddings && parts.embed;
    let head = match (parts.head, shares_table) {
        (false, _) => 0,
        (true, true) => h,          // the final norm; lm_head is the embedding table
        (true, false) => h + table, // the final norm and lm_head
    };
    decoder + embed + head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Qwen3Config {
        Qwen3Config::from_json(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn parameter_count_is_the_sum_of_every_tensor_a_model_loads() {
        let dense = config(crate::model::tiny::CONFIG_JSON);
        let sparse = config(crate::model::tiny::MOE_CONFIG_JSON);
        assert!(sparse.moe.is_some() && (0..sparse.num_hidden_layers).any(|l| !sparse.is_sparse_layer(l)));
        for cfg in [dense, sparse] {
            let specs = stage_specs(&cfg, 0..cfg.num_hidden_layers, StageParts::ALL);
            let summed: u64 = specs
                .iter()
                .map(|s| s.shape.iter().product::<usize>() as u64)
                .sum();
            assert_eq!(parameter_count(&cfg), summed);
        }
    }

    #[test]
    fn a_stage_counts_the_parameters_of_the_tensors_it_loads() {
        let dense = config(crate::model::tiny::CONFIG_JSON);
        let mut tied = config(crate::model::tiny::MOE_CONFIG_JSON);
        tied.tie_word_embeddings = true;
        for cfg in [dense, tied] {
            let n = cfg.num_hidden_layers;
            for (layers, embed, head) in [
                (0..2, true, false),
                (2..n - 1, false, false),
                (n - 1..n, false, true),
                (0..n, true, true),
            ] {
                let parts = StageParts { embed, head };
                let summed: u64 = stage_specs(&cfg, layers.clone(), parts)
                    .iter()
                    .map(|s| s.shape.iter().product::<usize>() as u64)
                    .sum();
                assert_eq!(
                    stage_parameter_count(&cfg, layers.clone(), parts),
                    summed,
                    "{layers:?} {parts:?}"
                );
            }
        }
    }

    #[test]
    fn a_sparse_layer_names_its_router_and_every_expert_as_published() {
        let cfg = config(crate::model::tiny::MOE_CONFIG_JSON);
        let moe = cfg.moe.as_ref().unwrap();
        let layer = (0..cfg.num_hidden_layers)
            .find(|&l| cfg.is_sparse_layer(l))
            .unwrap();
        let names: Vec<String> = layer_specs(&cfg, layer).into_iter().map(|s| s.name).collect();
        let p = format!("model.layers.{layer}.mlp");
        assert!(names.contains(&format!("{p}.gate.weight")));
        let last = moe.num_experts - 1;
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            assert!(
                names.contains(&format!("{p}.experts.{last}.{proj}.weight")),
                "{proj}"
            );
        }
        assert!(!names.contains(&format!("{p}.gate_proj.weight")));
        assert_eq!(names.len(), 8 + 1 + 3 * moe.num_experts);
    }
}
