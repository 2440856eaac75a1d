//! SwiGLU feed-forward block: down(silu(gate(x)) * up(x)), with gate and up as one product: a
//! dense layer's MLP, and each expert of a sparse MoE layer (`moe.rs`).

use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::Linear;

use super::layer_weights::LayerWeights;

pub struct Mlp {
    /// gate and up projections as one: (2·I, hidden), gate rows first
    gate_up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// A dense layer's MLP (`mlp.{gate,up,down}_proj`).
    pub fn load(w: &LayerWeights) -> Result<Self> {
        Self::load_at(w, "mlp")
    }

    /// From its weights: gate and up stacked (2·I, hidden), gate rows first; down (hidden, I).
    pub fn new(gate_up: Tensor, down: Tensor) -> Self {
        Self {
            gate_up_proj: Linear::new(gate_up, None),
            down_proj: Linear::new(down, None),
        }
    }

    /// The MLP whose projections are below `key` in the layer, e.g. `mlp.experts.7`.
    pub fn load_at(w: &LayerWeights, key: &str) -> Result<Self> {
        Ok(Self {
            gate_up_proj: w.stacked_linear(&[&format!("{key}.gate_proj"), &format!("{key}.up_proj")])?,
            down_proj: w.linear(&format!("{key}.down_proj"))?,
        })
    }

    /// The fused gate/up projection: x (L, hidden) → (L, 2·I), gate in columns [0, I)
    pub fn gate_up(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.gate_up_proj.forward(x)?)
    }

    /// (2·I, hidden)
    pub fn gate_up_weight(&self) -> &Tensor {
        self.gate_up_proj.weight()
    }

    /// (hidden, I)
    pub fn down_weight(&self) -> &Tensor {
        self.down_proj.weight()
    }

    /// act (L, I) → (L, hidden)
    pub fn down(&self, act: &Tensor) -> Result<Tensor> {
        Ok(self.down_proj.forward(act)?)
    }

    /// The unfused reference. x: (L, hidden) → (L, hidden)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up(x)?; // (L, 2·I)
        let inter = gate_up.dim(1)? / 2;
        let gate = candle_nn::ops::silu(&gate_up.narrow(1, 0, inter)?)?; // (L, I)
        let up = gate_up.narrow(1, inter, inter)?; // (L, I)
        self.down(&(gate * up)?) // (L, hidden)
    }
}
