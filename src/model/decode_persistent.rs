//! The decode step as one persistent kernel (`kernels/decode_persistent.cu`), in place of the
//! chain of six kernels a layer (`decode_step.rs`): one block a multiprocessor stays for the
//! whole step and moves from phase to phase behind a grid-wide barrier, and each product's first
//! weights are in flight before its barrier. `QWEN3_MPI_DECODE_KERNEL=persistent` asks for it;
//! the chain stays the default until a benchmark shows the persistent step faster on the card.
//!
//! The kernel reads the step from one table of 8-byte words in device memory ([`StepTable`] and
//! [`LayerTable`], in the field order of `PersistentStep` and `PersistentLayer` in the kernel).
//! Every block must be resident at once: the grid is what the occupancy calculator says fits,
//! and a barrier that waits over 2 s traps (a launch error, not a hang) where another process
//! holds part of the GPU.

use anyhow::{bail, Context, Result};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaSlice, DevicePtr};
use candle_core::cuda_backend::CudaDevice;

use super::decode_split::key_splits;
use super::gpu_tensors::{grid, launch_kernel};
use super::kernel_modules::{function, KernelModule};

/// `PERSISTENT_THREADS` of the kernel.
const THREADS: u32 = 256;
const KERNEL_ENV: &str = "QWEN3_MPI_DECODE_KERNEL";

/// Which kernels run a decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernel {
    /// Six kernels a layer, replayed as a CUDA graph (`decode_step.rs`).
    Chain,
    /// One persistent kernel for the whole step.
    Persistent,
}

/// What `QWEN3_MPI_DECODE_KERNEL` asks for (unset: the chain).
pub fn requested() -> Result<DecodeKernel> {
    match std::env::var(KERNEL_ENV).as_deref() {
        Err(_) | Ok("") | Ok("chain") => Ok(DecodeKernel::Chain),
        Ok("persistent") => Ok(DecodeKernel::Persistent),
        Ok(other) => bail!("{KERNEL_ENV}={other}: expected chain or persistent"),
    }
}

/// One layer's addresses (`PersistentLayer`). A dense layer has `router == 0`; a sparse one has
/// the experts' (E, 2·I, hidden) and (E, hidden, I) as `gate_up` and `down`.
pub struct LayerTable {
    pub qkv: u64,
    pub o: u64,
    pub input_norm: u64,
    pub post_norm: u64,
    pub q_norm: u64,
    pub k_norm: u64,
    /// (capacity, 2, KVH, D)
    pub kv: u64,
    pub gate_up: u64,
    pub down: u64,
    pub router: u64,
}

/// The step's buffers and sizes (`PersistentStep`); `embed == 0`: the step starts from `x`,
/// `lm_head == 0`: it ends with `x`. The table's key ranges come from [`PersistentKernel`].
pub struct StepTable {
    pub embed: u64,
    pub token_at: u64,
    pub final_norm: u64,
    pub lm_head: u64,
    pub logits: u64,
    pub cos: u64,
    pub sin: u64,
    /// (position, keys), i32
    pub position_at: u64,
    pub x: u64,
    pub qkv_out: u64,
    pub q: u64,
    pub attn: u64,
    pub gate_up_out: u64,
    pub part_o: u64,
    pub part_ml: u64,
    pub ranges_done: u64,
    pub moe_logits: u64,
    pub moe_act: u64,
    pub moe_route: u64,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub inter: usize,
    pub vocab: usize,
    pub experts: usize,
    pub top_k: usize,
    pub normalize: bool,
    pub moe_inter: usize,
    pub eps: f32,
    pub scale_log2: f32,
}

/// The kernel for one grouping and dtype, its grid and key ranges, before the table exists.
pub struct PersistentKernel {
    func: CudaFunction,
    blocks: u32,
    shared_bytes: u32,
    /// Key ranges of the attention phase: fixed by the cache's capacity and the grid.
    pub split_keys: usize,
    pub splits: usize,
}

