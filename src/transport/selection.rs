//! `--transport`: how KV blocks and hidden states move between GPUs, chosen once per job.

use anyhow::{bail, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportArg {
    /// `device` when MPI is CUDA-aware, else `host`.
    Auto,
    /// MPI on device memory, in place in the KV cache (needs a CUDA-aware MPI).
    Device,
    /// Through host memory.
    Host,
}

/// What the job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MPI on device pointers.
    Device,
    /// Copies through host memory (the only one for CPU tensors).
    Host,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Host => "host",
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

/// The transport for this job, and why.
pub fn choose_transport(
    arg: TransportArg,
    on_gpu: bool,
    awareness: &CudaAwareness,
) -> Result<(Transport, String)> {
    if !on_gpu {
        return Ok((Transport::Host, "tensors are on the CPU".into()));
    }
    match arg {
        TransportArg::Host => Ok((Transport::Host, "--transport host".into())),
        TransportArg::Device if awareness.aware => Ok((
            Transport::Device,
            format!("--transport device; MPI is CUDA-aware ({})", awareness.reason),
        )),
        TransportArg::Device => bail!(
            "--transport device needs a CUDA-aware MPI, and this one is not ({}); use --transport host",
            awareness.reason
        ),
        TransportArg::Auto if awareness.aware => Ok((
            Transport::Device,
            format!("MPI is CUDA-aware ({})", awareness.reason),
        )),
        TransportArg::Auto => Ok((
            Transport::Host,
            format!("MPI is not CUDA-aware ({})", awareness.reason),
        )),
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

    #[test]
    fn auto_follows_cuda_awareness_on_gpu_and_is_host_on_cpu() {
        assert_eq!(
            choose_transport(TransportArg::Auto, true, &aware(true))
                .unwrap()
                .0,
            Transport::Device
        );
        assert_eq!(
            choose_transport(TransportArg::Auto, true, &aware(false))
                .unwrap()
                .0,
            Transport::Host
        );
        assert_eq!(
            choose_transport(TransportArg::Device, false, &aware(false))
                .unwrap()
                .0,
            Transport::Host
        );
        assert_eq!(
            choose_transport(TransportArg::Host, true, &aware(true))
                .unwrap()
                .0,
            Transport::Host
        );
    }

    #[test]
    fn device_without_cuda_aware_mpi_is_an_error_naming_the_flag() {
        let err = choose_transport(TransportArg::Device, true, &aware(false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--transport device"), "{err}");
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
