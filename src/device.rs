//! `--device` and `--dtype`: where a rank computes, and in which precision.

use anyhow::Result;
use candle_core::{DType, Device};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceArg {
    /// CUDA if this build has it and a GPU is visible, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl DTypeArg {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// The device for GPU `ordinal` (the node-local rank picks it).
pub fn select_device(arg: DeviceArg, ordinal: usize) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto if !candle_core::utils::cuda_is_available() => Ok(Device::Cpu),
        DeviceArg::Auto | DeviceArg::Cuda => cuda_device(ordinal),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("--device cuda: cannot open GPU {ordinal}: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device> {
    anyhow::bail!(
        "--device cuda: this binary was built without CUDA support (rebuild with `--features cuda`)"
    )
}

/// `--dtype`, or the default for the device: f32 on CPU (candle's CPU bf16 matmul is slow),
/// bf16 on GPU.
pub fn select_dtype(arg: Option<DTypeArg>, device: &Device) -> DType {
    match arg {
        Some(d) => d.dtype(),
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    }
}

/// Short name for logs and traces.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => format!("{:?}", device.location()),
        other => format!("{:?}", other.location()),
    }
}
