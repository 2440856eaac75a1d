//! What each decode mode needs on a rank, and what the rank may use, known before anything is
//! loaded. Redundant decode holds every layer and the whole KV cache on every rank; pipelined
//! decode only the rank's stage (its layers, with the embedding on rank 0 and the head on the
//! last rank) and its layers' KV cache. `decode_mode` compares them.

use std::ops::Range;

use anyhow::Result;
use candle_core::{DType, Device};

use crate::model::weight_names::{parameter_count, stage_parameter_count};
use crate::model::{Qwen3Config, StageParts};

/// Bytes a rank will hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNeed {
    pub weights: u64,
    pub kv_cache: u64,
}

impl MemoryNeed {
    /// Redundant decode: every layer (with mixture-of-experts every expert of it), the
    /// embedding and the head, and every layer's K/V.
    pub fn redundant(cfg: &Qwen3Config, capacity: usize, dtype: DType) -> Self {
        let size = dtype.size_in_bytes() as u64;
        Self {
            weights: parameter_count(cfg) * size,
            kv_cache: kv_cache_bytes(cfg, cfg.num_hidden_layers, capacity, dtype),
        }
    }

    /// Pipelined decode: the stage of `layers` and `parts`, and those layers' K/V.
    pub fn pipeline(
        cfg: &Qwen3Config,
        capacity: usize,
        dtype: DType,
        layers: Range<usize>,
        parts: StageParts,
    ) -> Self {
        let size = dtype.size_in_bytes() as u64;
        Self {
            kv_cache: kv_cache_bytes(cfg, layers.len(), capacity, dtype),
            weights: stage_parameter_count(cfg, layers, parts) * size,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache
    }
}

/// Memory this rank may use: `--max-memory` if given, else its share of what the device has
/// free (on the CPU, the kernel's MemAvailable) among the `sharers` ranks that use the same
/// memory (the ranks on its GPU; on the CPU, the node's ranks); `None` when neither is known.
/// The second field names where the figure comes from.
pub fn memory_budget(
    max_memory: Option<u64>,
    device: &Device,
    sharers: usize,
) -> Result<Option<(u64, String)>> {
    if let Some(limit) = max_memory {
        return Ok(Some((limit, "--max-memory".into())));
    }
    Ok(free_memory(device)?.map(|free| share_of_free(free, sharers)))
}

/// `free` split among `sharers` ranks, and the words for it.
fn share_of_free(free: u64, sharers: usize) -> (u64, String) {
    match sharers {
        0 | 1 => (free, "free on the device".into()),
        n => (
            free / n as u64,
            format!("its share of the device's free memory, which {n} ranks use"),
        ),
    }
}

fn free_memory(device: &Device) -> Result<Option<u64>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            // A failed query only skips the check (the allocations would still fail loudly).
            let query = cuda
                .cuda_stream()
                .context()
                .bind_to_thread()
                .and_then(|_| candle_core::cuda_backend::cudarc::driver::result::mem_get_info());
            match query {
                Ok((free, _total)) => Ok(Some(free as u64)),
                Err(error) => {
                    tracing::warn!("cannot ask the GPU for its free memory ({error}); not checking");
                    Ok(None)
                }
            }
        }
        Device::Cpu => Ok(std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })),
        _ => Ok(None),
    }
}

/// Bytes of the K/V of `layers` layers over `capacity` positions.
fn kv_cache_bytes(cfg: &Qwen3Config, layers: usize, capacity: usize, dtype: DType) -> u64 {
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    (layers * capacity * 2 * kv) as u64 * dtype.size_in_bytes() as u64
}

/// Bytes in GiB, as the memory messages give them.
pub fn gib(bytes: u64) -> String {
    format!("{:.3} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_that_share_a_device_share_its_free_memory() {
        assert_eq!(share_of_free(90, 1), (90, "free on the device".to_string()));
        let (bytes, source) = share_of_free(90, 3);
        assert_eq!(bytes, 30);
        assert_eq!(source, "its share of the device's free memory, which 3 ranks use");
    }

    #[test]
    fn qwen3_8b_needs_its_parameter_count_in_bf16() {
        let cfg = crate::model::config::shapes::qwen3_8b();
        let need = MemoryNeed::redundant(&cfg, 16384, DType::BF16);
        // Qwen3-8B has 8,190,735,360 parameters (its model card: 8.2B)
        assert_eq!(need.weights, 8_190_735_360 * 2);
        assert_eq!(gib(need.weights), "15.256 GiB");
        // 36 layers x 16384 positions x (K + V) x 8 heads x 128 x 2 bytes = 2.25 GiB
        assert_eq!(need.kv_cache, 36 * 16384 * 2 * 8 * 128 * 2);
        // on 4 ranks of 9 layers, each stage holds a quarter of the cache and its own layers
        let split = crate::schedule::LayerSplit::even(36, 4).unwrap();
        let stages: Vec<MemoryNeed> = (0..4)
            .map(|rank| {
                let parts = StageParts {
                    embed: rank == 0,
                    head: rank == 3,
                };
                MemoryNeed::pipeline(&cfg, 16384, DType::BF16, split.range(rank), parts)
            })
            .collect();
        assert!(stages.iter().all(|s| s.kv_cache == need.kv_cache / 4));
        assert_eq!(stages.iter().map(|s| s.weights).sum::<u64>(), need.weights);
        // the middle stages: 9 layers of 4096 x (2 x 4096 + 2 x 1024 + 3 x 12288) + norms
        let layer = 4096 * (2 * 4096 + 2 * 1024 + 3 * 12288) + 2 * 128 + 2 * 4096;
        assert_eq!(stages[1].weights, 9 * layer * 2);
    }

    #[test]
    fn qwen3_30b_a3b_needs_every_expert_of_every_layer() {
        let cfg = crate::model::config::shapes::qwen3_30b_a3b();
        // Qwen3-30B-A3B has 30,532,122,624 parameters (its model card: 30.5B), 3.3B active
        assert_eq!(
            MemoryNeed::redundant(&cfg, 1, DType::BF16).weights,
            30_532_122_624 * 2
        );
    }
}
