//! The decode step's attention (`decode_step.rs`): its kernel for the model's grouping of query
//! heads over KV heads, with or without the layer's q/k step folded in (`QWEN3_MPI_DECODE_QK`,
//! `decode_variants.rs`), the key ranges it splits the cache into, the ranges' partial results,
//! and the launch (`kernels/decode_step_attention.cuh`).

use anyhow::{bail, Context, Result};
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchConfig};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice};
use candle_core::DType;

use super::decode_products::max_blocks_per_sm;
use super::decode_split::{key_splits, max_splits};
use super::decode_variants::QkPlacement;
use super::gpu_tensors::{alloc, launch_kernel, prefer_shared_memory};
use super::kernel_modules::function;
use super::kernel_modules::KernelModule::DecodeOps;
use super::layer_ops::QkNormRope;

const HEAD_DIM: usize = 128;
const ATTN_THREADS: u32 = 128;
/// `ATTN_SMEM_BYTES` of `kernels/decode_step_attention.cuh`: 4 stages of K and V tiles of 32
/// keys (bf16/f16).
const ATTN_SHARED_BYTES: u32 = 4 * 2 * 32 * HEAD_DIM as u32 * 2;

pub struct StepAttention {
    func: CudaFunction,
    placement: QkPlacement,
    heads: usize,
    kv_heads: usize,
    /// Key ranges: fixed by the cache's capacity, so that a graph replays any step.
    split_keys: usize,
    splits: usize,
    scale_log2: f32,
    /// Each range's unnormalised output (splits, H, D) and (max, sum) (splits, H, 2), f32.
    _partials: (CudaStorageSlice, CudaStorageSlice),
    part_o: u64,
    part_ml: u64,
    /// Key ranges of each KV head done (KVH i32): zero between launches, the last range of a
    /// head resets it.
    _ranges_done: CudaSlice<i32>,
    ranges_done_at: u64,
}

impl StepAttention {
    /// For `heads` query heads over `kv_heads` (1 to 8 a KV head), dtype `suffix`, a cache of
    /// `capacity` positions, on `sms` multiprocessors; `prefer_shared`: ask for all of L1 as
    /// shared memory (the ring products' setting).
    pub fn new(
        device: &CudaDevice,
        (heads, kv_heads): (usize, usize),
        suffix: &str,
        capacity: usize,
        sms: usize,
        prefer_shared: bool,
    ) -> Result<Self> {
        let group = heads / kv_heads;
        let placement = QkPlacement::from_env().map_err(anyhow::Error::msg)?;
        let func = function(device, DecodeOps, &placement.attention_kernel(group, suffix))?;
        // the key ranges from the separate kernel's occupancy in both placements, so that both
        // merge the same ranges (and give the same outputs bit for bit)
        let ranges_fn = function(
            device,
            DecodeOps,
            &QkPlacement::Separate.attention_kernel(group, suffix),
        )?;
        // the ring kernel's block fits beside its neighbours' only where every decode kernel
        // keeps the multiprocessor's split of L1 at all shared memory
        if prefer_shared {
            for f in [&func, &ranges_fn] {
                prefer_shared_memory(f, "decode attention")?;
            }
        }
        let resident =
            max_blocks_per_sm(&ranges_fn, ATTN_THREADS, ATTN_SHARED_BYTES, "decode attention")?.max(1) * sms;
        // (also raises the launched kernel's shared memory limit to what it takes)
        if max_blocks_per_sm(&func, ATTN_THREADS, ATTN_SHARED_BYTES, "decode attention")? == 0 {
            bail!("decode step: the attention kernel does not fit a multiprocessor");
        }
        let (split_keys, splits) = key_splits(capacity, kv_heads, resident);
        debug_assert!(splits <= max_splits(kv_heads, resident));
        let stream = device.cuda_stream();
        let ranges_done = stream
            .alloc_zeros::<i32>(kv_heads)
            .context("decode step: the attention's range counters")?;
        let ranges_done_at = ranges_done.device_ptr(&stream).0;
        let (o_slice, part_o) = alloc(device, DType::F32, splits * heads * HEAD_DIM)?;
        let (ml_slice, part_ml) = alloc(device, DType::F32, splits * heads * 2)?;
        Ok(Self {
            func,
            placement,
            heads,
            kv_heads,
            split_keys,
            splits,
            scale_log2: std::f32::consts::LOG2_E / (HEAD_DIM as f32).sqrt(),
            _partials: (o_slice, ml_slice),
            part_o,
            part_ml,
            _ranges_done: ranges_done,
            ranges_done_at,
        })
    }

    /// Whether the attention does the q/k step itself (then the step runs no q/k kernel).
    pub fn does_qk_step(&self) -> bool {
        self.placement == QkPlacement::Fused
    }

    /// Queues out (H, D) = softmax(q Kᵀ) V over cache positions [0, *keys_at) of the layer's
    /// cache `qk.kv` (capacity, 2, KVH, D), q being `qk.q_out` (H, D) as `qk` (one row) writes
    /// it; where the attention `does_qk_step`, it does `qk` itself instead: builds q from the q/k/v
    /// row and writes the position's K and V into the cache.
    ///
    /// # Safety
    /// `qk`'s addresses (one row) and `out` (H, D) are live device buffers of those shapes;
    /// *keys_at ≤ capacity, and *qk.start_at + 1 == *keys_at (the step's inputs).
    pub unsafe fn queue(
        &self,
        device: &CudaDevice,
        overlapped: bool,
        qk: &QkNormRope,
        out: u64,
        keys_at: u64,
    ) -> Result<()> {
        let config = LaunchConfig {
            grid_dim: (self.kv_heads as u32, self.splits as u32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: ATTN_SHARED_BYTES,
        };
        // SAFETY: the caller's; the partials hold `splits` ranges (the grid's), the counters KVH.
        // Both kernels take the q/k step's arguments last (the separate one ignores them).
        unsafe {
            launch_kernel!(
                overlapped if overlapped; device,
                &self.func,
                config,
                qk.q_out,
                qk.kv,
                self.part_o,
                self.part_ml,
                self.ranges_done_at,
                out,
                keys_at,
                self.split_keys as i32,
                self.heads as i32,
                self.kv_heads as i32,
                self.scale_log2,
                qk.qkv,
                qk.q_w,
                qk.k_w,
                qk.cos,
                qk.sin,
                qk.start_at,
                qk.eps
            )?;
        }
        Ok(())
    }
}
