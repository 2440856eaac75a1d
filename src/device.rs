//! `--device` and `--dtype`: where a rank computes, and in which precision.

use anyhow::Result;
use candle_core::{DType, Device};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceArg {
    /// A GPU if this build has CUDA and one is visible, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU: node-local rank mod visible GPUs (an error where there is none).
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

/// The device of a rank: GPU `local_rank mod visible GPUs` (CUDA_VISIBLE_DEVICES is honoured
/// by CUDA itself), or the CPU.
pub fn select_device(arg: DeviceArg, local_rank: usize, local_ranks: usize) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto if !candle_core::utils::cuda_is_available() => Ok(Device::Cpu),
        DeviceArg::Auto | DeviceArg::Cuda => cuda_device(local_rank, local_ranks),
    }
}

/// GPU for a node-local rank; `None` when there is no GPU.
pub fn gpu_for_rank(local_rank: usize, gpus: usize) -> Option<usize> {
    (gpus > 0).then(|| local_rank % gpus)
}

/// How many of a node's `local_ranks` ranks use the GPU of node-local rank `local_rank` (they
/// go round-robin over `gpus`, [`gpu_for_rank`]); 1 where there is no GPU.
pub fn ranks_on_gpu_of(local_rank: usize, local_ranks: usize, gpus: usize) -> usize {
    match gpu_for_rank(local_rank, gpus) {
        Some(gpu) => (0..local_ranks).filter(|&r| r % gpus == gpu).count().max(1),
        None => 1,
    }
}

/// GPUs this process sees (0 in a build without CUDA, or where counting fails).
pub fn visible_gpus() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        CudaContext::device_count().map_or(0, |n| usize::try_from(n).unwrap_or(0))
    }
    #[cfg(not(feature = "cuda"))]
    0
}

#[cfg(feature = "cuda")]
fn cuda_device(local_rank: usize, local_ranks: usize) -> Result<Device> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let gpus =
        CudaContext::device_count().map_err(|e| anyhow::anyhow!("--device cuda: cannot count GPUs: {e}"))?;
    let gpus = usize::try_from(gpus).unwrap_or(0);
    let Some(ordinal) = gpu_for_rank(local_rank, gpus) else {
        anyhow::bail!(
            "--device cuda: no GPU is visible (CUDA_VISIBLE_DEVICES={:?})",
            std::env::var("CUDA_VISIBLE_DEVICES").ok()
        );
    };
    if local_ranks > gpus && local_rank == 0 {
        crate::eprint_line!("qwen3-mpi: warning: {local_ranks} ranks share {gpus} GPU(s) on this node (fine for testing, slow for timing)");
    }
    Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("--device cuda: cannot open GPU {ordinal}: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_local_rank: usize, _local_ranks: usize) -> Result<Device> {
    anyhow::bail!(
        "--device cuda: this binary was built without CUDA support (rebuild with `--features cuda`)"
    )
}

/// `--dtype`, or the default for the device: f32 on CPU (candle's CPU bf16 matmul is slow),
/// bf16 on GPU.
pub fn select_dtype(arg: Option<DTypeArg>, device: &Device) -> DType {
    arg.map_or(default_dtype(device.is_cuda()), DTypeArg::dtype)
}

/// The precision without `--dtype`: bf16 on a GPU, f32 on the CPU.
pub fn default_dtype(on_gpu: bool) -> DType {
    match on_gpu {
        true => DType::BF16,
        false => DType::F32,
    }
}

/// The hardware behind a device, for the trace: the GPU's name, or "cpu".
pub fn device_hardware(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        return cuda
            .cuda_stream()
            .context()
            .name()
            .unwrap_or_else(|_| "unknown GPU".into());
    }
    let _ = device;
    "cpu".into()
}

/// Short name for logs and traces.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => format!("{:?}", device.location()),
        other => format!("{:?}", other.location()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_go_round_robin_over_visible_gpus() {
        assert_eq!(gpu_for_rank(0, 2), Some(0));
        assert_eq!(gpu_for_rank(3, 2), Some(1));
        assert_eq!(gpu_for_rank(2, 8), Some(2));
        assert_eq!(gpu_for_rank(0, 0), None);
    }

    #[test]
    fn ranks_sharing_a_gpu_are_counted_from_the_round_robin() {
        // 3 ranks on one GPU; 5 ranks on 2 GPUs (0, 2, 4 on GPU 0; 1, 3 on GPU 1); one each
        assert_eq!(ranks_on_gpu_of(1, 3, 1), 3);
        assert_eq!(ranks_on_gpu_of(4, 5, 2), 3);
        assert_eq!(ranks_on_gpu_of(3, 5, 2), 2);
        assert_eq!(ranks_on_gpu_of(2, 4, 4), 1);
        assert_eq!(ranks_on_gpu_of(2, 4, 0), 1);
    }
}
