//! Rotary position embedding (default RoPE, rotate-half convention as in transformers' Qwen3).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::config::Qwen3Config;

/// cos/sin tables for positions `[0, positions)`.
pub struct RotaryTable {
    /// (positions, head_dim / 2)
    cos: Tensor,
    /// (positions, head_dim / 2)
    sin: Tensor,
}

impl RotaryTable {
    /// Tables computed in f32 as transformers does (inv_freq = theta^(-2i/d)), stored in `dtype`.
    pub fn new(cfg: &Qwen3Config, positions: usize, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let theta = cfg.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / cfg.head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions, half);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
        })
    }

    /// The tables, each (positions, head_dim / 2), for kernels that index them by position.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Rotates `x`: (L, heads, head_dim) at positions `[start, start + L)`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let len = x.dim(0)?;
        let cos = self.cos.narrow(0, start, len)?;
        let sin = self.sin.narrow(0, start, len)?;
        // rope_thd: (B, T, H, D) with cos/sin (T, D/2)
        let x = x.contiguous()?.unsqueeze(0)?;
        Ok(candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?.squeeze(0)?)
    }
}
