//! One decode step of a stage: a range of layers, with the embedding in front where the stage
//! starts from the token and the head behind where it ends with the logits. On a GPU whose
//! plan has the fused decode step (`decode_step.rs`) the stage runs as that chain of kernels,
//! replayed as a CUDA graph; elsewhere through each layer's forward. Redundant decode is the
//! stage of every layer with both ends; pipelined decode gives each rank its own.

use std::ops::Range;

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::kv_cache::KvCache;
use super::qwen3::Qwen3;
use super::weight_names::StageParts;

/// What a stage's step starts from.
pub enum StageInput<'t> {
    /// The token, embedded by the stage (it holds the embedding).
    Token(u32),
    /// The previous stage's hidden state, (1, hidden).
    Hidden(&'t Tensor),
}

/// What a stage's step ends with.
pub enum StageOutput {
    /// The next token's logits, (vocab) f32 (the stage holds the head).
    Logits(Tensor),
    /// The hidden state for the next stage, (1, hidden).
    Hidden(Tensor),
}

/// How the stage runs its step.
enum Path {
    #[cfg(feature = "cuda")]
    Fused(Box<super::decode_step::DecodeStep>),
    Layers,
}

pub struct StageDecoder<'m> {
    model: &'m Qwen3,
    kv: &'m KvCache,
    layers: Range<usize>,
    parts: StageParts,
    path: Path,
}

impl<'m> StageDecoder<'m> {
    /// The step of `layers` with the ends in `parts`, fused where the model's plan allows it
    /// (built once per decode: it keeps handles on the weights and reads and writes `kv`).
    pub fn new(model: &'m Qwen3, kv: &'m KvCache, layers: Range<usize>, parts: StageParts) -> Result<Self> {
        #[cfg(feature = "cuda")]
        let path = match model.fused_decode_step(kv, layers.clone(), parts)? {
            Some(step) => Path::Fused(Box::new(step)),
            None => Path::Layers,
        };
        #[cfg(not(feature = "cuda"))]
        let path = Path::Layers;
        Ok(Self {
            model,
            kv,
            layers,
            parts,
            path,
        })
    }

    /// The step for the token at `position`: its K/V into the cache for this stage's layers.
    pub fn step(&mut self, input: StageInput, position: usize) -> Result<StageOutput> {
        match (&input, self.parts.embed) {
            (StageInput::Token(_), false) => {
                bail!("decode: this stage has no embedding to start from a token")
            }
            (StageInput::Hidden(_), true) => {
                bail!("decode: this stage starts from the token, not a hidden state")
            }
            _ => {}
        }
        match &mut self.path {
            #[cfg(feature = "cuda")]
            Path::Fused(step) => step.run(input, position),
            Path::Layers => {
                let hidden = match input {
                    StageInput::Token(token) => self.model.embed(&[token])?, // (1, hidden)
                    StageInput::Hidden(hidden) => hidden.clone(),
                };
                let hidden = self
                    .model
                    .forward_layers(self.layers.clone(), hidden, position, self.kv)?;
                Ok(match self.parts.head {
                    true => StageOutput::Logits(self.model.logits_last(&hidden)?), // (vocab)
                    false => StageOutput::Hidden(hidden),
                })
            }
        }
    }
}
