//! KV blocks between the cache and the wire: a block is K then V of one layer for one chunk's
//! positions, `2 × positions × n_kv_heads × head_dim` elements.

use anyhow::Result;
use candle_core::DType;

use crate::model::KvCache;
use crate::schedule::KvBlock;
use crate::transport::host_bytes::{tensor_from_bytes, tensor_to_bytes};

/// Bytes of one position of a block (K and V).
pub fn bytes_per_position(kv: &KvCache) -> Result<usize> {
    let (_, heads, dim) = kv.layer(0).k.dims3()?;
    Ok(2 * heads * dim * kv.layer(0).k.dtype().size_in_bytes())
}

/// Copies a block out of the cache: K bytes then V bytes.
pub fn read_block(kv: &KvCache, block: &KvBlock) -> Result<Vec<u8>> {
    let layer = kv.layer(block.layer);
    let (start, len) = (block.chunk.start, block.chunk.len());
    let mut bytes = tensor_to_bytes(&layer.k.narrow(0, start, len)?)?;
    bytes.extend(tensor_to_bytes(&layer.v.narrow(0, start, len)?)?);
    Ok(bytes)
}

/// Writes a received block into the cache at its layer and positions.
pub fn write_block(kv: &KvCache, block: &KvBlock, bytes: &[u8]) -> Result<()> {
    let layer = kv.layer(block.layer);
    let (_, heads, dim) = layer.k.dims3()?;
    let dtype: DType = layer.k.dtype();
    let half = bytes.len() / 2;
    let shape = (block.chunk.len(), heads, dim);
    let device = layer.k.device();
    let k = tensor_from_bytes(&bytes[..half], dtype, shape, device)?;
    let v = tensor_from_bytes(&bytes[half..], dtype, shape, device)?;
    kv.write(block.layer, block.chunk.start, &k, &v)
}
