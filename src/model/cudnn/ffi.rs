//! The C functions of `sdpa_shim.cpp`: the only unsafe FFI for cuDNN. Safe wrappers are in
//! `mod.rs`.
//!
//! Every function returns a [`Status`] code; on anything but [`OK`] it has written a one-line,
//! NUL-terminated message into `msg` (at most `msg_len` bytes). No C++ exception crosses into
//! Rust. A [`Context`] is not thread-safe: callers serialise every call on one context.

use std::ffi::{c_char, c_int, c_void};

/// The return value of every shim function.
pub type Status = c_int;
pub const OK: Status = 0;
#[allow(dead_code)] // any status but OK and UNSUPPORTED is an error
pub const ERROR: Status = 1;
/// cuDNN has no engine for the shape on this GPU and library; the caller may use its own kernel.
pub const UNSUPPORTED: Status = 2;

pub const BF16: i32 = 0;
pub const F16: i32 = 1;

/// One attention graph's shape (the shim's `qwen3_cudnn_shape`, same layout).
/// q and o are (len, heads, head_dim) contiguous; K and V are `end` positions of a cache layer,
/// one position every `kv_position_stride` elements, V `kv_heads * head_dim` elements after K.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SdpaShape {
    /// [`BF16`] or [`F16`].
    pub dtype: i32,
    pub reserved: i32,
    pub len: i64,
    pub end: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub kv_position_stride: i64,
    /// Multiplies q·k before the softmax.
    pub scale: f32,
}

/// The shim's cuDNN handle and its cache of built graphs (opaque).
#[repr(C)]
pub struct Context {
    _private: [u8; 0],
}

extern "C" {
    /// dlopens `path` (NULL or "" = `libcudnn.so.9` by the loader's search) with
    /// RTLD_NOW|RTLD_LOCAL once per process, checks it is cuDNN 9.x and that the frontend can
    /// load the CUDA runtime it calls (libcudart.so.12 or .13, exactly one), then creates a
    /// cuDNN handle on the CUDA context current on this thread. Writes the library's
    /// `cudnnGetVersion()` to `version` (also on some failures after the dlopen) and the new
    /// context to `out` (NULL on failure), the CUDA version the library was built for (e.g.
    /// 13000) to `cuda_version`, and on success a one-line description to `msg`. Preloads
    /// `libnvrtc.so.<that major>` through this binary's search (best effort) for cuDNN's
    /// runtime-compiled engines. The library is never closed; a second call with a different
    /// path fails.
    pub fn qwen3_cudnn_open(
        path: *const c_char,
        out: *mut *mut Context,
        version: *mut i64,
        cuda_version: *mut i64,
        msg: *mut c_char,
        msg_len: usize,
    ) -> Status;

    /// Sets the stream (a `CUstream`) every later execute on `ctx` is queued on.
    pub fn qwen3_cudnn_set_stream(
        ctx: *mut Context,
        stream: *mut c_void,
        msg: *mut c_char,
        msg_len: usize,
    ) -> Status;

    /// Builds the graph and plan of `shape` unless `ctx` has it already; writes the workspace
    /// bytes its execute needs and the nanoseconds this call took. [`UNSUPPORTED`] when cuDNN
    /// has no engine for it. Needs the CUDA context current on this thread.
    pub fn qwen3_cudnn_prepare(
        ctx: *mut Context,
        shape: *const SdpaShape,
        workspace_bytes: *mut i64,
        build_ns: *mut i64,
        msg: *mut c_char,
        msg_len: usize,
    ) -> Status;

    /// Queues the attention of `shape` on the context's stream: reads `q`, `k`, `v` and writes
    /// `o` (device addresses, 16-byte aligned, laid out as [`SdpaShape`] says), using
    /// `workspace` (at least the bytes prepare reported; may be 0 when that is 0). Builds the
    /// plan first if prepare has not. Asynchronous: the buffers must live until the stream has
    /// passed this call.
    pub fn qwen3_cudnn_execute(
        ctx: *mut Context,
        shape: *const SdpaShape,
        q: u64,
        k: u64,
        v: u64,
        o: u64,
        workspace: u64,
        msg: *mut c_char,
        msg_len: usize,
    ) -> Status;

    /// Destroys the handle and the plans of `ctx` and frees it (NULL is a no-op); the library
    /// stays loaded.
    pub fn qwen3_cudnn_close(ctx: *mut Context, msg: *mut c_char, msg_len: usize) -> Status;
}
