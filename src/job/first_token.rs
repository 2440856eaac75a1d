//! The first generated token: the last rank has the prefill logits; every rank gets them and
//! samples with its own (identical) sampler, and checks that it chose what the last rank chose.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use super::consistency::fnv1a;
use super::watchdog::Watchdog;
use crate::generate::Sampler;

/// Returns the first token and the full prefill logits (f32, vocab) on every rank.
pub fn share_first_token(
    world: &SimpleCommunicator,
    logits: Option<Tensor>,
    vocab: usize,
    sampler: &mut Sampler,
    watchdog: &Watchdog,
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
