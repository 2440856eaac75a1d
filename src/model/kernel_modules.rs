//! Loading GPU kernel modules, once per device, before the pipeline starts.
//!
//! Our kernels (`kernels/*.cu`) are built to machine code for the build's GPU (build.rs runs
//! ptxas on each PTX), so a rank loads them without compiling; on a GPU of another architecture
//! the PTX is compiled by the driver instead (slow, once per process; a warning says so).
//! candle ships its kernels only as PTX, which the driver compiles when a module is first used:
//! about 10 s of CPU per process on the Qwen3 path (binary.ptx alone 4.4 s). Done inside the
//! prefill, that compile held each rank's first operation for seconds while its peers waited
//! (results/gpu-check/2026-12-01-session3-stall.md); [`preload`] does it during setup instead.
//! The driver keeps what it compiled in its JIT cache (`CUDA_CACHE_PATH`, by default
//! `~/.nv/ComputeCache`), so later jobs on the same machine load candle's modules fast.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaModule, DriverError};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{kernels, CudaDevice, DeviceId, WrapErr as _};
use candle_core::Result;

/// Machine code of our kernels, one constant per `kernels/*.cu` file (built by build.rs).
mod cubin {
    include!(concat!(env!("OUT_DIR"), "/kernels_cubin.rs"));
}
/// The same kernels as PTX, for a GPU the machine code was not built for.
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));
}

/// One of our kernel files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelModule {
    Attention,
    DecodeAttention,
    LayerOps,
    DecodeOps,
    DecodeGemvRing,
    MoeOps,
}

impl KernelModule {
    pub const ALL: [Self; 6] = [
        Self::Attention,
        Self::DecodeAttention,
        Self::LayerOps,
        Self::DecodeOps,
        Self::DecodeGemvRing,
        Self::MoeOps,
    ];

    fn file(self) -> &'static str {
        match self {
            Self::Attention => "src/model/kernels/attention.cu",
            Self::DecodeAttention => "src/model/kernels/decode_attention.cu",
            Self::LayerOps => "src/model/kernels/layer_ops.cu",
            Self::DecodeOps => "src/model/kernels/decode_ops.cu",
            Self::DecodeGemvRing => "src/model/kernels/decode_gemv_ring.cu",
            Self::MoeOps => "src/model/kernels/moe_ops.cu",
        }
    }

    fn images(self) -> (&'static [u8], &'static str) {
        match self {
            Self::Attention => (cubin::ATTENTION, ptx::ATTENTION),
            Self::DecodeAttention => (cubin::DECODE_ATTENTION, ptx::DECODE_ATTENTION),
            Self::LayerOps => (cubin::LAYER_OPS, ptx::LAYER_OPS),
            Self::DecodeOps => (cubin::DECODE_OPS, ptx::DECODE_OPS),
            Self::DecodeGemvRing => (cubin::DECODE_GEMV_RING, ptx::DECODE_GEMV_RING),
            Self::MoeOps => (cubin::MOE_OPS, ptx::MOE_OPS),
        }
    }
}

type Loaded = HashMap<(DeviceId, KernelModule), Arc<CudaModule>>;

fn loaded() -> &'static RwLock<Loaded> {
    static LOADED: OnceLock<RwLock<Loaded>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// `name` from `module` on `device` (the module is loaded on first use).
pub fn function(device: &CudaDevice, module: KernelModule, name: &str) -> Result<CudaFunction> {
    load(device, module)?
        .load_function(name)
        .map_err(|e| candle_core::Error::Msg(format!("{}: no kernel {name}: {e}", module.file())))
}

/// Loads `module` on `device` once: its machine code, or its PTX where the GPU is of another
/// architecture than the build's.
pub fn load(device: &CudaDevice, module: KernelModule) -> Result<Arc<CudaModule>> {
    let key = (device.id(), module);
    if let Some(m) = loaded().read().map_err(poisoned)?.get(&key) {
        return Ok(m.clone());
    }
    let mut modules = loaded().write().map_err(poisoned)?;
    if let Some(m) = modules.get(&key) {
        return Ok(m.clone());
    }
    let context = device.cuda_stream().context().clone();
    let (machine_code, ptx) = module.images();
    let m = match context.load_module(Ptx::from_binary(machine_code.to_vec())) {
        Ok(m) => m,
        Err(e) if built_for_another_gpu(e) => {
            tracing::warn!(
                "{}: built for another GPU architecture than this one; the driver compiles its PTX (slow)",
                module.file()
            );
            context.load_module(Ptx::from_src(ptx)).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "{}: cannot load on this GPU ({e}); build for it: CUDA_COMPUTE_CAP=<its capability> scripts/build-cuda.sh",
                    module.file()
                ))
            })?
        }
        Err(e) => return Err(e).w(),
    };
    modules.insert(key, m.clone());
    Ok(m)
}

fn built_for_another_gpu(e: DriverError) -> bool {
    use sys::CUresult::{CUDA_ERROR_INVALID_IMAGE, CUDA_ERROR_INVALID_SOURCE, CUDA_ERROR_NO_BINARY_FOR_GPU};
    matches!(
        e.0,
        CUDA_ERROR_NO_BINARY_FOR_GPU | CUDA_ERROR_INVALID_IMAGE | CUDA_ERROR_INVALID_SOURCE
    )
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("a thread panicked while loading GPU kernels".into())
}

/// What [`preload`] took.
#[derive(Debug, Clone, Copy)]
pub struct Preloaded {
    /// Seconds for our modules (machine code: milliseconds).
    pub ours_s: f64,
    /// Seconds for candle's, most of it the driver compiling PTX on a cold JIT cache.
    pub candle_s: f64,
}

/// candle's modules on the Qwen3 path, each with one kernel it holds (loading a kernel loads
/// its module), the costliest to compile first. Left out: convolutions and quantized matrix
/// products (never used here).
const CANDLE_MODULES: [(&str, kernels::Module); 9] = [
    ("badd_bf16", kernels::BINARY),
    ("ucopy_bf16", kernels::UNARY),
    ("is_u32_bf16", kernels::INDEXING),
    ("fast_argmax_bf16", kernels::REDUCE),
    ("cast_f32_bf16", kernels::CAST),
    ("where_u8_bf16", kernels::TERNARY),
    ("asort_asc_f32", kernels::SORT),
    ("affine_bf16", kernels::AFFINE),
    ("fill_bf16", kernels::FILL),
];

/// Loads every kernel module a job may use on `device`: ours, then candle's, starting at the
/// `first`-th (mod their count). The ranks of a node pass their node-local rank, so that on a
/// cold JIT cache each starts compiling a different module, and finds in the driver's cache
/// (shared by the node's processes) the ones the others have compiled by the time it gets there.
pub fn preload(device: &CudaDevice, first: usize) -> Result<Preloaded> {
    let started = Instant::now();
    for module in KernelModule::ALL {
        load(device, module)?;
    }
    let ours_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..CANDLE_MODULES.len() {
        let (kernel, module) = &CANDLE_MODULES[(first + i) % CANDLE_MODULES.len()];
        device.get_or_load_func(kernel, module)?;
    }
    Ok(Preloaded {
        ours_s,
        candle_s: started.elapsed().as_secs_f64(),
    })
}
