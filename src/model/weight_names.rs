//! Which checkpoint tensors a stage needs, with their expected shapes.
//!
//! Names are the Hugging Face checkpoint keys of `Qwen3ForCausalLM`.

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

/// The tensors of decoder layer `layer`.
pub fn layer_specs(cfg: &Qwen3Config, layer: usize) -> Vec<TensorSpec> {
    let p = layer_prefix(layer);
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    vec![
        TensorSpec::new(format!("{p}.input_layernorm.weight"), &[h]),
        TensorSpec::new(format!("{p}.self_attn.q_proj.weight"), &[q_out, h]),
        TensorSpec::new(format!("{p}.self_attn.k_proj.weight"), &[kv_out, h]),
        TensorSpec::new(format!("{p}.self_attn.v_proj.weight"), &[kv_out, h]),
        TensorSpec::new(format!("{p}.self_attn.o_proj.weight"), &[h, q_out]),
        TensorSpec::new(format!("{p}.self_attn.q_norm.weight"), &[d]),
        TensorSpec::new(format!("{p}.self_attn.k_norm.weight"), &[d]),
        TensorSpec::new(format!("{p}.post_attention_layernorm.weight"), &[h]),
        TensorSpec::new(format!("{p}.mlp.gate_proj.weight"), &[i, h]),
        TensorSpec::new(format!("{p}.mlp.up_proj.weight"), &[i, h]),
        TensorSpec::new(format!("{p}.mlp.down_proj.weight"), &[h, i]),
    ]
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
