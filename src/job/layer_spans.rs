//! A layer's parts (matrix products, attention, elementwise kernels) as spans of the trace,
//! timed on the GPU's clock where there is one (`--op-spans`), each with its NVTX range.

use anyhow::Result;

use crate::model::layer_probe::{LayerPart, LayerProbe};
use crate::trace::device_spans::{DeviceSpans, Mark};
use crate::trace::nvtx::SpanRange;
use crate::trace::spans::{SpanAt, SpanKind, SpanLog};

/// A layer's parts as spans of their own (`--op-spans`): each part from the boundary where it
/// begins to the next, on the GPU track where there is one.
pub struct LayerPartSpans<'a> {
    spans: &'a DeviceSpans,
    log: &'a SpanLog,
    at: SpanAt,
    open: std::cell::RefCell<Option<(Mark, LayerPart, SpanRange)>>,
}

impl<'a> LayerPartSpans<'a> {
    /// For the layer and chunk of `at`.
    pub fn new(spans: &'a DeviceSpans, log: &'a SpanLog, at: SpanAt) -> Self {
        Self {
            spans,
            log,
            at,
            open: std::cell::RefCell::new(None),
        }
    }
}

impl LayerProbe for LayerPartSpans<'_> {
    fn enter(&self, part: Option<LayerPart>) -> Result<()> {
        if let Some((mark, previous, range)) = self.open.borrow_mut().take() {
            self.spans.end(mark, part_kind(previous), self.at, self.log)?;
            drop(range);
        }
        if let Some(part) = part {
            let range = SpanRange::open(part_kind(part), self.at);
            *self.open.borrow_mut() = Some((self.spans.begin()?, part, range));
        }
        Ok(())
    }
}

fn part_kind(part: LayerPart) -> SpanKind {
    match part {
        LayerPart::Gemm => SpanKind::Gemm,
        LayerPart::Attention => SpanKind::Attention,
        LayerPart::Elementwise => SpanKind::Elementwise,
        LayerPart::Moe => SpanKind::Moe,
    }
}
