//! Spans of GPU work timed by CUDA events on the compute stream. On a GPU the host clock sees
//! kernel launches, not the work: each compute span records an event before and after its
//! kernels, and the events are turned into times (on the job's common clock) once prefill is
//! over, on their own track (`SpanThread::GpuStream`: the compute thread's host spans, such as a
//! send waiting for the GPU, overlap them). On the CPU the host clock is the work's clock and
//! spans are recorded at once, on the compute thread.

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;

use super::spans::{SpanAt, SpanKind, SpanLog, SpanThread};

/// The start of one span: an event on the GPU, the host time everywhere.
pub struct Mark {
    host: Instant,
    #[cfg(feature = "cuda")]
    event: Option<imp::Event>,
}

/// Times compute spans on the device they run on.
pub struct DeviceSpans {
    #[cfg(feature = "cuda")]
    timer: Option<imp::Timer>,
}

impl DeviceSpans {
    /// Starts the device clock (waits for the GPU to be idle once); nothing on the CPU.
    pub fn start(device: &Device, log: &SpanLog) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let timer = match device {
                Device::Cuda(cuda) => Some(imp::Timer::start(cuda.cuda_stream(), log)?),
                _ => None,
            };
            Ok(Self { timer })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (device, log);
            Ok(Self {})
        }
    }

    pub fn begin(&self) -> Result<Mark> {
        Ok(Mark {
            host: Instant::now(),
            #[cfg(feature = "cuda")]
            event: self.timer.as_ref().map(imp::Timer::event).transpose()?,
        })
    }

    /// Ends the span begun at `mark`: queued until [`Self::finish`] on a GPU, recorded now
    /// on the CPU.
    pub fn end(&self, mark: Mark, kind: SpanKind, at: SpanAt, log: &SpanLog) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let (Some(timer), Some(start)) = (&self.timer, mark.event) {
            return timer.queue(start, kind, at);
        }
        log.record(kind, SpanThread::Compute, at, mark.host);
        Ok(())
    }

    /// Waits for the GPU, writes the queued spans into `log` and returns the seconds of GPU
    /// work they cover; `None` on the CPU (the host clock already timed the work).
    pub fn finish(&self, log: &SpanLog) -> Result<Option<f64>> {
        #[cfg(feature = "cuda")]
        if let Some(timer) = &self.timer {
            return timer.finish(log).map(Some);
        }
        let _ = log;
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use std::cell::RefCell;
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::Result;
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream};

    use crate::trace::spans::{Span, SpanAt, SpanKind, SpanLog, SpanThread};

    pub type Event = CudaEvent;

    struct Queued {
        kind: SpanKind,
        at: SpanAt,
        start: CudaEvent,
        end: CudaEvent,
    }

    pub struct Timer {
        stream: Arc<CudaStream>,
        /// Recorded on an idle stream at `zero_ns` of the job's clock.
        zero: CudaEvent,
        zero_ns: i64,
        queued: RefCell<Vec<Queued>>,
    }

    impl Timer {
        pub fn start(stream: Arc<CudaStream>, log: &SpanLog) -> Result<Self> {
            crate::trace::nvtx::name_compute_stream(&stream);
            stream.synchronize()?;
            let zero = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            zero.synchronize()?;
            let zero_ns = log.ns_at(Instant::now());
            Ok(Self {
                stream,
                zero,
                zero_ns,
                queued: RefCell::new(Vec::new()),
            })
        }

        pub fn event(&self) -> Result<CudaEvent> {
            Ok(self.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
        }

        pub fn queue(&self, start: CudaEvent, kind: SpanKind, at: SpanAt) -> Result<()> {
            let end = self.event()?;
            self.queued.borrow_mut().push(Queued { kind, at, start, end });
            Ok(())
        }

        pub fn finish(&self, log: &SpanLog) -> Result<f64> {
            self.stream.synchronize()?;
            let ns = |event: &CudaEvent| -> Result<i64> {
                Ok(self.zero_ns + (f64::from(self.zero.elapsed_ms(event)?) * 1e6) as i64)
            };
            let mut busy_ns = 0;
            for q in self.queued.borrow_mut().drain(..) {
                let (t_start_ns, t_end_ns) = (ns(&q.start)?, ns(&q.end)?);
                if !q.kind.is_layer_part() {
                    busy_ns += t_end_ns - t_start_ns; // a layer's parts are inside its span
                }
                log.push(Span {
                    kind: q.kind,
                    thread: SpanThread::GpuStream,
                    layer: q.at.layer,
                    chunk: q.at.chunk,
                    step: q.at.step,
                    peer: q.at.peer,
                    bytes: q.at.bytes,
                    t_start_ns,
                    t_end_ns,
                });
            }
            Ok(busy_ns as f64 * 1e-9)
        }
    }
}
