//! Cutting a KV sync call into pieces for a pipelined transport: piece `k` moves, from every
//! rank's block, the positions `[k·P, (k+1)·P)` (clipped to the block). Every rank computes the
//! same pieces from the call alone.

use std::ops::Range;

/// Positions (relative to each rank's block start) moved in one piece, per rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub ranges: Vec<Range<usize>>,
}

/// Pieces of at most `piece_positions` positions per rank, covering every block.
pub fn plan_pieces(positions_per_rank: &[usize], piece_positions: usize) -> Vec<Piece> {
    let piece = piece_positions.max(1);
    let longest = positions_per_rank.iter().copied().max().unwrap_or(0);
    (0..longest.div_ceil(piece))
        .map(|k| Piece {
            ranges: positions_per_rank
                .iter()
                .map(|&count| (k * piece).min(count)..((k + 1) * piece).min(count))
                .collect(),
        })
        .collect()
}

/// Positions per piece for a target of `piece_bytes` per rank (at least one).
pub fn piece_positions(piece_bytes: usize, position_bytes: usize) -> usize {
    (piece_bytes / position_bytes.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_each_block_once_in_order() {
        for counts in [
            vec![5, 0, 3],
            vec![1],
            vec![0, 0],
            vec![16, 16],
            vec![7, 12, 1, 0],
        ] {
            for p in [1, 2, 4, 100] {
                let pieces = plan_pieces(&counts, p);
                for (q, &count) in counts.iter().enumerate() {
                    let mut next = 0;
                    for piece in &pieces {
                        let r = &piece.ranges[q];
                        assert_eq!(r.start, next.min(count), "counts {counts:?} p {p}");
                        assert!(r.len() <= p);
                        next = r.end;
                    }
                    assert_eq!(next, count, "counts {counts:?} p {p}: rank {q} not covered");
                }
                assert!(pieces
                    .iter()
                    .all(|piece| piece.ranges.iter().any(|r| !r.is_empty())));
            }
        }
    }

    #[test]
    fn piece_size_from_bytes() {
        assert_eq!(piece_positions(1 << 20, 4096), 256);
        assert_eq!(piece_positions(10, 4096), 1);
    }
}
