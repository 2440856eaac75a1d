//! The prefill's time predicted from the cost model: each stage runs the chunks in order, a
//! chunk starts on a stage when the stage is free and its hidden state has arrived, and the
//! hops from one stage to the next go one at a time.

use super::chunk_cost::JobCost;
use super::chunks::Chunk;
use super::layer_split::LayerSplit;

/// What the model predicts for one way of cutting the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefillPrediction {
    /// From the first chunk's start to the last rank's logits.
    pub ttft_s: f64,
    /// Each stage's compute (index = rank).
    pub busy_s: Vec<f64>,
}

impl PrefillPrediction {
    /// The stages' compute summed over the TTFT: what the summary calls the pipeline overlap.
    pub fn overlap(&self) -> f64 {
        self.busy_s.iter().sum::<f64>() / self.ttft_s
    }
}

/// The prefill of `chunks` through the stages of `split` at `cost`.
pub fn predict_prefill(chunks: &[Chunk], split: &LayerSplit, cost: &JobCost) -> PrefillPrediction {
    let ranks = split.ranks();
    // when each stage finished its last chunk; when each stage's outgoing link is free
    let mut stage_free = vec![0.0f64; ranks];
    let mut link_free = vec![0.0f64; ranks];
    let mut busy = vec![0.0f64; ranks];
    for chunk in chunks {
        let mut arrived = 0.0f64;
        for rank in 0..ranks {
            if rank > 0 {
                let sent = stage_free[rank - 1].max(link_free[rank - 1]);
                link_free[rank - 1] = sent + cost.hop_s(chunk.len());
                arrived = link_free[rank - 1];
            }
            let compute = cost.layers_s(split.range(rank), chunk.len(), chunk.start);
            stage_free[rank] = stage_free[rank].max(arrived) + compute;
            busy[rank] += compute;
        }
    }
    let head = match chunks.is_empty() {
        true => 0.0,
        false => cost.head_s,
    };
    PrefillPrediction {
        ttft_s: stage_free.last().copied().unwrap_or(0.0) + head,
        busy_s: busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::shapes::qwen3_8b;
    use crate::schedule::chunk_cost::{DeviceRates, HopCost};
    use crate::schedule::pipeline::ideal_speedup;
    use crate::schedule::split_prompt;

    fn gpu_cost(hop: HopCost) -> JobCost {
        JobCost::new(&qwen3_8b(), DeviceRates::GPU, hop, 2)
    }

    #[test]
    fn one_stage_takes_the_sum_of_its_chunks() {
        let cost = gpu_cost(HopCost::GPU_IPC);
        let split = LayerSplit::even(36, 1).unwrap();
        let chunks = split_prompt(4096, 1024);
        let sum: f64 = chunks
            .iter()
            .map(|c| cost.layers_s(0..36, c.len(), c.start))
            .sum();
        let predicted = predict_prefill(&chunks, &split, &cost);
        assert!((predicted.ttft_s - sum - cost.head_s).abs() < 1e-12);
        assert!((predicted.overlap() * predicted.ttft_s - sum).abs() < 1e-12);
    }

    /// Equal chunk costs and free hops: the pipeline's closed form, (C + R − 1) steps of one
    /// chunk's stage time, and an overlap of exactly the ideal R·C/(C+R−1).
    #[test]
    fn equal_chunks_with_free_hops_give_the_ideal() {
        let mut cost = gpu_cost(HopCost {
            name: "free",
            latency_s: 0.0,
            bytes_per_s: f64::INFINITY,
        });
        cost.head_s = 0.0;
        // attention free too, so that every chunk costs the same
        let no_attention = DeviceRates {
            attention_flops: f64::INFINITY,
            ..DeviceRates::GPU
        };
        cost.layers = JobCost::new(&qwen3_8b(), no_attention, cost.hop, 2).layers;
        for (ranks, chunks) in [(2, 8), (4, 16), (3, 5)] {
            let split = LayerSplit::even(36, ranks).unwrap();
            let prompt = split_prompt(chunks * 512, 512);
            let stage = cost.layers_s(split.range(0), 512, 0);
            let predicted = predict_prefill(&prompt, &split, &cost);
            assert!((predicted.ttft_s - (chunks + ranks - 1) as f64 * stage).abs() < 1e-9);
            assert!((predicted.overlap() - ideal_speedup(ranks, chunks)).abs() < 1e-9);
        }
    }

    #[test]
    fn slow_hops_lengthen_the_prefill() {
        let split = LayerSplit::even(36, 4).unwrap();
        let chunks = split_prompt(16384, 1024);
        let ipc = predict_prefill(&chunks, &split, &gpu_cost(HopCost::GPU_IPC));
        let host = predict_prefill(&chunks, &split, &gpu_cost(HopCost::GPU_HOST));
        assert!(host.ttft_s > ipc.ttft_s);
        assert_eq!(host.busy_s, ipc.busy_s);
    }
}
