//! Decode: one token at a time on a process that holds every layer and the whole KV cache.

use std::time::Instant;

use anyhow::{bail, Result};

use super::sampling::Sampler;
use crate::model::{KvCache, Qwen3, StageDecoder, StageInput, StageOutput, StageParts};

/// What decoding produced.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOutcome {
    /// Generated ids, starting with the first token (chosen from the prefill logits); an EOS
    /// token that ended generation is included, as transformers' `generate` does.
    pub generated: Vec<u32>,
    /// Wall seconds of each decode step after the first token.
    pub step_seconds: Vec<f64>,
}

/// The token loop every decode mode shares: from `first`, each token is recorded and shown to
/// `on_token`; the loop ends at an EOS id or `max_new_tokens` tokens (so every rank, holding the
/// same tokens, stops at the same step), else `step(token, position, step)` gives the next token,
/// `position` being where `token` goes in the cache and `step` counting from 1. Each step's wall
/// time is recorded.
pub fn token_loop(
    first: u32,
    prompt_len: usize,
    max_new_tokens: usize,
    eos_token_ids: &[u32],
    mut on_token: impl FnMut(u32) -> Result<()>,
    mut step: impl FnMut(u32, usize, usize) -> Result<u32>,
) -> Result<DecodeOutcome> {
    let mut outcome = DecodeOutcome {
        generated: Vec::new(),
        step_seconds: Vec::new(),
    };
    if max_new_tokens == 0 {
        return Ok(outcome);
    }
    let mut token = first;
    loop {
        outcome.generated.push(token);
        on_token(token)?;
        if eos_token_ids.contains(&token) || outcome.generated.len() >= max_new_tokens {
            return Ok(outcome);
        }
        let started = Instant::now();
        let index = outcome.generated.len();
        token = step(token, prompt_len + index - 1, index)?;
        outcome.step_seconds.push(started.elapsed().as_secs_f64());
    }
}

/// Generates after a prefill of `prompt_len` positions whose logits gave `first_token`, until an
/// EOS id or `max_new_tokens` tokens. `on_token` sees each token as it is chosen.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    model: &Qwen3,
    kv: &KvCache,
    first_token: u32,
    prompt_len: usize,
    max_new_tokens: usize,
    sampler: &mut Sampler,
    eos_token_ids: &[u32],
    on_token: impl FnMut(u32) -> Result<()>,
) -> Result<DecodeOutcome> {
    if max_new_tokens == 0 {
        return Ok(DecodeOutcome {
            generated: Vec::new(),
            step_seconds: Vec::new(),
        });
    }
    let layers = 0..model.config().num_hidden_layers;
    let mut stage = StageDecoder::new(model, kv, layers, StageParts::ALL)?;
    token_loop(
        first_token,
        prompt_len,
        max_new_tokens,
        eos_token_ids,
        on_token,
        |token, position, _| match stage.step(StageInput::Token(token), position)? {
            StageOutput::Logits(logits) => sampler.next_token(&logits), // (vocab)
            StageOutput::Hidden(_) => bail!("decode: the whole model's step gave no logits"),
        },
    )
}
