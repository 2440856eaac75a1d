//! NVTX ranges for the spans the trace records, so that Nsight Systems shows each layer, chunk,
//! KV sync and hidden-state transfer by name on the thread that did it (and, with its CUDA
//! trace, under each range the kernels it launched), in one domain, `qwen3-mpi`. A range has
//! its span's name in the Perfetto export ([`span_name`]): `layer 3 chunk 1`,
//! `kv-sync layer 3 chunk 1`, `send chunk 2 to rank 1`.
//!
//! NVTX3 (the `nvtx` crate compiles its headers in; no libnvToolsExt) calls through function
//! pointers that stay no-ops until a tool is injected (Nsight Systems names its library in
//! `NVTX_INJECTION64_PATH`). Whether one is, is asked once: only a tool hands out handles, so
//! without one a registered string comes back null. Then a range costs one branch: no name is
//! formatted and NVTX is not called.

use std::ffi::CString;
use std::marker::PhantomData;
use std::sync::OnceLock;

use nvtx::sys::DomainHandle;

use super::span_names::span_name;
use super::spans::{SpanAt, SpanKind};

/// The domain's name in Nsight Systems.
pub const DOMAIN: &std::ffi::CStr = c"qwen3-mpi";

/// The job's NVTX domain, where a tool takes the ranges.
fn attached_domain() -> Option<DomainHandle> {
    static ATTACHED: OnceLock<Option<DomainHandle>> = OnceLock::new();
    *ATTACHED.get_or_init(|| {
        let domain = nvtx::sys::domain_create_ascii(DOMAIN);
        let probe: nvtx::sys::ffi::nvtxStringHandle_t =
            nvtx::sys::domain_register_string_ascii(domain, DOMAIN).into();
        (!probe.is_null()).then_some(domain)
    })
}

/// Whether a tool (Nsight Systems) takes this process's NVTX ranges.
pub fn attached() -> bool {
    attached_domain().is_some()
}

/// Names the compute thread's CUDA stream (`qwen3-mpi compute`), where a tool is attached.
#[cfg(feature = "cuda")]
pub fn name_compute_stream(stream: &candle_core::cuda_backend::cudarc::driver::CudaStream) {
    if attached() {
        let stream = nvtx::CudaResource::Stream(stream.cu_stream().cast());
        nvtx::name_cuda_resource(stream, c"qwen3-mpi compute");
    }
}

/// The NVTX range of one span, on the thread that opened it; it ends when dropped, on that
/// thread (NVTX's push and pop nest per thread, so the range is not `Send`).
#[must_use = "the range ends when dropped"]
pub struct SpanRange {
    domain: Option<DomainHandle>,
    _thread: PhantomData<*const ()>,
}

impl SpanRange {
    /// No range (no tool attached).
    const NONE: SpanRange = SpanRange {
        domain: None,
        _thread: PhantomData,
    };

    /// Opens the range of a span of `kind` at `at`: named only when a tool is attached.
    pub fn open(kind: SpanKind, at: SpanAt) -> Self {
        let Some(domain) = attached_domain() else {
            return Self::NONE;
        };
        let Ok(message) = CString::new(span_name(kind, &at)) else {
            return Self::NONE; // (span names hold no NUL)
        };
        let attributes = nvtx::EventAttributes::builder()
            .message(message)
            .color(color(kind))
            .build();
        // the level it returns is the tool's bookkeeping; a push is always popped
        let _level = nvtx::sys::domain_range_push_ex(domain, &attributes.encode());
        Self {
            domain: Some(domain),
            _thread: PhantomData,
        }
    }
}

impl Drop for SpanRange {
    fn drop(&mut self) {
        if let Some(domain) = self.domain {
            let _level = nvtx::sys::domain_range_pop(domain);
        }
    }
}

/// Compute green, layer parts lighter, KV sync orange, hidden states blue, waits grey.
fn color(kind: SpanKind) -> [u8; 3] {
    match kind {
        SpanKind::Embed | SpanKind::LayerCompute | SpanKind::LmHead | SpanKind::DecodeStep => [118, 185, 0],
        SpanKind::Gemm | SpanKind::Attention | SpanKind::Elementwise | SpanKind::Moe => [178, 223, 138],
        SpanKind::KvSync => [230, 126, 34],
        SpanKind::Send
        | SpanKind::Recv
        | SpanKind::DecodeSend
        | SpanKind::DecodeRecv
        | SpanKind::HiddenCopy => [52, 152, 219],
        SpanKind::Wait | SpanKind::DecodeWait => [149, 165, 166],
        SpanKind::WeightLoad | SpanKind::KernelLoad => [155, 89, 182],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tool_ranges_are_not_attached_and_cost_nothing() {
        // (unit tests run without NVTX_INJECTION64_PATH; tests/nvtx_ranges.rs injects one)
        if std::env::var_os("NVTX_INJECTION64_PATH").is_none() {
            assert!(!attached());
            let range = SpanRange::open(SpanKind::LayerCompute, SpanAt::layer_chunk(3, 1, 4));
            assert!(range.domain.is_none());
        }
    }
}
