//! Tensors as host byte buffers for MPI (hidden states between stages, KV blocks). One copy
//! each way: device/tensor memory → `Vec<u8>`, and bytes → a new tensor.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor};

/// The tensor's elements, row-major, as bytes in host memory.
pub fn tensor_to_bytes(tensor: &Tensor) -> Result<Vec<u8>> {
    let flat = tensor.flatten_all()?;
    Ok(match flat.dtype() {
        DType::F32 => bytemuck::cast_slice(&flat.to_vec1::<f32>()?).to_vec(),
        DType::BF16 => bytemuck::cast_slice(&flat.to_vec1::<half::bf16>()?).to_vec(),
        DType::F16 => bytemuck::cast_slice(&flat.to_vec1::<half::f16>()?).to_vec(),
        other => bail!("cannot send tensors of dtype {other:?}"),
    })
}

/// A tensor of `shape` and `dtype` on `device` from bytes written by [`tensor_to_bytes`].
pub fn tensor_from_bytes(
    bytes: &[u8],
    dtype: DType,
    shape: impl Into<Shape>,
    device: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let expected = shape.elem_count() * dtype.size_in_bytes();
    if bytes.len() != expected {
        bail!(
            "received {} bytes for a {shape:?} {dtype:?} tensor, expected {expected}",
            bytes.len()
        );
    }
    Ok(Tensor::from_raw_buffer(bytes, dtype, shape.dims(), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_every_float_dtype() {
        let t = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let t = t.to_dtype(dtype).unwrap();
            let bytes = tensor_to_bytes(&t).unwrap();
            assert_eq!(bytes.len(), 24 * dtype.size_in_bytes());
            let back = tensor_from_bytes(&bytes, dtype, (2, 3, 4), &Device::Cpu).unwrap();
            let diff = (back.to_dtype(DType::F32).unwrap() - t.to_dtype(DType::F32).unwrap()).unwrap();
            assert_eq!(
                diff.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
                0.0
            );
        }
    }
}
