//! Loading helpers that spell checkpoint keys, so model constructors read like the weight map.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, RmsNorm};

use super::config::Qwen3Config;
use super::weight_names::{layer_prefix, layer_specs, TensorSpec};
use super::weights::WeightSource;

/// A weight source with the dtype and device every tensor is loaded into.
#[derive(Clone, Copy)]
pub struct WeightLoader<'a> {
    pub source: &'a dyn WeightSource,
    pub dtype: DType,
    pub device: &'a Device,
}

impl WeightLoader<'_> {
    pub fn tensor(&self, spec: &TensorSpec) -> Result<Tensor> {
        self.source.load(spec, self.dtype, self.device)
    }
}

/// The tensors of one decoder layer, addressed by their key below `model.layers.N`.
pub struct LayerWeights<'a> {
    loader: WeightLoader<'a>,
    prefix: String,
    specs: Vec<TensorSpec>,
    rms_norm_eps: f64,
}

impl<'a> LayerWeights<'a> {
    pub fn new(loader: WeightLoader<'a>, cfg: &Qwen3Config, layer: usize) -> Self {
        Self {
            loader,
            prefix: layer_prefix(layer),
            specs: layer_specs(cfg, layer),
            rms_norm_eps: cfg.rms_norm_eps,
        }
    }

    /// `{prefix}.{key}.weight`, e.g. key `self_attn.q_proj`.
    fn weight(&self, key: &str) -> Result<Tensor> {
        let name = format!("{}.{key}.weight", self.prefix);
        let spec = self
            .specs
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("internal: no spec for {name}"))?;
        self.loader.tensor(spec)
    }

    /// The dtype and device every tensor is loaded into.
    pub fn dtype_device(&self) -> (DType, &'a Device) {
        (self.loader.dtype, self.loader.device)
    }

    /// Whether the checkpoint has tensor `name` (a full checkpoint key).
    pub fn contains(&self, name: &str) -> Result<bool> {
        self.loader.source.contains(name)
    }

    /// A tensor outside the layer's usual names (another spelling of some of them).
    pub fn tensor(&self, spec: &TensorSpec) -> Result<Tensor> {
        self.loader.tensor(spec)
    }

    /// A bias-free linear layer (Qwen3 has no projection biases).
    pub fn linear(&self, key: &str) -> Result<Linear> {
        Ok(Linear::new(self.weight(key)?, None))
    }

    /// One bias-free linear layer for several that read the same input: their weights stacked
    /// along the output dimension, in the order of `keys` (e.g. q, k, v). The product's columns are
    /// the parts' outputs side by side. Each weight (out_i, in) → (Σ out_i, in)
    pub fn stacked_linear(&self, keys: &[&str]) -> Result<Linear> {
        let parts = keys
            .iter()
            .map(|key| self.weight(key))
            .collect::<Result<Vec<_>>>()?;
        Ok(Linear::new(Tensor::cat(&parts, 0)?, None))
    }

    pub fn rms_norm(&self, key: &str) -> Result<RmsNorm> {
        Ok(RmsNorm::new(self.weight(key)?, self.rms_norm_eps))
    }
}
