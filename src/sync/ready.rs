//! The point in the compute stream after which a KV block is in the cache. The KV cache is
//! outside candle's event tracking (see `model::kv_cache`), so the sync waits for exactly this
//! point, not for whatever compute has queued since.

use anyhow::Result;
use candle_core::Device;

pub struct BlockReady {
    #[cfg(feature = "cuda")]
    event: Option<candle_core::cuda_backend::cudarc::driver::CudaEvent>,
}

impl BlockReady {
    /// Marks the work queued on `device`'s compute stream so far (nothing on the CPU, where
    /// the block is written when the layer returns).
    pub fn mark(device: &Device) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let event = match device {
                Device::Cuda(cuda) => Some(cuda.cuda_stream().record_event(None)?),
                _ => None,
            };
            Ok(Self { event })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            Ok(Self {})
        }
    }

    /// Blocks the calling (communication) thread until the marked work is done.
    pub fn wait(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(event) = &self.event {
            event.synchronize()?;
        }
        Ok(())
    }
}
