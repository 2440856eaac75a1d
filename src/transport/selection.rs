//! `--transport`: how KV blocks move between ranks, decided once per job by [`plan_transport`]
//! for `run` and `bench-comm` alike: the transport and why, what `auto` falls back to when CUDA
//! IPC cannot join the ranks, whether the KV cache must be IPC-capable memory, and the host
//! allgather's path (a node-shared window or MPI's own).

use anyhow::{bail, Result};

use super::mpi_env::MpiEnv;
pub use super::settings::HostPath;
use super::settings::{TransportSettings, CUDA_AWARE_ENV, HOST_PATH_ENV};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportArg {
    /// `ipc` when every rank is on one node; else `device` when MPI is CUDA-aware, else `nccl`
    /// when built in, else `host`. On the CPU: `host`.
    Auto,
    /// MPI on device memory, in place in the KV cache (needs a CUDA-aware MPI).
    Device,
    /// Through host memory (a node-shared window when every rank is on one node).
    Host,
    /// NCCL sends and receives on device memory, in place (GPU builds from
    /// scripts/build-cuda.sh; one GPU per rank).
    Nccl,
    /// Each block pushed into every peer's KV cache by the GPUs' copy engines through CUDA IPC
    /// (every rank on one node).
    Ipc,
}

impl TransportArg {
    /// The value as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Device => "device",
            Self::Host => "host",
            Self::Nccl => "nccl",
            Self::Ipc => "ipc",
        }
    }
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

impl CudaAwareness {
    /// From the override (`QWEN3_MPI_CUDA_AWARE`) if set, else from the library's own answer.
    pub fn detect(overridden: Option<bool>, library: Option<bool>) -> Self {
        match (overridden, library) {
            (Some(aware), _) => Self {
                aware,
                reason: format!("{CUDA_AWARE_ENV}={}", u8::from(aware)),
            },
            (None, Some(aware)) => Self {
                aware,
                reason: format!("MPIX_Query_cuda_support() = {}", u8::from(aware)),
            },
            (None, None) => Self {
                aware: false,
                reason: format!(
                    "the MPI library cannot say (no MPIX_Query_cuda_support); set {CUDA_AWARE_ENV}=1 if it is"
                ),
            },
        }
    }
}

/// Whether this build has NCCL.
pub const NCCL_BUILT: bool = cfg!(feature = "nccl");

/// Where the job runs, as far as the transport choice goes: detected once per job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub on_gpu: bool,
    pub ranks: usize,
    /// Every rank is on this node.
    pub one_node: bool,
    pub awareness: CudaAwareness,
    pub nccl_built: bool,
}

impl Site {
    /// This job's site: the ranks' layout from MPI, CUDA-awareness from `settings`' override
    /// or the library.
    pub fn detect(on_gpu: bool, env: &MpiEnv, settings: &TransportSettings) -> Self {
        Self {
            on_gpu,
            ranks: env.size,
            one_node: env.local_size == env.size,
            awareness: CudaAwareness::detect(settings.cuda_aware, super::mpi_raw::library_cuda_support()),
            nccl_built: NCCL_BUILT,
        }
    }
}

/// The allgather over host memory: through a node-shared window (when every rank is on one
/// node) or MPI's own; `required`: `QWEN3_MPI_HOST_PATH=window` insists on the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathPlan {
    pub window: bool,
    pub required: bool,
    pub reason: String,
}

/// What the job uses to move KV blocks, decided once ([`plan_transport`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportPlan {
    pub transport: Transport,
    pub reason: String,
    /// Under `auto` with `ipc`: what every rank uses instead if CUDA IPC cannot join the ranks
    /// (no peer access between the GPUs, separate containers), and why.
    pub ipc_fallback: Option<(Transport, String)>,
    /// The KV cache must be memory CUDA IPC can share (our IPC pushes; a CUDA-aware MPI).
    pub ipc_capable_cache: bool,
    pub host_path: HostPathPlan,
    /// Bytes per rank of one piece of the staged host allgather (GPU, MPI's path).
    pub stage_piece_bytes: usize,
    /// How the hidden states go from stage to stage (`--hidden-transport`).
    pub hidden: super::HiddenPlan,
}

/// The plan for `arg` (`ring`: the sync strategy is the ring, which IPC pushes do not have).
/// An impossible request is an error naming the flag.
pub fn plan_transport(
    arg: TransportArg,
    hidden: super::HiddenArg,
    ring: bool,
    site: &Site,
    settings: &TransportSettings,
) -> Result<TransportPlan> {
    if ring && arg == TransportArg::Ipc && site.on_gpu {
        bail!(
            "--sync ring does not apply to --transport ipc (each rank pushes its blocks to every peer); \
             use --sync allgather"
        );
    }
    let (transport, reason) = choose_transport(
        arg,
        site.on_gpu,
        site.one_node && !ring,
        &site.awareness,
        site.nccl_built,
    )?;
    let ipc_fallback = match (arg, transport) {
        (TransportArg::Auto, Transport::Ipc) => Some(choose_transport(
            TransportArg::Auto,
            site.on_gpu,
            false, // as if across nodes
            &site.awareness,
            site.nccl_built,
        )?),
        _ => None,
    };
    Ok(TransportPlan {
        transport,
        reason,
        ipc_capable_cache: matches!(transport, Transport::Device | Transport::Ipc),
        ipc_fallback,
        host_path: plan_host_path(site, settings.host_path)?,
        stage_piece_bytes: settings.stage_piece_bytes(),
        hidden: super::plan_hidden(hidden, site)?,
    })
}

