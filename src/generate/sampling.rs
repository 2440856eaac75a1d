//! Choosing the next token from logits: greedy or seeded sampling (temperature, top-k, top-p),
//! with candle-transformers' `LogitsProcessor`.

use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            bail!("--temperature must be a number >= 0, got {}", self.temperature);
        }
        if self.top_k == Some(0) {
            bail!("--top-k must be at least 1");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p must be in (0, 1], got {p}");
            }
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        if temperature == 0.0 {
            return Sampling::ArgMax;
        }
        match (self.top_k, self.top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }
}

/// Picks tokens one after another; the same params and logits give the same tokens on every
/// rank.
pub struct Sampler {
    inner: LogitsProcessor,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            inner: LogitsProcessor::from_sampling(params.seed, params.sampling()),
        }
    }

    /// logits: (vocab), f32
    /// The next token from `logits` (vocab); NaN or Inf among them is an error, not a token.
    /// (The check is one sum over the vocabulary, queued before the sampler's own pass and read
    /// after it, so it adds no wait of its own; it is read before the sampler's result, whose
    /// error on such logits would say less.)
    pub fn next_token(&mut self, logits: &Tensor) -> Result<u32> {
        let sum = logits.sum_all()?.to_dtype(candle_core::DType::F32)?; // ()
        let sampled = self.inner.sample(logits);
        if !sum.to_scalar::<f32>()?.is_finite() {
            bail!("the logits hold NaN or Inf: a weight or an activation is not finite");
        }
        Ok(sampled?)
    }
}
