//! Which ranks share a GPU. NCCL needs a GPU of its own for every rank (two ranks on one GPU
//! fail its init with "invalid usage"); the other transports can share one. Each rank is named
//! by its host and its GPU's UUID, so CUDA_VISIBLE_DEVICES remapping (per-task binding under
//! Slurm) cannot make two GPUs look like one.

use anyhow::{bail, Result};
use mpi::topology::SimpleCommunicator;

use super::placement::gather_strings;

/// The transports that work with several ranks on one GPU.
pub const SHARING_TRANSPORTS: &str = "--transport ipc, host or device";

/// One rank's GPU as the other ranks see it: `host`, the GPU's UUID (empty if unknown) and
/// its index among the GPUs the rank sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankGpu {
    pub host: String,
    pub uuid: String,
    pub index: usize,
}

impl RankGpu {
    fn to_wire(&self) -> String {
        format!("{}\t{}\t{}", self.host, self.uuid, self.index)
    }

    fn from_wire(text: &str) -> Self {
        let mut fields = text.split('\t');
        let (host, uuid) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        Self {
            host: host.to_string(),
            uuid: uuid.to_string(),
            index: fields.next().and_then(|i| i.parse().ok()).unwrap_or(0),
        }
    }
}

/// The first two ranks (in rank order) on the same GPU of the same host; a GPU of unknown
/// UUID is never taken for another.
pub fn first_shared(gpus: &[RankGpu]) -> Option<(usize, usize)> {
    gpus.iter().enumerate().find_map(|(second, gpu)| {
        (!gpu.uuid.is_empty())
            .then(|| {
                gpus[..second]
                    .iter()
                    .position(|other| other.host == gpu.host && other.uuid == gpu.uuid)
            })
            .flatten()
            .map(|first| (first, second))
    })
}

/// The error when ranks `first` and `second` share a GPU, naming the transports that can.
pub fn shared_gpu_error(gpus: &[RankGpu], first: usize, second: usize) -> String {
    let gpu = &gpus[first];
    format!(
        "--transport nccl: ranks {first} and {second} share one GPU (GPU {} of host {}), and NCCL needs a GPU \
         of its own for every rank; {SHARING_TRANSPORTS} can share a GPU",
        gpu.index, gpu.host
    )
}

/// NCCL's init failed with `error`: the line says what to check.
pub fn nccl_init_error(error: &str) -> String {
    format!(
        "NCCL init failed ({error}): every rank needs a GPU of its own ({SHARING_TRANSPORTS} can share one) and \
         must reach every peer; NCCL_DEBUG=INFO says more"
    )
}

/// Collective over `comm`: an error naming two ranks that share a GPU, on every rank alike.
pub fn refuse_shared_gpus(comm: &SimpleCommunicator, mine: &RankGpu) -> Result<()> {
    let gpus: Vec<RankGpu> = gather_strings(comm, &mine.to_wire())
        .iter()
        .map(|text| RankGpu::from_wire(text))
        .collect();
    if let Some((first, second)) = first_shared(&gpus) {
        bail!("{}", shared_gpu_error(&gpus, first, second));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(host: &str, uuid: &str, index: usize) -> RankGpu {
        RankGpu {
            host: host.into(),
            uuid: uuid.into(),
            index,
        }
    }

    #[test]
    fn two_ranks_on_one_gpu_are_found_and_named_with_the_transports_that_share() {
        let gpus = [gpu("a", "u0", 0), gpu("a", "u1", 1), gpu("a", "u0", 0)];
        assert_eq!(first_shared(&gpus), Some((0, 2)));
        let error = shared_gpu_error(&gpus, 0, 2);
        assert!(
            error.contains("ranks 0 and 2 share one GPU (GPU 0 of host a)"),
            "{error}"
        );
        assert!(error.contains("--transport ipc, host or device"), "{error}");
    }

    #[test]
    fn the_same_index_on_another_host_or_under_another_uuid_is_another_gpu() {
        // per-task CUDA_VISIBLE_DEVICES: every rank sees its own GPU as index 0
        let bound = [gpu("a", "u0", 0), gpu("a", "u1", 0), gpu("b", "u0", 0)];
        assert_eq!(first_shared(&bound), None);
        let unknown = [gpu("a", "", 0), gpu("a", "", 0)];
        assert_eq!(first_shared(&unknown), None);
    }

    #[test]
    fn a_rank_gpu_survives_the_wire() {
        let g = gpu("node-1", "0a1b", 3);
        assert_eq!(RankGpu::from_wire(&g.to_wire()), g);
        assert!(nccl_init_error("InvalidUsage").contains("NCCL init failed (InvalidUsage)"));
    }
}
