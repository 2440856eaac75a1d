//! Setup on a GPU: every kernel module loaded on a thread of its own while the rank loads its
//! weights, so that no rank compiles kernels inside the prefill (where its peers would wait for
//! it). `model::kernel_modules` says what is loaded and why.

use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use candle_core::Device;

use crate::trace::spans::SpanLog;

pub struct KernelPreload {
    thread: Option<JoinHandle<Result<()>>>,
}

impl KernelPreload {
    /// Starts loading on a GPU (`local_rank`: this rank's place on its node, which module it
    /// compiles first); on the CPU there is nothing to load.
    pub fn start(device: &Device, spans: &SpanLog, local_rank: usize) -> Result<Self> {
        let thread = match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => Some(spawn(cuda.clone(), spans.clone(), local_rank)?),
            _ => {
                let _ = (spans, local_rank);
                None
            }
        };
        Ok(Self { thread })
    }

    /// Waits for the load.
    pub fn finish(self) -> Result<()> {
        match self.thread {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow!("the kernel-loading thread panicked"))?
                .map_err(|e| anyhow!("cannot load the GPU kernels: {e}")),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "cuda")]
fn spawn(
    cuda: candle_core::cuda_backend::CudaDevice,
    spans: SpanLog,
    local_rank: usize,
) -> Result<JoinHandle<Result<()>>> {
    use crate::trace::spans::{SpanAt, SpanKind, SpanThread};
    std::thread::Builder::new()
        .name("kernel-load".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let took = crate::model::kernel_modules::preload(&cuda, local_rank)?;
            spans.record(
                SpanKind::KernelLoad,
                SpanThread::WeightLoad,
                SpanAt::NONE,
                started,
            );
            tracing::info!(
                "GPU kernels loaded in {:.2} s (ours {:.3} s; candle's PTX compiled by the driver {:.2} s)",
                started.elapsed().as_secs_f64(),
                took.ours_s,
                took.candle_s
            );
            Ok(())
        })
        .map_err(|e| anyhow!("cannot start the kernel-loading thread: {e}"))
}
