//! Chunked causal prefill attention on the GPU in one kernel (`kernels/attention.cu`):
//! scores never leave the chip, and K/V are read from the cache in place. bf16, head_dim 128
//! (every Qwen3 size); elsewhere the layer uses the reference path in `attention.rs`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice, WrapErr};

use super::kernel_inputs::attention_inputs;
use super::kernel_modules::{function, KernelModule};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

pub const HEAD_DIM: usize = 128;

/// The kernel's query tile: 64 rows (4 warps) or 128 rows (8 warps, half the shared-memory
/// traffic per FLOP, fewer blocks). By default 128-row tiles serve chunks of at least
/// `LARGE_TILE_FROM` rows (every GPU figure in results/bench was measured so); forcing 64 rows
/// gave 0.782 s against 0.792 s on an H200 (Qwen3-8B, 16K tokens in 4,096-token chunks), within
/// the run-to-run spread. `QWEN3_MPI_ATTN_Q_TILE=64|128` forces one for every chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueryTile {
    Rows64,
    Rows128,
}

const LARGE_TILE_FROM: usize = 1024;

impl QueryTile {
    fn for_chunk(len: usize) -> Self {
        static FORCED: std::sync::OnceLock<Option<QueryTile>> = std::sync::OnceLock::new();
        let forced = FORCED.get_or_init(|| match std::env::var("QWEN3_MPI_ATTN_Q_TILE").as_deref() {
            Ok("64") => Some(Self::Rows64),
            Ok("128") => Some(Self::Rows128),
            _ => None,
        });
        forced.unwrap_or(if len >= LARGE_TILE_FROM {
            Self::Rows128
        } else {
            Self::Rows64
        })
    }

    fn rows(self) -> usize {
        match self {
            Self::Rows64 => 64,
            Self::Rows128 => 128,
        }
    }

    fn threads(self) -> u32 {
        self.rows() as u32 * 2 // 16 rows per warp
    }

    fn kernel(self) -> &'static str {
        match self {
            Self::Rows64 => "flash_attn_prefill_bf16",
            Self::Rows128 => "flash_attn_prefill_bf16_q128",
        }
    }
}

/// Whether the kernel covers this shape and precision.
pub fn supported(q: &Tensor, head_dim: usize) -> bool {
    q.device().is_cuda() && q.dtype() == DType::BF16 && head_dim == HEAD_DIM
}

/// Attention of queries at positions `[start, start + L)` over cache positions
/// `[0, start + L)`.
/// q: (L, H, D) → (L, H, D); `layer_kv`: one layer of the cache, (capacity, 2, KVH, D).
pub fn prefill_attention(q: &Tensor, layer_kv: &Tensor, start: usize) -> candle_core::Result<Tensor> {
    let (_, heads, _) = q.dims3()?;
    let (_, _, kv_heads, _) = layer_kv.dims4()?;
    let op = FlashPrefill {
        start,
        heads,
        kv_heads,
        scale_log2: std::f32::consts::LOG2_E / (HEAD_DIM as f32).sqrt(),
    };
    q.contiguous()?.apply_op2_no_bwd(layer_kv, &op)
}

struct FlashPrefill {
    start: usize,
    heads: usize,
    kv_heads: usize,
    scale_log2: f32,
}

impl CustomOp2 for FlashPrefill {
    fn name(&self) -> &'static str {
        "flash-prefill"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash prefill attention runs on the GPU only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        kv: &CudaStorage,
        kv_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let inputs = attention_inputs("flash prefill", q, q_layout, kv, kv_layout)?;
        let ((len, heads, dim), capacity) = (inputs.q_dims, inputs.capacity);
        if heads != self.heads || dim != HEAD_DIM || heads % self.kv_heads != 0 {
            candle_core::bail!(
                "flash prefill attention: unsupported shape {:?}",
                q_layout.shape()
            );
        }
        if self.start + len > capacity {
            candle_core::bail!("flash prefill attention: positions beyond the cache");
        }
        let device = q.device();
        // SAFETY: every element is written by the kernel (each (row < L, head) once).
        let out = unsafe { device.alloc::<half::bf16>(len * heads * dim)? };
        let tile = QueryTile::for_chunk(len);
        let func = function(device, KernelModule::Attention, tile.kernel())?;
        let config = LaunchConfig {
            grid_dim: (len.div_ceil(tile.rows()) as u32, heads as u32, 1),
            block_dim: (tile.threads(), 1, 1),
            shared_mem_bytes: 0,
        };
        let (len_i, start_i) = (len as i32, self.start as i32);
        let (heads_i, kv_heads_i) = (heads as i32, self.kv_heads as i32);
        let stream = device.cuda_stream();
        let mut launch = stream.launch_builder(&func);
        launch.arg(&inputs.q);
        launch.arg(&inputs.kv);
        launch.arg(&out);
        launch.arg(&len_i);
        launch.arg(&start_i);
        launch.arg(&heads_i);
        launch.arg(&kv_heads_i);
        launch.arg(&self.scale_log2);
        // SAFETY: argument types match the kernel's signature; the grid covers (L, H) and the
        // kernel reads q (L, H, D) and kv positions [0, start + L) < capacity (checked above).
        unsafe { launch.launch(config) }.w()?;
        let storage = CudaStorage {
            slice: CudaStorageSlice::BF16(out),
            device: device.clone(),
        };
        Ok((storage, Shape::from((len, heads, dim))))
    }
}
