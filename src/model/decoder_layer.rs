//! One Qwen3 decoder layer: pre-norm attention and pre-norm SwiGLU MLP, both residual.

use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::RmsNorm;

use super::attention::Attention;
use super::config::Qwen3Config;
use super::kv_cache::KvCache;
use super::layer_plan::LayerPlan;
use super::layer_probe::LayerProbe;
use super::layer_weights::{LayerWeights, WeightLoader};
use super::mlp::Mlp;
use super::rope::RotaryTable;

pub struct DecoderLayer {
    pub(super) input_layernorm: RmsNorm,
    pub(super) self_attn: Attention,
    pub(super) post_attention_layernorm: RmsNorm,
    pub(super) mlp: Mlp,
}

impl DecoderLayer {
    pub fn load(loader: WeightLoader, cfg: &Qwen3Config, layer: usize) -> Result<Self> {
        let w = LayerWeights::new(loader, cfg, layer);
        Ok(Self {
            input_layernorm: w.rms_norm("input_layernorm")?,
            self_attn: Attention::load(&w, cfg, layer)?,
            post_attention_layernorm: w.rms_norm("post_attention_layernorm")?,
            mlp: Mlp::load(&w)?,
        })
    }

    /// x: (L, hidden) at positions `[start, start + L)` → (L, hidden). Writes the chunk's K/V
    /// into `kv`. On the fused layer, `probe` (if any) sees where each part of its work
    /// begins.
    pub fn forward(
        &self,
        x: &Tensor,
        start: usize,
        rope: &RotaryTable,
        kv: &KvCache,
        plan: &LayerPlan,
        probe: Option<&dyn LayerProbe>,
    ) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if plan.fused {
            return super::fused_layer::forward(self, x, start, rope, kv, &plan.prefill, probe);
        }
        let _ = (plan, probe); // the unfused reference is not split into parts
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, start, rope, kv)?;
        let x = (x + attn)?;
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?;
        Ok((x + mlp)?)
    }
}
