//! Decode needs every layer on every rank: the layers a rank did not own are loaded on a
//! background thread while it runs its prefill stage.

use std::ops::Range;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device};

use crate::model::weights::WeightSource;
use crate::model::{Qwen3, Qwen3Config, StageParts};
use crate::trace::nvtx::SpanRange;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog, SpanThread};

pub struct BackgroundLoad {
    thread: JoinHandle<Result<Qwen3>>,
}

impl BackgroundLoad {
    /// Starts loading every layer outside `owned`, and of the embedding and head what the
    /// stage does not hold (`held`): a second copy would only be dropped when it is absorbed.
    /// `staged`: on a GPU through staging buffers on a stream of their own
    /// (`model::staged_upload`).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: Qwen3Config,
        source: Arc<dyn WeightSource>,
        staged: bool,
        owned: Range<usize>,
        held: StageParts,
        positions: usize,
        dtype: DType,
        device: Device,
        spans: SpanLog,
    ) -> Result<Self> {
        let thread = std::thread::Builder::new()
            .name("weight-load".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let load_range = SpanRange::open(SpanKind::WeightLoad, SpanAt::NONE);
                let staging = staged_source(staged, &source, &device)?;
                let source = staging.as_deref().unwrap_or(source.as_ref());
                let empty = owned.start..owned.start;
                let lacking = StageParts {
                    embed: !held.embed,
                    head: !held.head,
                };
                let mut rest = Qwen3::load(&cfg, source, empty, lacking, positions, dtype, &device)?;
                rest.load_layers(source, 0..owned.start)?;
                rest.load_layers(source, owned.end..cfg.num_hidden_layers)?;
                drop(staging); // waits for its last copies
                spans.record(
                    SpanKind::WeightLoad,
                    SpanThread::WeightLoad,
                    SpanAt::NONE,
                    started,
                );
                drop(load_range);
                Ok(rest)
            })
            .context("cannot start the weight-loading thread")?;
        Ok(Self { thread })
    }

    /// Waits for the load and moves the layers into `model`.
    pub fn complete_into(self, model: &mut Qwen3) -> Result<()> {
        let rest = self
            .thread
            .join()
            .map_err(|_| anyhow!("the weight-loading thread panicked"))??;
        model.absorb(rest);
        Ok(())
    }
}

/// The source the load reads through: staging buffers where asked for on a GPU, else `None`
/// (the source itself).
fn staged_source(
    staged: bool,
    source: &Arc<dyn WeightSource>,
    device: &Device,
) -> Result<Option<Box<dyn WeightSource>>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) if staged => Ok(Some(Box::new(crate::model::staged_upload::StagedSource::new(
            source.clone(),
            cuda,
        )?))),
        _ => {
            let _ = (staged, source);
            Ok(None)
        }
    }
}
