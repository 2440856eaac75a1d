//! Which contiguous range of decoder layers each rank (pipeline stage) owns.

use std::ops::Range;

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSplit {
    ranges: Vec<Range<usize>>,
}

impl LayerSplit {
    /// As even as possible; the first `layers % ranks` ranks get one layer more.
    pub fn even(num_layers: usize, ranks: usize) -> Result<Self> {
        check_rank_count(num_layers, ranks)?;
        let counts: Vec<usize> = (0..ranks)
            .map(|r| num_layers / ranks + usize::from(r < num_layers % ranks))
            .collect();
        Self::from_counts(&counts, num_layers, ranks)
    }

    /// `--layers 12,12,12`: one count per rank, each at least one, summing to `num_layers`.
    pub fn from_counts(counts: &[usize], num_layers: usize, ranks: usize) -> Result<Self> {
        check_rank_count(num_layers, ranks)?;
        if counts.len() != ranks {
            bail!(
                "--layers has {} entries but the job has {ranks} ranks",
                counts.len()
            );
        }
        if let Some(rank) = counts.iter().position(|&c| c == 0) {
            bail!("--layers gives rank {rank} no layers; every rank needs at least one");
        }
        let total = counts.iter().try_fold(0usize, |sum, &c| sum.checked_add(c));
        match total {
            Some(total) if total == num_layers => {}
            Some(total) => bail!("--layers sums to {total} but the model has {num_layers} layers"),
            None => bail!("--layers sums to more than any model has layers (it has {num_layers})"),
        }
        let mut start = 0;
        let ranges = counts
            .iter()
            .map(|&count| {
                let range = start..start + count;
                start += count;
                range
            })
            .collect();
        Ok(Self { ranges })
    }

    pub fn ranks(&self) -> usize {
        self.ranges.len()
    }

    pub fn range(&self, rank: usize) -> Range<usize> {
        self.ranges[rank].clone()
    }

    pub fn num_layers(&self) -> usize {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// Most layers any rank owns: the number of local layer indices per step.
    pub fn max_layers_per_rank(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).max().unwrap_or(0)
    }

    /// Layer counts per rank, e.g. for the trace.
    pub fn counts(&self) -> Vec<usize> {
        self.ranges.iter().map(|r| r.len()).collect()
    }
}

fn check_rank_count(num_layers: usize, ranks: usize) -> Result<()> {
    if ranks == 0 {
        bail!("the job has no ranks");
    }
    if ranks > num_layers {
        bail!("{ranks} ranks but the model has only {num_layers} layers: run at most {num_layers} ranks");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_is_contiguous_and_balanced() {
        let s = LayerSplit::even(36, 5).unwrap();
        assert_eq!(s.counts(), vec![8, 7, 7, 7, 7]);
        assert_eq!(s.range(1), 8..15);
        assert_eq!(s.num_layers(), 36);
    }

    #[test]
    fn bad_splits_are_named() {
        let err = |r: Result<LayerSplit>| format!("{:#}", r.unwrap_err());
        assert!(err(LayerSplit::even(4, 5)).contains("5 ranks but the model has only 4 layers"));
        assert!(err(LayerSplit::from_counts(&[2, 2], 5, 2)).contains("sums to 4"));
        assert!(err(LayerSplit::from_counts(&[5, 0], 5, 2)).contains("rank 1 no layers"));
        assert!(err(LayerSplit::from_counts(&[5], 5, 2)).contains("1 entries"));
    }
}