/// The host allgather's path: the node-shared window when every rank is on one node, unless
/// `QWEN3_MPI_HOST_PATH=mpi`; `=window` across nodes is an error.
fn plan_host_path(site: &Site, asked: Option<HostPath>) -> Result<HostPathPlan> {
    let plan = |window, reason: String| HostPathPlan {
        window,
        required: asked == Some(HostPath::Window),
        reason,
    };
    Ok(match asked {
        Some(HostPath::Mpi) => plan(false, format!("{HOST_PATH_ENV}=mpi")),
        _ if site.ranks < 2 => plan(false, "one rank: nothing to exchange".into()),
        Some(HostPath::Window) if !site.one_node => {
            bail!(
                "{HOST_PATH_ENV}=window: the {} ranks are on more than one node",
                site.ranks
            )
        }
        _ if !site.one_node => plan(
            false,
            format!("the {} ranks are on more than one node", site.ranks),
        ),
        _ => plan(
            true,
            format!(
                "all {} ranks share one node; {HOST_PATH_ENV}=mpi selects MPI's allgather",
                site.ranks
            ),
        ),
    })
}

/// The transport for `arg`, and why. `one_node`: every rank is on one node and IPC pushes
/// apply; `nccl_built`: this binary has NCCL.
fn choose_transport(
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
            bail!("--transport nccl: this binary was built without NCCL (scripts/build-cuda.sh builds it in)")
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
    use crate::transport::HiddenArg;

    fn aware(a: bool) -> CudaAwareness {
        CudaAwareness {
            aware: a,
            reason: "test".into(),
        }
    }

    fn site(gpu: bool, one_node: bool, cuda_aware: bool, nccl: bool) -> Site {
        Site {
            on_gpu: gpu,
            ranks: 3,
            one_node,
            awareness: aware(cuda_aware),
            nccl_built: nccl,
        }
    }

    fn plan(arg: TransportArg, site: &Site) -> Result<TransportPlan> {
        plan_transport(arg, HiddenArg::Auto, false, site, &TransportSettings::default())
    }

    fn pick(arg: TransportArg, gpu: bool, cuda_aware: bool, nccl: bool) -> Transport {
        plan(arg, &site(gpu, false, cuda_aware, nccl)).unwrap().transport
    }

    #[test]
    fn auto_is_ipc_on_one_node_of_gpus_and_host_on_cpus() {
        let on_one_node = |gpu| {
            plan(TransportArg::Auto, &site(gpu, true, true, true))
                .unwrap()
                .transport
        };
        assert_eq!(on_one_node(true), Transport::Ipc);
        assert_eq!(on_one_node(false), Transport::Host);
        let across_nodes = plan(TransportArg::Ipc, &site(true, false, true, true)).unwrap_err();
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
    fn auto_with_ipc_carries_its_across_nodes_fallback_and_a_ring_never_gets_ipc() {
        let one_node = site(true, true, false, true);
        let ipc = plan(TransportArg::Auto, &one_node).unwrap();
        assert_eq!(ipc.transport, Transport::Ipc);
        assert!(ipc.ipc_capable_cache);
        assert_eq!(ipc.ipc_fallback.map(|(t, _)| t), Some(Transport::Nccl));
        let asked = plan(TransportArg::Ipc, &one_node).unwrap();
        assert_eq!(
            asked.ipc_fallback, None,
            "an explicit --transport ipc does not fall back"
        );
        let ring = plan_transport(
            TransportArg::Auto,
            HiddenArg::Auto,
            true,
            &one_node,
            &TransportSettings::default(),
        )
        .unwrap();
        assert_eq!(ring.transport, Transport::Nccl);
        assert!(!ring.ipc_capable_cache);
        assert!(plan_transport(
            TransportArg::Ipc,
            HiddenArg::Auto,
            true,
            &one_node,
            &TransportSettings::default()
        )
        .is_err());
    }

    #[test]
    fn impossible_requests_are_errors_naming_the_flag() {
        let err = |arg, gpu, cuda_aware, nccl| {
            plan(arg, &site(gpu, false, cuda_aware, nccl))
                .unwrap_err()
                .to_string()
        };
        assert!(err(TransportArg::Device, true, false, true).contains("--transport device"));
        assert!(err(TransportArg::Nccl, true, true, false).contains("without NCCL"));
        assert!(err(TransportArg::Nccl, false, true, true).contains("needs GPUs"));
    }

    #[test]
    fn override_beats_the_library() {
        assert!(CudaAwareness::detect(Some(true), Some(false)).aware);
        assert!(!CudaAwareness::detect(Some(false), Some(true)).aware);
        assert!(CudaAwareness::detect(None, Some(true)).aware);
        assert!(!CudaAwareness::detect(None, None).aware);
        assert!(CudaAwareness::detect(Some(true), None)
            .reason
            .contains(CUDA_AWARE_ENV));
    }

    #[test]
    fn host_path_is_the_window_on_one_node_unless_overridden() {
        let with = |one_node, asked| {
            let settings = TransportSettings {
                host_path: asked,
                ..TransportSettings::default()
            };
            plan_transport(
                TransportArg::Host,
                HiddenArg::Auto,
                false,
                &site(false, one_node, false, false),
                &settings,
            )
            .map(|p| (p.host_path.window, p.host_path.required))
        };
        assert_eq!(with(true, None).unwrap(), (true, false));
        assert_eq!(with(false, None).unwrap(), (false, false));
        assert_eq!(with(true, Some(HostPath::Mpi)).unwrap(), (false, false));
        assert_eq!(with(true, Some(HostPath::Window)).unwrap(), (true, true));
        let error = with(false, Some(HostPath::Window)).unwrap_err().to_string();
        assert!(error.contains(HOST_PATH_ENV), "{error}");
    }
}
