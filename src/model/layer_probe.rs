//! The parts of a decoder layer's GPU work, so that a trace can show where a layer's time goes
//! (matrix products, attention, the elementwise kernels between them), and a MoE layer's
//! sparse block on any device.

/// A kind of work inside a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerPart {
    /// Matrix products (cuBLAS, or our matrix-vector kernels in decode).
    Gemm,
    /// The attention kernel over the cache.
    Attention,
    /// Norms, RoPE, the cache write, SwiGLU, residual adds.
    Elementwise,
    /// The sparse MoE block of a Qwen3-MoE layer (router, experts, weighted sum), on any device.
    Moe,
}

/// Sees the boundaries between a layer's parts as their work is queued.
pub trait LayerProbe {
    /// `Some(part)`: the work queued from now on is `part`; `None`: the layer's work ends here.
    fn enter(&self, part: Option<LayerPart>) -> anyhow::Result<()>;
}
