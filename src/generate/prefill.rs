//! Prefill on one process: the prompt's chunks through every layer in order. The reference the
//! MPI pipeline must reproduce.

use anyhow::Result;
use candle_core::Tensor;

use crate::model::{KvCache, Qwen3};
use crate::schedule::split_prompt;

/// Runs the prompt through all layers in chunks of `chunk_size`, filling `kv` for positions
/// `[0, ids.len())`. Returns the logits of the last prompt position: (vocab), f32.
pub fn prefill_local(model: &Qwen3, ids: &[u32], chunk_size: usize, kv: &KvCache) -> Result<Tensor> {
    let all_layers = 0..model.config().num_hidden_layers;
    let mut last_hidden = None;
    for chunk in split_prompt(ids.len(), chunk_size) {
        let hidden = model.embed(&ids[chunk.positions()])?; // (L, hidden)
        last_hidden = Some(model.forward_layers(all_layers.clone(), hidden, chunk.start, kv)?);
    }
    let last_hidden = last_hidden.ok_or_else(|| anyhow::anyhow!("the prompt is empty: it has no tokens"))?;
    model.logits_last(&last_hidden)
}
