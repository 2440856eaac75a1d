//! The decode step as a pure function of (layer split, rank, mode), evaluated identically by
//! every rank: what each rank does for one token, in order. No MPI here; the tests check that
//! every send meets its receive and that every rank issues the same collectives.

use std::ops::Range;

use super::layer_split::LayerSplit;

/// `--decode`: how the tokens after the first are generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeArg {
    /// `redundant` when the whole model and KV cache fit every rank, else `pipeline`.
    Auto,
    /// Every rank holds every layer and the whole KV cache and decodes alone (the KV sync
    /// fills the cache during prefill; the other layers load in the background).
    Redundant,
    /// Each rank holds only its own layers and their K/V (no KV sync); each token's hidden
    /// state passes rank to rank, and the last rank's token is broadcast.
    Pipeline,
}

/// The decode mode a job runs (what `--decode` resolved to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    Redundant,
    Pipeline,
}

impl DecodeMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Redundant => "redundant",
            Self::Pipeline => "pipeline",
        }
    }
}

/// One op of a rank's decode step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeOp {
    /// The token's embedding (the rank that holds it).
    Embed,
    /// Wait for the token's hidden state from rank `from`.
    RecvHidden { from: usize },
    /// Run these decoder layers over the token.
    ComputeLayers { layers: Range<usize> },
    /// Pass the hidden state to rank `to`.
    SendHidden { to: usize },
    /// Final norm, lm_head, and the sampler: the next token.
    Sample,
    /// Collective, every rank: the token sampled on rank `root`, to every rank.
    ShareToken { root: usize },
}

impl DecodeOp {
    /// Whether the op is this rank's computation (not a wait for or a move of data).
    pub fn is_compute(&self) -> bool {
        matches!(self, Self::Embed | Self::ComputeLayers { .. } | Self::Sample)
    }
}

/// What `rank` does in one decode step, in order. `redundant`: every layer, no communication.
/// `pipeline`: rank 0 embeds, each rank runs its layer range and passes the hidden state on,
/// the last rank samples, and every rank then takes part in one broadcast of that token.
pub fn decode_step_program(split: &LayerSplit, rank: usize, mode: DecodeMode) -> Vec<DecodeOp> {
    let last = split.ranks() - 1;
    match mode {
        DecodeMode::Redundant => vec![
            DecodeOp::Embed,
            DecodeOp::ComputeLayers {
                layers: 0..split.num_layers(),
            },
            DecodeOp::Sample,
        ],
        DecodeMode::Pipeline => {
            let mut ops = vec![match rank {
                0 => DecodeOp::Embed,
                r => DecodeOp::RecvHidden { from: r - 1 },
            }];
            ops.push(DecodeOp::ComputeLayers {
                layers: split.range(rank),
            });
            ops.push(match rank == last {
                true => DecodeOp::Sample,
                false => DecodeOp::SendHidden { to: rank + 1 },
            });
            ops.push(DecodeOp::ShareToken { root: last });
            ops
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipelined_step_on_three_ranks_passes_the_token_down_and_broadcasts_the_last_ranks_choice() {
        let split = LayerSplit::from_counts(&[1, 3, 1], 5, 3).unwrap();
        assert_eq!(
            decode_step_program(&split, 1, DecodeMode::Pipeline),
            vec![
                DecodeOp::RecvHidden { from: 0 },
                DecodeOp::ComputeLayers { layers: 1..4 },
                DecodeOp::SendHidden { to: 2 },
                DecodeOp::ShareToken { root: 2 },
            ]
        );
        assert_eq!(
            decode_step_program(&split, 2, DecodeMode::Pipeline)[2],
            DecodeOp::Sample
        );
        assert_eq!(
            decode_step_program(&split, 0, DecodeMode::Redundant),
            vec![
                DecodeOp::Embed,
                DecodeOp::ComputeLayers { layers: 0..5 },
                DecodeOp::Sample
            ]
        );
    }
}
