//! SwiGLU feed-forward block: down(silu(gate(x)) * up(x)).

use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::Linear;

use super::layer_weights::LayerWeights;

pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    pub fn load(w: &LayerWeights) -> Result<Self> {
        Ok(Self {
            gate_proj: w.linear("mlp.gate_proj")?,
            up_proj: w.linear("mlp.up_proj")?,
            down_proj: w.linear("mlp.down_proj")?,
        })
    }

    /// x: (L, hidden) → (L, hidden)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?; // (L, intermediate)
        let up = self.up_proj.forward(x)?; // (L, intermediate)
        Ok(self.down_proj.forward(&(gate * up)?)?) // (L, hidden)
    }
}
