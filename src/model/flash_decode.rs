//! Attention of one new token over the whole cache on the GPU (`kernels/decode_attention.cu`),
//! split along the keys so that a single query per head still fills the GPU: K/V are read once,
//! in place, with no transposed copy of the prefix. bf16, head_dim 128, up to 8 query heads per
//! KV head (every Qwen3 size); elsewhere decode uses the reference path in `attention.rs`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice, WrapErr};

use super::kernel_inputs::attention_inputs;
use super::kernel_modules::{function, KernelModule};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

const HEAD_DIM: usize = 128;
/// Query heads per KV head the kernel holds in shared memory (`MAX_G`).
const MAX_GROUP: usize = 8;
/// Keys of one block (`MAX_SPLIT_KEYS`: its scores stay in shared memory), and the fewest worth
/// a block of their own.
const MAX_SPLIT_KEYS: usize = 1024;
const MIN_SPLIT_KEYS: usize = 64;
/// Blocks to aim for: about two per SM of an H100/H200 (132 SMs).
const TARGET_BLOCKS: usize = 256;
const THREADS: u32 = 128;

/// Whether the kernel covers this step: one query, bf16, head_dim 128, at most 8 heads per KV head.
pub fn supported(q: &Tensor, head_dim: usize, heads: usize, kv_heads: usize) -> bool {
    q.device().is_cuda()
        && q.dtype() == DType::BF16
        && head_dim == HEAD_DIM
        && q.dim(0).is_ok_and(|len| len == 1)
        && heads.is_multiple_of(kv_heads)
        && heads / kv_heads <= MAX_GROUP
}

/// Attention of the query at position `keys − 1` over cache positions `[0, keys)`.
/// q: (1, H, D) → (1, H, D); `layer_kv`: one layer of the cache, (capacity, 2, KVH, D).
pub fn decode_attention(q: &Tensor, layer_kv: &Tensor, keys: usize) -> candle_core::Result<Tensor> {
    let (_, heads, _) = q.dims3()?;
    let (_, _, kv_heads, _) = layer_kv.dims4()?;
    let op = FlashDecode {
        keys,
        heads,
        kv_heads,
        scale_log2: std::f32::consts::LOG2_E / (HEAD_DIM as f32).sqrt(),
    };
    q.contiguous()?.apply_op2_no_bwd(layer_kv, &op)
}

/// Keys per block and the number of blocks along the keys, for `keys` keys and `kv_heads` heads.
fn key_splits(keys: usize, kv_heads: usize) -> (usize, usize) {
    let per_head = TARGET_BLOCKS.div_ceil(kv_heads);
    let split_keys = keys.div_ceil(per_head).clamp(MIN_SPLIT_KEYS, MAX_SPLIT_KEYS);
    (split_keys, keys.div_ceil(split_keys))
}

struct FlashDecode {
    keys: usize,
    heads: usize,
    kv_heads: usize,
    scale_log2: f32,
}

impl CustomOp2 for FlashDecode {
    fn name(&self) -> &'static str {
        "flash-decode"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash decode attention runs on the GPU only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        kv: &CudaStorage,
        kv_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let inputs = attention_inputs("flash decode", q, q_layout, kv, kv_layout)?;
        let ((len, heads, dim), capacity) = (inputs.q_dims, inputs.capacity);
        if len != 1 || heads != self.heads || dim != HEAD_DIM || heads % self.kv_heads != 0 {
            candle_core::bail!("flash decode attention: unsupported shape {:?}", q_layout.shape());
        }
        if heads / self.kv_heads > MAX_GROUP || self.keys == 0 || self.keys > capacity {
            candle_core::bail!(
                "flash decode attention: {} keys over a cache of {capacity}",
                self.keys
            );
        }
        let device = q.device();
        let (split_keys, splits) = key_splits(self.keys, self.kv_heads);
        // SAFETY: block (KV head, split) writes every (split, head of its group) row of both
        // partial buffers (each split holds at least one key), and the combine kernel every output.
        let part_o = unsafe { device.alloc::<f32>(splits * heads * HEAD_DIM)? }; // (splits, H, D)
        let part_ml = unsafe { device.alloc::<f32>(splits * heads * 2)? }; // (splits, H, 2)
        let out = unsafe { device.alloc::<half::bf16>(heads * HEAD_DIM)? }; // (1, H, D)

        let func = function(device, KernelModule::DecodeAttention, "flash_attn_decode_bf16")?;
        let stream = device.cuda_stream();
        let (keys_i, split_keys_i) = (self.keys as i32, split_keys as i32);
        let (heads_i, kv_heads_i, splits_i) = (heads as i32, self.kv_heads as i32, splits as i32);
        let mut launch = stream.launch_builder(&func);
        launch.arg(&inputs.q);
        launch.arg(&inputs.kv);
        launch.arg(&part_o);
        launch.arg(&part_ml);
        launch.arg(&keys_i);
        launch.arg(&split_keys_i);
        launch.arg(&heads_i);
        launch.arg(&kv_heads_i);
        launch.arg(&self.scale_log2);
        let config = LaunchConfig {
            grid_dim: (self.kv_heads as u32, splits as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types match the kernel's signature; it reads q (1, H, D), cache
        // positions [0, keys) < capacity (checked above), and writes (splits, H, ·) partials.
        unsafe { launch.launch(config) }.w()?;

        let combine = function(device, KernelModule::DecodeAttention, "flash_attn_decode_combine")?;
        let mut launch = stream.launch_builder(&combine);
        launch.arg(&part_o);
        launch.arg(&part_ml);
        launch.arg(&out);
        launch.arg(&splits_i);
        launch.arg(&heads_i);
        let config = LaunchConfig {
            grid_dim: (heads as u32, 1, 1),
            block_dim: (HEAD_DIM as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: reads the partials written above (same stream), writes (1, H, D).
        unsafe { launch.launch(config) }.w()?;
        let storage = CudaStorage {
            slice: CudaStorageSlice::BF16(out),
            device: device.clone(),
        };
        Ok((storage, Shape::from((1, heads, HEAD_DIM))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_splits_cover_every_key_within_the_shared_memory_bound() {
        for keys in [1, 63, 64, 65, 1000, 4097, 16385, 32768, 200_000] {
            for kv_heads in [1, 4, 8] {
                let (split_keys, splits) = key_splits(keys, kv_heads);
                assert!(split_keys <= MAX_SPLIT_KEYS);
                assert!(splits * split_keys >= keys, "{keys} keys uncovered");
                assert!((splits - 1) * split_keys < keys, "an empty split for {keys} keys");
            }
        }
    }
}
