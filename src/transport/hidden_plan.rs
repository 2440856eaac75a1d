//! How a chunk's hidden state goes from one stage to the next (`--hidden-transport`), decided
//! once per job from where the ranks run (pure, so it is tested without MPI or a GPU).

use anyhow::{bail, Result};

use super::selection::Site;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HiddenArg {
    /// `ipc` on GPUs when every rank is on one node; across nodes `device` where MPI is
    /// CUDA-aware; else `host`.
    Auto,
    /// Copied to page-locked host memory, sent by MPI, copied to the next rank's GPU.
    Host,
    /// Pushed by the copy engine straight into the next rank's GPU memory through CUDA IPC
    /// (every rank on one node; ranks may share a GPU); a small MPI message says it is there.
    Ipc,
    /// Sent by MPI from GPU memory to GPU memory (a CUDA-aware MPI; any nodes).
    Device,
}

/// The path the job's hidden states take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenPath {
    Host,
    Ipc,
    Device,
}

impl HiddenPath {
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Ipc => "ipc",
            Self::Device => "device",
        }
    }
}

/// The choice, why, and whether `host` takes over when CUDA IPC cannot map a peer (under `auto`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenPlan {
    pub path: HiddenPath,
    pub reason: String,
    pub host_fallback: bool,
}

/// The plan for `arg` at `site`; an impossible request is an error naming the flag.
pub fn plan_hidden(arg: HiddenArg, site: &Site) -> Result<HiddenPlan> {
    let plan = |path, reason: String, host_fallback| HiddenPlan {
        path,
        reason,
        host_fallback,
    };
    let host = |reason: String| Ok(plan(HiddenPath::Host, reason, false));
    match arg {
        HiddenArg::Host => host("--hidden-transport host".into()),
        HiddenArg::Ipc if !site.on_gpu => {
            bail!("--hidden-transport ipc needs GPUs; this job runs on the CPU")
        }
        HiddenArg::Ipc if !site.one_node => bail!(
            "--hidden-transport ipc: the {} ranks are on more than one node (CUDA IPC joins one node's GPUs)",
            site.ranks
        ),
        HiddenArg::Device if !site.on_gpu => {
            bail!("--hidden-transport device needs GPUs; this job runs on the CPU")
        }
        HiddenArg::Device if !site.awareness.aware => bail!(
            "--hidden-transport device needs a CUDA-aware MPI, and this one is not ({})",
            site.awareness.reason
        ),
        _ if site.ranks < 2 => host("one rank: no hidden state leaves it".into()),
        HiddenArg::Ipc => Ok(plan(HiddenPath::Ipc, "--hidden-transport ipc".into(), false)),
        HiddenArg::Device => Ok(plan(
            HiddenPath::Device,
            format!("--hidden-transport device ({})", site.awareness.reason),
            false,
        )),
        HiddenArg::Auto if !site.on_gpu => host("tensors are on the CPU".into()),
        HiddenArg::Auto if !site.one_node && site.awareness.aware => Ok(plan(
            HiddenPath::Device,
            format!(
                "the {} ranks are on more than one node and MPI moves GPU memory ({}): sent GPU to GPU by MPI",
                site.ranks, site.awareness.reason
            ),
            false,
        )),
        HiddenArg::Auto if !site.one_node => host(format!(
            "the {} ranks are on more than one node and MPI does not move GPU memory ({})",
            site.ranks, site.awareness.reason
        )),
        HiddenArg::Auto => Ok(plan(
            HiddenPath::Ipc,
            format!(
                "all {} ranks share one node: pushed into the next rank's GPU memory by CUDA IPC",
                site.ranks
            ),
            true,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::CudaAwareness;

    fn site(on_gpu: bool, ranks: usize, one_node: bool) -> Site {
        Site {
            on_gpu,
            ranks,
            one_node,
            awareness: CudaAwareness::detect(None, None),
            nccl_built: false,
        }
    }

    fn cuda_aware(site: Site) -> Site {
        Site {
            awareness: CudaAwareness::detect(None, Some(true)),
            ..site
        }
    }

    #[test]
    fn across_nodes_auto_sends_gpu_to_gpu_where_mpi_is_cuda_aware() {
        let device = plan_hidden(HiddenArg::Auto, &cuda_aware(site(true, 4, false))).unwrap();
        assert_eq!((device.path, device.host_fallback), (HiddenPath::Device, false));
        assert!(
            device.reason.contains("MPIX_Query_cuda_support() = 1"),
            "{}",
            device.reason
        );
        // one node: IPC still, CUDA-aware or not; not CUDA-aware across nodes: host, and why
        let one_node = plan_hidden(HiddenArg::Auto, &cuda_aware(site(true, 4, true))).unwrap();
        assert_eq!(one_node.path, HiddenPath::Ipc);
        let host = plan_hidden(HiddenArg::Auto, &site(true, 4, false)).unwrap();
        assert_eq!(host.path, HiddenPath::Host);
        assert!(
            host.reason.contains("MPI does not move GPU memory"),
            "{}",
            host.reason
        );
        // asked for: on one node too (ranks may share a GPU), never without CUDA-aware MPI
        let asked = plan_hidden(HiddenArg::Device, &cuda_aware(site(true, 2, true))).unwrap();
        assert_eq!(asked.path, HiddenPath::Device);
        for bad in [site(true, 2, false), cuda_aware(site(false, 2, true))] {
            let error = plan_hidden(HiddenArg::Device, &bad).unwrap_err();
            assert!(
                error.to_string().starts_with("--hidden-transport device needs"),
                "{error}"
            );
        }
    }

    #[test]
    fn auto_pushes_through_ipc_only_on_gpus_of_one_node_with_host_behind_it() {
        let ipc = plan_hidden(HiddenArg::Auto, &site(true, 3, true)).unwrap();
        assert_eq!((ipc.path, ipc.host_fallback), (HiddenPath::Ipc, true));
        for (on_gpu, ranks, one_node) in [(false, 3, true), (true, 3, false), (true, 1, true)] {
            let plan = plan_hidden(HiddenArg::Auto, &site(on_gpu, ranks, one_node)).unwrap();
            assert_eq!(
                plan.path,
                HiddenPath::Host,
                "{on_gpu} {ranks} {one_node}: {}",
                plan.reason
            );
        }
        assert_eq!(
            plan_hidden(HiddenArg::Host, &site(true, 3, true)).unwrap().path,
            HiddenPath::Host
        );
    }

    #[test]
    fn ipc_asked_for_where_it_cannot_run_is_an_error_naming_the_flag() {
        for (on_gpu, one_node) in [(false, true), (true, false)] {
            let error = plan_hidden(HiddenArg::Ipc, &site(on_gpu, 2, one_node)).unwrap_err();
            assert!(error.to_string().starts_with("--hidden-transport ipc"), "{error}");
        }
        let asked = plan_hidden(HiddenArg::Ipc, &site(true, 2, true)).unwrap();
        assert_eq!((asked.path, asked.host_fallback), (HiddenPath::Ipc, false));
    }
}
