//! The router of a sparse MoE layer, after transformers' `Qwen3MoeTopKRouter`: each token's top
//! k experts by softmax probability (f32), their probabilities renormalised to sum to one when
//! `norm_topk_prob`, and the chunk's (token, expert) pairs grouped by expert, so that each
//! expert's tokens go through it as one matrix product.
//!
//! Ties: the sum over a token's experts is taken in ascending expert order whatever order the
//! top-k selection found them in, so equal probabilities inside the top k cannot change the
//! result; at the k-th place a tie goes to the lower expert index (torch's `topk` leaves it
//! unspecified).

use std::cmp::Ordering;

/// A chunk's tokens routed to their experts. A row is one (token, expert) pair; `S = L·k` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// The token of each row, rows grouped by expert (ascending), tokens ascending within: (S)
    pub rows: Vec<u32>,
    /// Each expert that has rows, ascending: (expert, its first row, its row count).
    pub groups: Vec<ExpertRows>,
    /// The routing weight of each row, in f32 as the router computes it: (S)
    pub weights: Vec<f32>,
    /// Token `t`'s rows at `[t·k, (t + 1)·k)`, its experts in ascending order: (L·k)
    pub token_rows: Vec<u32>,
}

/// The rows of one expert: `[start, start + len)` of [`Routing::rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertRows {
    pub expert: usize,
    pub start: usize,
    pub len: usize,
}

/// Descending probability, then ascending expert index (a total order, NaN included).
fn rank(probs: &[f32]) -> impl Fn(&usize, &usize) -> Ordering + '_ {
    move |&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b))
}

/// The top `k` experts of one token and their weights: (expert, weight) in ascending expert
/// order. `probs` (E) is the softmax over experts.
pub fn top_k(probs: &[f32], k: usize, normalize: bool) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k, rank(probs));
        order.truncate(k);
    }
    order.sort_by(rank(probs)); // torch.topk's order (descending), for the sum below
    let mut chosen: Vec<(usize, f32)> = order.iter().map(|&e| (e, probs[e])).collect();
    if normalize {
        let sum: f32 = chosen.iter().map(|&(_, p)| p).sum();
        for (_, p) in &mut chosen {
            *p /= sum;
        }
    }
    chosen.sort_by_key(|&(e, _)| e);
    chosen
}

/// Routes every token of a chunk. `probs`: (L, E) row-major, the softmax over `experts`.
pub fn route(probs: &[f32], experts: usize, k: usize, normalize: bool) -> Routing {
    let tokens = probs.len() / experts.max(1);
    let chosen: Vec<Vec<(usize, f32)>> = probs
        .chunks_exact(experts)
        .map(|token| top_k(token, k, normalize))
        .collect();
    // rows of each expert, then where each expert's rows begin
    let mut counts = vec![0usize; experts];
    for &(e, _) in chosen.iter().flatten() {
        counts[e] += 1;
    }
    let mut next = Vec::with_capacity(experts);
    let mut groups = Vec::new();
    let mut start = 0;
    for (expert, &len) in counts.iter().enumerate() {
        next.push(start);
        if len > 0 {
            groups.push(ExpertRows { expert, start, len });
        }
        start += len;
    }
    let mut rows = vec![0u32; start];
    let mut weights = vec![0f32; start];
    let mut token_rows = Vec::with_capacity(tokens * k);
    for (token, experts_of_token) in chosen.iter().enumerate() {
        for &(e, w) in experts_of_token {
            let row = next[e];
            next[e] += 1;
            rows[row] = token as u32;
            weights[row] = w;
            token_rows.push(row as u32);
        }
    }
    Routing {
        rows,
        groups,
        weights,
        token_rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_takes_the_largest_and_renormalises_in_f32() {
        let probs = [0.1f32, 0.4, 0.05, 0.3, 0.15];
        assert_eq!(top_k(&probs, 2, false), vec![(1, 0.4), (3, 0.3)]);
        let normed = top_k(&probs, 2, true);
        assert_eq!(normed.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(normed[0].1, 0.4f32 / (0.4f32 + 0.3f32));
        assert_eq!(normed[1].1, 0.3f32 / (0.4f32 + 0.3f32));
        assert_eq!(top_k(&probs, 5, false).len(), 5);
    }

    #[test]
    fn a_tie_at_the_kth_place_goes_to_the_lower_expert_and_ties_inside_do_not_reorder() {
        let probs = [0.25f32, 0.25, 0.25, 0.25];
        assert_eq!(top_k(&probs, 2, false), vec![(0, 0.25), (1, 0.25)]);
        let probs = [0.1f32, 0.3, 0.3, 0.3];
        assert_eq!(top_k(&probs, 2, false), vec![(1, 0.3), (2, 0.3)]);
        // the chosen experts come back in expert order, so the weighted sum's order is fixed
        let probs = [0.2f32, 0.1, 0.3, 0.4];
        assert_eq!(top_k(&probs, 3, false), vec![(0, 0.2), (2, 0.3), (3, 0.4)]);
    }

    #[test]
    fn route_groups_rows_by_expert_and_finds_each_tokens_rows() {
        // 3 tokens over 4 experts, top 2
        let probs = [
            0.1, 0.2, 0.3, 0.4, // token 0: experts 2, 3
            0.4, 0.3, 0.2, 0.1, // token 1: experts 0, 1
            0.1, 0.4, 0.1, 0.4, // token 2: experts 1, 3
        ];
        let r = route(&probs, 4, 2, false);
        assert_eq!(r.rows, [1, 1, 2, 0, 0, 2]);
        let groups: Vec<(usize, usize, usize)> =
            r.groups.iter().map(|g| (g.expert, g.start, g.len)).collect();
        assert_eq!(groups, [(0, 0, 1), (1, 1, 2), (2, 3, 1), (3, 4, 2)]);
        assert_eq!(r.token_rows, [3, 4, 0, 1, 2, 5]);
        for (t, pair) in r.token_rows.chunks(2).enumerate() {
            for &row in pair {
                assert_eq!(r.rows[row as usize], t as u32);
            }
        }
        assert_eq!(r.weights[5], 0.4);
    }

    #[test]
    fn one_token_touches_only_its_k_experts() {
        let probs: Vec<f32> = (0..16).map(|e| (e as f32 * 7.0) % 16.0).collect();
        let r = route(&probs, 16, 3, true);
        assert_eq!(r.groups.len(), 3);
        assert!(r.groups.iter().all(|g| g.len == 1));
    }
}
