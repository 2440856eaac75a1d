//! The first generated token: the last rank has the prefill logits; every rank gets them and
//! samples with its own (identical) sampler, and checks that it chose what the last rank chose.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use super::consistency::fnv1a;
use crate::abort::watchdog::Watchdog;
use crate::generate::Sampler;
use crate::schedule::LayerSplit;

/// Whether this rank's stage output only finite hidden states, and the layer split (to name
/// the stage that did not).
pub struct StageHealth<'a> {
    pub outputs_finite: bool,
    pub split: &'a LayerSplit,
}

/// NaN or Inf in the prefill: every rank finds it alike (after one exchange of each stage's
/// health), so every rank returns it and the job ends cleanly with rank 0's message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NonFinite(pub String);

/// Returns the first token and the full prefill logits (f32, vocab) on every rank; a NaN or Inf
/// in any stage's output or in the logits is a [`NonFinite`] error on every rank, naming the
/// first stage (rank and layers) where one appeared.
pub fn share_first_token(
    world: &SimpleCommunicator,
    logits: Option<Tensor>,
    vocab: usize,
    sampler: &mut Sampler,
    watchdog: &Watchdog,
    stages: &StageHealth,
) -> Result<(u32, Vec<f32>)> {
    let last = world.size() - 1;
    let root = world.process_at_rank(last);
    let mut values: Vec<f32> = match logits {
        Some(logits) => logits.to_vec1()?,
        None => vec![0.0; vocab],
    };
    {
        let _wait = watchdog.waiting_for(format!("the prefill logits from rank {last}"));
        root.broadcast_into(&mut values[..]);
    }
    let mine = u8::from(!stages.outputs_finite);
    let mut all = vec![0u8; world.size() as usize];
    {
        let _wait = watchdog.waiting_for("every stage's check for NaN and Inf");
        world.all_gather_into(&mine, &mut all[..]);
    }
    if let Some(rank) = all.iter().position(|&bad| bad == 1) {
        let layers = stages.split.range(rank);
        return Err(NonFinite(format!(
            "rank {rank}'s layers {}..{} output NaN or Inf (the first stage to): a weight or an \
             activation is not finite",
            layers.start, layers.end
        ))
        .into());
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(NonFinite(format!(
            "the prefill logits on rank {last} hold NaN or Inf, though every stage's output was \
             finite: the final norm or lm_head weights are not finite"
        ))
        .into());
    }
    let token = sampler.next_token(&Tensor::new(values.as_slice(), &Device::Cpu)?)?;
    let mut check = [token as u64, fnv1a(bytemuck::cast_slice(&values))];
    {
        let _wait = watchdog.waiting_for(format!("the first token from rank {last}"));
        root.broadcast_into(&mut check[..]);
    }
    if check[0] != token as u64 {
        bail!("chose first token {token} but rank {last} chose {}", check[0]);
    }
    Ok((token, values))
}