impl PersistentKernel {
    /// The kernel of `group` query heads per KV head (`suffix`: bf16 or f16) on `sms`
    /// multiprocessors, with `shared_bytes` of dynamic shared memory (the largest phase's).
    pub fn load(
        device: &CudaDevice,
        suffix: &str,
        group: usize,
        sms: usize,
        capacity: usize,
        kv_heads: usize,
        shared_bytes: usize,
    ) -> Result<Self> {
        let name = format!("decode_persistent_g{group}_{suffix}");
        let func = function(device, KernelModule::DecodePersistent, &name)?;
        let per_sm = super::decode_step::max_blocks_per_sm(&func, THREADS, shared_bytes as u32, &name)?;
        if per_sm == 0 {
            bail!("decode step: {name} with {shared_bytes} bytes of shared memory does not fit a multiprocessor");
        }
        let blocks = per_sm * sms;
        let (split_keys, splits) = key_splits(capacity, kv_heads, blocks);
        Ok(Self {
            func,
            blocks: blocks as u32,
            shared_bytes: shared_bytes as u32,
            split_keys,
            splits,
        })
    }

    /// The step over `layers`, its table written to the device once.
    pub fn with_table(
        self,
        device: &CudaDevice,
        step: &StepTable,
        layers: &[LayerTable],
    ) -> Result<PersistentStep> {
        let stream = device.cuda_stream();
        let mut layer_words = Vec::with_capacity(layers.len() * 10);
        for l in layers {
            layer_words.extend([
                l.qkv,
                l.o,
                l.input_norm,
                l.post_norm,
                l.q_norm,
                l.k_norm,
                l.kv,
                l.gate_up,
                l.down,
                l.router,
            ]);
        }
        let layer_table = stream
            .clone_htod(&layer_words)
            .context("decode step: the persistent step's layer table")?;
        let barrier = stream
            .alloc_zeros::<u32>(1)
            .context("decode step: the persistent step's barrier")?;
        let layer_table_at = layer_table.device_ptr(&stream).0;
        let barrier_word = barrier.device_ptr(&stream).0;
        let words = [
            layer_table_at,
            layers.len() as u64,
            step.embed,
            step.token_at,
            step.final_norm,
            step.lm_head,
            step.logits,
            step.cos,
            step.sin,
            step.position_at,
            step.x,
            step.qkv_out,
            step.q,
            step.attn,
            step.gate_up_out,
            step.part_o,
            step.part_ml,
            step.ranges_done,
            barrier_word,
            step.moe_logits,
            step.moe_act,
            step.moe_route,
            step.hidden as u64,
            step.heads as u64,
            step.kv_heads as u64,
            step.inter as u64,
            step.vocab as u64,
            self.split_keys as u64,
            self.splits as u64,
            step.experts as u64,
            step.top_k as u64,
            u64::from(step.normalize),
            step.moe_inter as u64,
            u64::from(step.eps.to_bits()),
            u64::from(step.scale_log2.to_bits()),
        ];
        let table = stream
            .clone_htod(&words)
            .context("decode step: the persistent step's table")?;
        let table_at = table.device_ptr(&stream).0;
        let barrier_at = barrier.device_ptr(&stream).0;
        Ok(PersistentStep {
            kernel: self,
            table_at,
            barrier_at,
            _table: table,
            _layer_table: layer_table,
            _barrier: barrier,
        })
    }
}

/// The persistent step, ready to queue.
pub struct PersistentStep {
    kernel: PersistentKernel,
    table_at: u64,
    barrier_at: u64,
    _table: CudaSlice<u64>,
    _layer_table: CudaSlice<u64>,
    _barrier: CudaSlice<u32>,
}

impl PersistentStep {
    /// Blocks of the grid (one a multiprocessor, as the occupancy calculator gave).
    pub fn blocks(&self) -> u32 {
        self.kernel.blocks
    }

    /// Queues the step: the barrier's count zeroed, then the kernel.
    ///
    /// # Safety
    /// Every address of the table is alive and sized as the table says (the decode step holds
    /// them), and the step's inputs (token, position) are written on the same stream before.
    pub unsafe fn queue(&self, device: &CudaDevice) -> Result<()> {
        let stream = device.cuda_stream();
        // SAFETY: one u32 the step owns, on the stream the kernel runs on.
        unsafe {
            sys::cuMemsetD32Async(self.barrier_at, 0, 1, stream.cu_stream())
                .result()
                .context("decode step: the persistent step's barrier")?;
        }
        let config = grid(self.kernel.blocks, THREADS, self.kernel.shared_bytes);
        // SAFETY: the caller's contract; the kernel reads the table and the buffers it names.
        unsafe { launch_kernel!(device, &self.kernel.func, config, self.table_at) }
            .context("decode step: the persistent kernel")
    }
}
