//! KV blocks between the cache and host bytes (the CPU transport): a block is one layer's
//! `(positions, 2, n_kv_heads, head_dim)` region of the cache, contiguous.

use anyhow::Result;

use crate::model::KvCache;
use crate::schedule::KvBlock;
use crate::transport::host_bytes::{tensor_from_bytes, tensor_to_bytes};

/// Copies a block out of the cache.
pub fn read_block(kv: &KvCache, block: &KvBlock) -> Result<Vec<u8>> {
    tensor_to_bytes(&kv.block(block.layer, block.chunk.start, block.chunk.len())?)
}

/// Writes a received block into the cache at its layer and positions.
pub fn write_block(kv: &KvCache, block: &KvBlock, bytes: &[u8]) -> Result<()> {
    let shape = kv.block(block.layer, 0, block.chunk.len())?.shape().clone();
    let device = kv.storage().device().clone();
    let tensor = tensor_from_bytes(bytes, kv.dtype(), shape, &device)?;
    kv.write_block(block.layer, block.chunk.start, &tensor)
}
