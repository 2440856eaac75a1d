//! The KV cache: one preallocated tensor for every layer and the whole context.
//!
//! Layout `(layers, capacity, 2, n_kv_heads, head_dim)`: per layer and position, K then V. So
//! the K/V of positions `[start, end)` of one layer — one chunk's KV block — is one contiguous
//! range of memory, at a known offset in one allocation. A chunk is written in place, read back
//! as a prefix `[0, end)`, and the KV sync can send a block from, and receive it into, the cache
//! itself (on the GPU, MPI works on these device addresses directly).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::config::Qwen3Config;

/// Zeroed cache memory. On a GPU the cache is outside candle's event tracking: compute writes
/// blocks on its stream while the KV sync reads and fills other blocks on its own, and tracking
/// the one big allocation would make every cache write wait for every sync call. Ordering is
/// explicit instead (the sync waits for the compute event after the block's layer, and is
/// drained before decode). `ipc_capable` (or `QWEN3_MPI_KV_ALLOC=malloc`) takes plain
/// `cuMemAlloc` memory that CUDA IPC can share.
fn allocate(shape: &[usize], dtype: DType, device: &Device, ipc_capable: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use crate::transport::device_memory::{ipc_capable_zeros, KV_ALLOC_ENV};
        let ipc = match std::env::var(KV_ALLOC_ENV).as_deref() {
            Ok("malloc") => true,
            Ok("pool") => false,
            Err(_) => ipc_capable,
            Ok(other) => bail!("{KV_ALLOC_ENV}={other}: expected `pool` or `malloc`"),
        };
        let stream = cuda.cuda_stream();
        let context = stream.context();
        let tracking = context.is_event_tracking();
        // SAFETY: only this allocation is made while tracking is off (no other thread
        // allocates yet: the cache is made before the background weight load starts); its
        // zeroing is complete before any other stream sees it (synchronised below).
        unsafe { context.disable_event_tracking() };
        let data = if ipc {
            ipc_capable_zeros(shape, dtype, device)
        } else {
            Tensor::zeros(shape, dtype, device).map_err(Into::into)
        };
        if tracking {
            unsafe { context.enable_event_tracking() };
        }
        stream.synchronize()?;
        return data;
    }
    let _ = ipc_capable;
    Ok(Tensor::zeros(shape, dtype, device)?)
}

pub struct KvCache {
    /// (layers, capacity, 2, n_kv_heads, head_dim)
    data: Tensor,
    layers: usize,
    capacity: usize,
}

impl KvCache {
    /// Allocates (zeroed) K/V for all `cfg.num_hidden_layers` layers.
    pub fn new(cfg: &Qwen3Config, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        Self::with_memory(cfg, capacity, dtype, device, false)
    }

    /// As `new`; on a GPU with `ipc_capable`, in memory CUDA IPC can share (what a
    /// CUDA-aware MPI needs to move blocks GPU to GPU directly).
    pub fn with_memory(
        cfg: &Qwen3Config,
        capacity: usize,
        dtype: DType,
        device: &Device,
        ipc_capable: bool,
    ) -> Result<Self> {
        let layers = cfg.num_hidden_layers;
        let shape = [layers, capacity, 2, cfg.num_key_value_heads, cfg.head_dim];
        Ok(Self {
            data: allocate(&shape, dtype, device, ipc_capable)?,
            layers,
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The whole cache, (layers, capacity, 2, n_kv_heads, head_dim): for transports that
    /// address blocks inside it.
    pub fn storage(&self) -> &Tensor {
        &self.data
    }

    /// Bytes of K plus V of one position of one layer.
    pub fn position_bytes(&self) -> usize {
        let dims = self.data.dims();
        2 * dims[3] * dims[4] * self.data.dtype().size_in_bytes()
    }

    /// Index of (layer, position) in units of positions from the start of the cache.
    pub fn position_index(&self, layer: usize, position: usize) -> usize {
        layer * self.capacity + position
    }

    /// One layer: (capacity, 2, n_kv_heads, head_dim), a contiguous view.
    pub fn layer(&self, layer: usize) -> Result<Tensor> {
        if layer >= self.layers {
            bail!("layer {layer} is outside the KV cache ({} layers)", self.layers);
        }
        Ok(self.data.get(layer)?)
    }

    fn check_range(&self, start: usize, len: usize) -> Result<()> {
        if start + len > self.capacity {
            bail!(
                "KV cache overflow: positions {start}..{} exceed its capacity of {}",
                start + len,
                self.capacity
            );
        }
        Ok(())
    }

    /// Writes K and V of positions `[start, start + L)` of `layer` in place.
    /// `k`, `v`: (L, n_kv_heads, head_dim).
    pub fn write(&self, layer: usize, start: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let block = Tensor::stack(&[k, v], 1)?; // (L, 2, KVH, D)
        self.write_block(layer, start, &block)
    }

    /// Writes a block (L, 2, n_kv_heads, head_dim) at positions `[start, start + L)` of `layer`.
    pub fn write_block(&self, layer: usize, start: usize, block: &Tensor) -> Result<()> {
        self.check_range(start, block.dim(0)?)?;
        self.layer(layer)?.slice_set(&block.contiguous()?, 0, start)?;
        Ok(())
    }

    /// The block of positions `[start, start + len)` of `layer`: (len, 2, n_kv_heads, head_dim),
    /// a contiguous view.
    pub fn block(&self, layer: usize, start: usize, len: usize) -> Result<Tensor> {
        self.check_range(start, len)?;
        Ok(self.layer(layer)?.narrow(0, start, len)?)
    }

    /// K and V of positions `[0, end)` of `layer`: each (end, n_kv_heads, head_dim), strided
    /// views.
    pub fn prefix(&self, layer: usize, end: usize) -> Result<(Tensor, Tensor)> {
        let block = self.block(layer, 0, end)?; // (end, 2, KVH, D)
        Ok((
            block.narrow(1, 0, 1)?.squeeze(1)?,
            block.narrow(1, 1, 1)?.squeeze(1)?,
        ))
    }

    /// Saves K and V of positions `[0, end)` of every layer as safetensors
    /// (`layers.<l>.k`, `layers.<l>.v`), for comparing caches across runs.
    pub fn save_prefix(&self, path: &std::path::Path, end: usize) -> Result<()> {
        let mut tensors = std::collections::HashMap::new();
        for layer in 0..self.layers {
            let (k, v) = self.prefix(layer, end)?;
            tensors.insert(format!("layers.{layer}.k"), k.contiguous()?);
            tensors.insert(format!("layers.{layer}.v"), v.contiguous()?);
        }
        candle_core::safetensors::save(&tensors, path)
            .map_err(|e| anyhow::anyhow!("--dump {}: cannot write ({e})", path.display()))
    }
}
