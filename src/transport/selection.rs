//! `--transport`: how KV blocks and hidden states move between GPUs, chosen once per job.

use anyhow::{bail, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportArg {
    /// `device` when MPI is CUDA-aware, else `nccl` when built in, else `host`.
    Auto,
    /// MPI on device memory, in place in the KV cache (needs a CUDA-aware MPI).
    Device,
    /// Through host memory.
    Host,
    /// NCCL sends and receives on device memory, in place (builds with `--features nccl`).
    Nccl,
}

/// What the job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MPI on device pointers.
    Device,
    /// Copies through host memory (the only one for CPU tensors).
    Host,
    /// NCCL on device pointers.
    Nccl,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Host => "host",
            Self::Nccl => "nccl",
        }
    }
}

/// Whether MPI can move device memory, and how we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaAwareness {
    pub aware: bool,
    pub reason: String,
}

/// Environment override: `QWEN3_MPI_CUDA_AWARE=1` or `0`.
pub const CUDA_AWARE_ENV: &str = "QWEN3_MPI_CUDA_AWARE";

impl CudaAwareness {
    /// From the override if set, else from the library's own answer.
    pub fn detect(env_value: Option<&str>, library: Option<bool>) -> Result<Self> {
        match env_value {
            Some("1") | Some("yes") | Some("true") => {
                return Ok(Self {
                    aware: true,
                    reason: format!("{CUDA_AWARE_ENV}=1"),
                });
            }
            Some("0") | Some("no") | Some("false") => {
                return Ok(Self {
                    aware: false,
                    reason: format!("{CUDA_AWARE_ENV}=0"),
                });
            }
            Some(other) => bail!("{CUDA_AWARE_ENV}={other}: expected 1 or 0"),
            None => {}
        }
        Ok(match library {
            Some(true) => Self { aware: true, reason: "MPIX_Query_cuda_support() = 1".into() },
            Some(false) => Self { aware: false, reason: "MPIX_Query_cuda_support() = 0".into() },
            None => Self {
                aware: false,
                reason: format!("the MPI library cannot say (no MPIX_Query_cuda_support); set {CUDA_AWARE_ENV}=1 if it is"),
            },
        })
    }
}

/// Whether this build has NCCL.
pub const NCCL_BUILT: bool = cfg!(feature = "nccl");

/// The transport for this job, and why. `nccl_built`: this binary has NCCL.
pub fn choose_transport(
    arg: TransportArg,
    on_gpu: bool,
    awareness: &CudaAwareness,
    nccl_built: bool,
) -> Result<(Transport, String)> {
    if !on_gpu {
        if arg == TransportArg::Nccl {
            bail!("--transport nccl (or --sync nccl) needs GPUs; this job runs on the CPU");
        }
        return Ok((Transport::Host, "tensors are on the CPU".into()));
    }
    let aware = || format!("MPI is CUDA-aware ({})", awareness.reason);
    let unaware = || format!("MPI is not CUDA-aware ({})", awareness.reason);
    match arg {
        TransportArg::Host => Ok((Transport::Host, "--transport host".into())),
        TransportArg::Nccl if nccl_built => Ok((Transport::Nccl, "--transport nccl".into())),
        TransportArg::Nccl => {
            bail!("--transport nccl: this binary was built without NCCL (`--features nccl`)")
        }
        TransportArg::Device if awareness.aware => {
            Ok((Transport::Device, format!("--transport device; {}", aware())))
        }
        TransportArg::Device => {
            bail!(
                "--transport device needs a CUDA-aware MPI, and {}; use --transport host",
                unaware()
            )
        }
        TransportArg::Auto if awareness.aware => Ok((Transport::Device, aware())),
        TransportArg::Auto if nccl_built => Ok((Transport::Nccl, format!("{}; NCCL is built in", unaware()))),
        TransportArg::Auto => Ok((Transport::Host, unaware())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aware(a: bool) -> CudaAwareness {
        CudaAwareness {
            aware: a,
            reason: "test".into(),
        }
    }

    fn pick(arg: TransportArg, gpu: bool, cuda_aware: bool, nccl: bool) -> Transport {
        choose_transport(arg, gpu, &aware(cuda_aware), nccl).unwrap().0
    }

    #[test]
    fn auto_prefers_device_then_nccl_then_host_on_gpu_and_is_host_on_cpu() {
        assert_eq!(pick(TransportArg::Auto, true, true, true), Transport::Device);
        assert_eq!(pick(TransportArg::Auto, true, false, true), Transport::Nccl);
        assert_eq!(pick(TransportArg::Auto, true, false, false), Transport::Host);
        assert_eq!(pick(TransportArg::Device, false, false, false), Transport::Host);
        assert_eq!(pick(TransportArg::Host, true, true, true), Transport::Host);
        assert_eq!(pick(TransportArg::Nccl, true, false, true), Transport::Nccl);
    }

    #[test]
    fn impossible_requests_are_errors_naming_the_flag() {
        let err = |arg, gpu, cuda_aware, nccl| {
            choose_transport(arg, gpu, &aware(cuda_aware), nccl)
                .unwrap_err()
                .to_string()
        };
        assert!(err(TransportArg::Device, true, false, true).contains("--transport device"));
        assert!(err(TransportArg::Nccl, true, true, false).contains("without NCCL"));
        assert!(err(TransportArg::Nccl, false, true, true).contains("needs GPUs"));
    }

    #[test]
    fn override_beats_the_library_and_bad_values_are_named() {
        assert!(CudaAwareness::detect(Some("1"), Some(false)).unwrap().aware);
        assert!(!CudaAwareness::detect(Some("0"), Some(true)).unwrap().aware);
        assert!(CudaAwareness::detect(None, Some(true)).unwrap().aware);
        assert!(!CudaAwareness::detect(None, None).unwrap().aware);
        assert!(CudaAwareness::detect(Some("maybe"), None)
            .unwrap_err()
            .to_string()
            .contains(CUDA_AWARE_ENV));
    }
}
