//! `--transport`: how KV blocks and hidden states move between GPUs, chosen once per job.

use anyhow::{bail, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportArg {
    /// `ipc` when every rank is on one node; else `device` when MPI is CUDA-aware, else `nccl`
    /// when built in, else `host`.
    Auto,
    /// MPI on device memory, in place in the KV cache (needs a CUDA-aware MPI).
    Device,
    /// Through host memory.
    Host,
    /// NCCL sends and receives on device memory, in place (builds with `--features nccl`).
    Nccl,
    /// Each block pushed into every peer's cache by the copy engines through CUDA IPC (every
    /// rank on one node; no MPI or NCCL in the sync calls).
    Ipc,
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
    /// Copy-engine pushes into the peers' caches through CUDA IPC.
    Ipc,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Host => "host",
            Self::Nccl => "nccl",
            Self::Ipc => "ipc",
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

/// Environment override of the allgather over `--transport host`: `mpi` (MPI's own allgather:
/// staged on a GPU, one `MPI_Allgatherv` on the CPU) or `window` (through a node-shared MPI
/// window, `sync/shared_window.rs`; an error where it cannot run). Unset: the window when every
/// rank is on one node, else MPI's.
pub const HOST_PATH_ENV: &str = "QWEN3_MPI_HOST_PATH";

/// What `QWEN3_MPI_HOST_PATH` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPath {
    Mpi,
    Window,
}

impl HostPath {
    /// From the environment (checked at setup, so a bad value ends the job cleanly).
    pub fn from_env() -> Result<Option<Self>> {
        Self::parse(std::env::var(HOST_PATH_ENV).ok().as_deref())
    }

    pub fn parse(value: Option<&str>) -> Result<Option<Self>> {
        match value {
            None | Some("") => Ok(None),
            Some("mpi") => Ok(Some(Self::Mpi)),
            Some("window") => Ok(Some(Self::Window)),
            Some(other) => bail!("{HOST_PATH_ENV}={other}: expected `mpi` or `window`"),
        }
    }
}

/// Whether this build has NCCL.
pub const NCCL_BUILT: bool = cfg!(feature = "nccl");

/// The transport for this job, and why. `nccl_built`: this binary has NCCL.
pub fn choose_transport(
    arg: TransportArg,
    on_gpu: bool,
    one_node: bool,
    awareness: &CudaAwareness,
    nccl_built: bool,
) -> Result<(Transport, String)> {
    if !on_gpu {
        if arg == TransportArg::Nccl {
            bail!("--transport nccl (or --sync nccl) needs GPUs; this job runs on the CPU");
        }
        if arg == TransportArg::Ipc {
            bail!("--transport ipc needs GPUs; this job runs on the CPU");
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
        TransportArg::Ipc if one_node => Ok((Transport::Ipc, "--transport ipc".into())),
        TransportArg::Ipc => bail!("--transport ipc needs every rank on one node; these ranks span several"),
        TransportArg::Device if awareness.aware => {
            Ok((Transport::Device, format!("--transport device; {}", aware())))
        }
        TransportArg::Device => {
            bail!(
                "--transport device needs a CUDA-aware MPI, and {}; use --transport host",
                unaware()
            )
        }
        TransportArg::Auto if one_node => Ok((
            Transport::Ipc,
            "every rank is on one node: copy-engine pushes through CUDA IPC".into(),
        )),
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
        choose_transport(arg, gpu, false, &aware(cuda_aware), nccl)
            .unwrap()
            .0
    }

    #[test]
    fn auto_is_ipc_on_one_node_of_gpus_and_host_on_cpus() {
        let on_one_node = |gpu| {
            choose_transport(TransportArg::Auto, gpu, true, &aware(true), true)
                .unwrap()
                .0
        };
        assert_eq!(on_one_node(true), Transport::Ipc);
        assert_eq!(on_one_node(false), Transport::Host);
        let across_nodes = choose_transport(TransportArg::Ipc, true, false, &aware(true), true).unwrap_err();
        assert!(
            across_nodes.to_string().contains("--transport ipc"),
            "{across_nodes}"
        );
    }

    #[test]
    fn auto_across_nodes_prefers_device_then_nccl_then_host_on_gpu_and_is_host_on_cpu() {
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
            choose_transport(arg, gpu, false, &aware(cuda_aware), nccl)
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

    #[test]
    fn host_path_override_takes_mpi_or_window_and_names_itself_otherwise() {
        assert_eq!(HostPath::parse(None).unwrap(), None);
        assert_eq!(HostPath::parse(Some("mpi")).unwrap(), Some(HostPath::Mpi));
        assert_eq!(HostPath::parse(Some("window")).unwrap(), Some(HostPath::Window));
        let error = HostPath::parse(Some("shm")).unwrap_err().to_string();
        assert!(error.contains(HOST_PATH_ENV), "{error}");
    }
}
