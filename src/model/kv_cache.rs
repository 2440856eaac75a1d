//! The KV cache: one preallocated K and V tensor per decoder layer for the whole context.
//!
//! Layout per layer: `(capacity, n_kv_heads, head_dim)`, position-major, so the K (or V) of
//! positions `[start, end)` of one layer is one contiguous block of memory: a chunk is written
//! in place, read back as a prefix `[0, end)`, and sent or received by the KV sync without
//! gathering.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::config::Qwen3Config;

/// K and V of one decoder layer.
pub struct LayerKv {
    /// (capacity, n_kv_heads, head_dim)
    pub k: Tensor,
    /// (capacity, n_kv_heads, head_dim)
    pub v: Tensor,
}

/// K and V of every decoder layer, for positions `[0, capacity)`.
pub struct KvCache {
    layers: Vec<LayerKv>,
    capacity: usize,
}

impl KvCache {
    /// Allocates (zeroed) K/V for all `cfg.num_hidden_layers` layers.
    pub fn new(cfg: &Qwen3Config, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        let shape = (capacity, cfg.num_key_value_heads, cfg.head_dim);
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok(LayerKv {
                    k: Tensor::zeros(shape, dtype, device)?,
                    v: Tensor::zeros(shape, dtype, device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, capacity })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }

    /// Bytes of K plus V of one layer for `positions` positions.
    pub fn block_bytes(&self, positions: usize) -> usize {
        let k = &self.layers[0].k;
        let (_, heads, dim) = k.dims3().unwrap_or((0, 0, 0));
        2 * positions * heads * dim * k.dtype().size_in_bytes()
    }

    /// Writes K and V of positions `[start, start + L)` of `layer` in place.
    /// `k`, `v`: (L, n_kv_heads, head_dim).
    pub fn write(&self, layer: usize, start: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let len = k.dim(0)?;
        if start + len > self.capacity {
            bail!(
                "KV cache overflow: positions {start}..{} exceed its capacity of {}",
                start + len,
                self.capacity
            );
        }
        let kv = &self.layers[layer];
        kv.k.slice_set(&k.contiguous()?, 0, start)?;
        kv.v.slice_set(&v.contiguous()?, 0, start)?;
        Ok(())
    }

    /// Saves K and V of positions `[0, end)` of every layer as safetensors
    /// (`layers.<l>.k`, `layers.<l>.v`), for comparing caches across runs.
    pub fn save_prefix(&self, path: &std::path::Path, end: usize) -> Result<()> {
        let mut tensors = std::collections::HashMap::new();
        for layer in 0..self.layers.len() {
            let (k, v) = self.prefix(layer, end)?;
            tensors.insert(format!("layers.{layer}.k"), k.contiguous()?);
            tensors.insert(format!("layers.{layer}.v"), v.contiguous()?);
        }
        candle_core::safetensors::save(&tensors, path)
            .map_err(|e| anyhow::anyhow!("--dump-kv {}: cannot write ({e})", path.display()))
    }

    /// K and V of positions `[0, end)` of `layer`: each (end, n_kv_heads, head_dim), views.
    pub fn prefix(&self, layer: usize, end: usize) -> Result<(Tensor, Tensor)> {
        let kv = &self.layers[layer];
        Ok((kv.k.narrow(0, 0, end)?, kv.v.narrow(0, 0, end)?))
    }
}
