//! The ring form of a KV sync call: N−1 Sendrecv steps, each rank passing on to `rank + 1` the
//! block it received in the step before (its own first) and receiving from `rank − 1`.

/// One ring step of one rank: whose block it sends and whose it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingStep {
    pub send_to: usize,
    pub recv_from: usize,
    /// Rank whose block is sent in this step.
    pub send_origin: usize,
    /// Rank whose block arrives in this step.
    pub recv_origin: usize,
}

/// The `ranks − 1` ring steps of `rank`.
pub fn ring_steps(ranks: usize, rank: usize) -> Vec<RingStep> {
    let back = |by: usize| (rank + ranks - by % ranks) % ranks;
    (0..ranks.saturating_sub(1))
        .map(|s| RingStep {
            send_to: (rank + 1) % ranks,
            recv_from: back(1),
            send_origin: back(s),
            recv_origin: back(s + 1),
        })
        .collect()
}
