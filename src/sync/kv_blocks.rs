//! KV blocks between the cache and host bytes (the host transport): a block is one layer's
//! `(positions, 2, n_kv_heads, head_dim)` region of the cache, contiguous. On a GPU only that
//! region is copied, on a stream of the communication thread's own.

use anyhow::Result;

use crate::model::KvCache;
use crate::schedule::KvBlock;
use crate::transport::host_bytes::{tensor_from_bytes, tensor_to_bytes};

/// Reads and writes blocks of one cache.
pub struct BlockIo {
    #[cfg(feature = "cuda")]
    stream: Option<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>>,
}

impl BlockIo {
    pub fn new(kv: &KvCache) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let device = kv.storage().device();
            let stream = match device.is_cuda() {
                true => Some(crate::transport::device_memory::side_stream(device)?),
                false => None,
            };
            Ok(Self { stream })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = kv;
            Ok(Self {})
        }
    }

    /// Copies a block out of the cache.
    pub fn read(&self, kv: &KvCache, block: &KvBlock) -> Result<Vec<u8>> {
        #[cfg(feature = "cuda")]
        if let Some(stream) = &self.stream {
            stream.context().bind_to_thread()?;
            let (offset, len) = region(kv, block);
            return crate::transport::device_memory::read_region(kv.storage(), stream, offset, len);
        }
        tensor_to_bytes(&kv.block(block.layer, block.chunk.start, block.chunk.len())?)
    }

    /// Writes a received block into the cache at its layer and positions.
    pub fn write(&self, kv: &KvCache, block: &KvBlock, bytes: &[u8]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(stream) = &self.stream {
            stream.context().bind_to_thread()?;
            let (offset, len) = region(kv, block);
            anyhow::ensure!(
                bytes.len() == len,
                "received {} bytes for a {len}-byte KV block",
                bytes.len()
            );
            return crate::transport::device_memory::write_region(kv.storage(), stream, offset, bytes);
        }
        let shape = kv.block(block.layer, 0, block.chunk.len())?.shape().clone();
        let device = kv.storage().device().clone();
        let tensor = tensor_from_bytes(bytes, kv.dtype(), shape, &device)?;
        kv.write_block(block.layer, block.chunk.start, &tensor)
    }
}

/// (byte offset, byte length) of a block inside the cache.
#[cfg(feature = "cuda")]
fn region(kv: &KvCache, block: &KvBlock) -> (usize, usize) {
    let offset = kv.position_index(block.layer, block.chunk.start) * kv.position_bytes();
    (offset, block.chunk.len() * kv.position_bytes())
}
