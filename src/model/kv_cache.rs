//! The KV cache: one preallocated tensor for a range of layers (every layer, or with
//! `--decode pipeline` a rank's own) and the whole context. Layers are addressed by their
//! global index.
//!
//! Layout `(layers, capacity, 2, n_kv_heads, head_dim)`: per layer and position, K then V. So
//! the K/V of positions `[start, end)` of one layer — one chunk's KV block — is one contiguous
//! range of memory, at a known offset in one allocation. A chunk is written in place, read back
//! as a prefix `[0, end)`, and the KV sync can send a block from, and receive it into, the cache
//! itself (on the GPU, MPI works on these device addresses directly).

use std::ops::Range;

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
    /// The global indices of the layers held.
    layers: Range<usize>,
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
        Self::for_layers(
            cfg,
            0..cfg.num_hidden_layers,
            capacity,
            dtype,
            device,
            ipc_capable,
        )
    }

    /// K/V of `layers` only (a pipeline stage's own, `--decode pipeline`); any other layer is
    /// refused.
    pub fn for_layers(
        cfg: &Qwen3Config,
        layers: Range<usize>,
        capacity: usize,
        dtype: DType,
        device: &Device,
        ipc_capable: bool,
    ) -> Result<Self> {
        if layers.start > layers.end || layers.end > cfg.num_hidden_layers {
            bail!(
                "KV cache for layers {layers:?}, outside 0..{}",
                cfg.num_hidden_layers
            );
        }
        let shape = [layers.len(), capacity, 2, cfg.num_key_value_heads, cfg.head_dim];
        Ok(Self {
            data: allocate(&shape, dtype, device, ipc_capable)?,
            layers,
            capacity,
        })
    }

    /// The global indices of the layers this cache holds.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// Bytes of the cache's memory.
    pub fn bytes(&self) -> u64 {
        (self.data.elem_count() * self.data.dtype().size_in_bytes()) as u64
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

    /// Index of (layer, position) in units of positions from the start of the cache; `layer`
    /// is one the cache holds (the KV transports run on whole caches only).
    pub fn position_index(&self, layer: usize, position: usize) -> usize {
        (layer - self.layers.start) * self.capacity + position
    }

    /// One layer: (capacity, 2, n_kv_heads, head_dim), a contiguous view.
    pub fn layer(&self, layer: usize) -> Result<Tensor> {
        if !self.layers.contains(&layer) {
            bail!(
                "layer {layer} is outside this KV cache (layers {}..{})",
                self.layers.start,
                self.layers.end
            );
        }
        Ok(self.data.get(layer - self.layers.start)?)
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

    /// Saves K and V of positions `[0, end)` of every layer held as safetensors
    /// (`layers.<l>.k`, `layers.<l>.v`, global indices), for comparing caches across runs.
    pub fn save_prefix(&self, path: &std::path::Path, end: usize) -> Result<()> {
        let mut tensors = std::collections::HashMap::new();
        for layer in self.layers() {
            let (k, v) = self.prefix(layer, end)?;
            tensors.insert(format!("layers.{layer}.k"), k.contiguous()?);
            tensors.insert(format!("layers.{layer}.v"), v.contiguous()?);
        }
        candle_core::safetensors::save(&tensors, path)
            .map_err(|e| anyhow::anyhow!("--dump {}: cannot write ({e})", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_for_a_layer_range_holds_those_layers_by_global_index_and_refuses_others() {
        let cfg = crate::model::tiny::config();
        let whole = KvCache::new(&cfg, 8, DType::F32, &Device::Cpu).unwrap();
        let part = KvCache::for_layers(&cfg, 3..5, 8, DType::F32, &Device::Cpu, false).unwrap();
        assert_eq!(part.layers(), 3..5);
        assert_eq!(part.bytes() * cfg.num_hidden_layers as u64, whole.bytes() * 2);
        let block = Tensor::ones(
            (2, 2, cfg.num_key_value_heads, cfg.head_dim),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        part.write_block(4, 6, &block).unwrap();
        let back = part
            .block(4, 6, 2)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(back as usize, block.elem_count());
        assert_eq!(part.position_index(4, 6), 8 + 6);
        for outside in [2, 5] {
            let error = part.layer(outside).unwrap_err().to_string();
            assert!(error.contains("outside this KV cache (layers 3..5)"), "{error}");
        }
        assert!(KvCache::for_layers(
            &cfg,
            0..cfg.num_hidden_layers + 1,
            8,
            DType::F32,
            &Device::Cpu,
            false
        )
        .is_err());
    }
}
