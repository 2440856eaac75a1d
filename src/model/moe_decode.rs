//! A Qwen3-MoE sparse layer's feed-forward half in the fused decode step (`decode_step.rs`):
//! three kernels of `kernels/moe_ops.cu` in place of a dense layer's gate/up and down products.
//! They read only the k chosen experts' weights, and the token is routed on the device (no host
//! round trip), so the step stays one CUDA graph. Each waits for the kernel before it
//! (`kernels/overlap.cuh`); the router's weights stream in before it waits, the experts' cannot
//! (which experts depends on the kernel before). Roundings as the prefill path (`moe.rs`):
//!
//! ```text
//! logits = float(T(W_router · RMSNorm(x)))                            moe_router_f32
//! act_j  = SwiGLU(W_gate_up[e_j] · RMSNorm(x)), e_j the top k         moe_gate_up (each block routes)
//! x      = T(x + T(Σ_j T(T(W_down[e_j] · act_j) · T(w_j))))            moe_down_residual
//! ```
//!
//! (The default, `QWEN3_MPI_MOE_DECODE_DOWN=experts`, runs `moe_down_experts` for the last, the
//! same x bit for bit; `rows` runs `moe_down_residual`; `decode_variants.rs`.)

use anyhow::{bail, Context, Result};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice};
use candle_core::{DType, Tensor};

use super::config::Qwen3Config;
use super::decode_variants::MoeDown;
use super::gpu_tensors::{address, alloc, dtype_suffix, grid, launch_kernel, prefer_shared_memory};
use super::kernel_modules::{function, KernelModule};
use super::moe::{SparseMoe, GPU_MAX_EXPERTS, GPU_MAX_TOP_K};

/// `MOE_THREADS` of `kernels/moe_ops.cu`: 8 warps a block.
const THREADS: u32 = 256;
const WARPS: usize = 8;
/// Dynamic shared memory a block may take without asking.
const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

/// Device addresses of one sparse layer's router and experts.
pub struct MoeLayer {
    /// (E, hidden)
    router: u64,
    /// (E, 2·I, hidden), gate rows first
    gate_up: u64,
    /// (E, hidden, I)
    down: u64,
}

impl MoeLayer {
    /// The addresses of `moe`'s weights; handles on the tensors go into `held`, which the step
    /// keeps for as long as it uses the addresses.
    pub fn new(moe: &SparseMoe, held: &mut Vec<Tensor>) -> Result<Self> {
        let (gate_up, down) = moe.expert_weights();
        let layer = Self {
            router: address(moe.router_weight())?,
            gate_up: address(gate_up)?,
            down: address(down)?,
        };
        held.extend([moe.router_weight().clone(), gate_up.clone(), down.clone()]);
        Ok(layer)
    }
}

/// A scratch buffer of the step and its address.
struct Scratch {
    _slice: CudaStorageSlice,
    at: u64,
}

/// The three kernels of a sparse layer, their grids and scratch buffers (shared by every sparse
/// layer of the step).
pub struct MoeStep {
    router_fn: CudaFunction,
    gate_up_fn: CudaFunction,
    down_fn: CudaFunction,
    experts: usize,
    top_k: usize,
    normalize: bool,
    inter: usize,
    hidden: usize,
    /// Bytes of an element of the model dtype.
    elem: usize,
    eps: f32,
    router_blocks: u32,
    gate_up_blocks: u32,
    down_blocks: u32,
    /// The router's logits (E f32), the chosen experts' SwiGLU outputs (k·I, model dtype), the
    /// route (k expert indices, then k f32 weights).
    logits: Scratch,
    act: Scratch,
    route: Scratch,
}

impl MoeStep {
    /// The kernels for `cfg`'s sparse layers in `dtype` on `device`, with `sms` multiprocessors.
    /// `prefer_shared`: every kernel asks for all of L1 as shared memory (the ring products'
    /// setting, `decode_gemv.rs`).
    pub fn new(
        device: &CudaDevice,
        cfg: &Qwen3Config,
        dtype: DType,
        sms: usize,
        prefer_shared: bool,
    ) -> Result<Self> {
        let moe = cfg
            .moe
            .as_ref()
            .context("internal: MoE decode kernels for a dense model")?;
        let (experts, top_k, inter, hidden) = (
            moe.num_experts,
            moe.num_experts_per_tok,
            moe.moe_intermediate_size,
            cfg.hidden_size,
        );
        if experts > GPU_MAX_EXPERTS || top_k == 0 || top_k > GPU_MAX_TOP_K.min(experts) || inter % 8 != 0 {
            bail!(
                "decode step: no MoE kernels for {experts} experts, {top_k} per token, intermediate {inter} \
                 (at most {GPU_MAX_EXPERTS} experts, {GPU_MAX_TOP_K} per token, a multiple of 8)"
            );
        }
        let suffix = dtype_suffix(dtype)?;
        let elem = dtype.size_in_bytes();
        let load = |name: &str| function(device, KernelModule::MoeOps, &format!("{name}_{suffix}"));
        let down = MoeDown::from_env().map_err(anyhow::Error::msg)?;
        let (router_fn, gate_up_fn, down_fn) = (
            load("moe_router_f32")?,
            load("moe_gate_up")?,
            load(down.kernel())?,
        );
        if prefer_shared {
            for (func, name) in [
                (&router_fn, "moe_router_f32"),
                (&gate_up_fn, "moe_gate_up"),
                (&down_fn, down.kernel()),
            ] {
                prefer_shared_memory(func, name)?;
            }
        }
        let resident = |func: &CudaFunction, shared: usize, name: &str| -> Result<usize> {
            let per_sm = blocks_per_sm(func, shared, name)?;
            if per_sm == 0 {
                bail!(
                    "decode step: {name} with {shared} bytes of shared memory does not fit a multiprocessor"
                );
            }
            Ok(per_sm * sms)
        };
        // gate/up: one (gate, up) row pair a warp; down: two output rows a warp or a block
        let gate_up_blocks =
            (top_k * inter)
                .div_ceil(WARPS)
                .min(resident(&gate_up_fn, hidden * elem, "moe_gate_up")?);
        let down_blocks = down.blocks(
            hidden,
            WARPS,
            resident(&down_fn, top_k * inter * elem, down.kernel())?,
        );
        resident(&router_fn, hidden * elem, "moe_router_f32")?;
        let scratch = |dtype: DType, len: usize| -> Result<Scratch> {
            let (slice, at) = alloc(device, dtype, len)?;
            Ok(Scratch { _slice: slice, at })
        };
        Ok(Self {
            router_fn,
            gate_up_fn,
            down_fn,
            experts,
            top_k,
            normalize: moe.norm_topk_prob,
            inter,
            hidden,
            elem,
            eps: cfg.rms_norm_eps as f32,
            router_blocks: experts.div_ceil(WARPS) as u32,
            gate_up_blocks: gate_up_blocks as u32,
            down_blocks: down_blocks as u32,
            logits: scratch(DType::F32, experts)?,
            act: scratch(dtype, top_k * inter)?,
            route: scratch(DType::U32, 2 * top_k)?,
        })
    }

    /// Queues the three kernels of one sparse layer: x = x + MoE(RMSNorm(x) · post_norm), in
    /// place; `mark` sees each kernel's name after it is queued. `overlapped`: each may start
    /// while the kernel before it drains (`kernels/overlap.cuh`).
    ///
    /// # Safety
    /// `x` and `post_norm` hold `hidden` elements of the model dtype, and `layer` the addresses
    /// of a live sparse layer of this model.
    pub unsafe fn queue(
        &self,
        device: &CudaDevice,
        layer: &MoeLayer,
        x: u64,
        post_norm: u64,
        overlapped: bool,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        let (experts, top_k, inter, hidden) = (
            self.experts as i32,
            self.top_k as i32,
            self.inter as i32,
            self.hidden as i32,
        );
        let elem = self.elem as u32;
        // SAFETY (three launches): the router reads W (E, hidden), x and the norm (hidden) and
        // writes the E logits; gate/up reads the logits, x, the norm and rows of the k chosen
        // experts (< E) of W_gu (E, 2·I, hidden), writes act (k·I) and the route (2k); down reads
        // the route, act and rows of W_down (E, hidden, I) of those experts, updates x (hidden).
        unsafe {
            launch_kernel!(
                overlapped if overlapped; device,
                &self.router_fn,
                grid(self.router_blocks, THREADS, hidden as u32 * elem),
                layer.router,
                experts,
                hidden,
                x,
                post_norm,
                self.eps,
                self.logits.at
            )?;
            mark("moe router")?;
            launch_kernel!(
                overlapped if overlapped; device,
                &self.gate_up_fn,
                grid(self.gate_up_blocks, THREADS, hidden as u32 * elem),
                layer.gate_up,
                self.logits.at,
                experts,
                top_k,
                self.normalize as i32,
                inter,
                hidden,
                x,
                post_norm,
                self.eps,
                self.act.at,
                self.route.at
            )?;
            mark("moe gate_up")?;
            launch_kernel!(
                overlapped if overlapped; device,
                &self.down_fn,
                grid(self.down_blocks, THREADS, self.act_bytes() as u32),
                layer.down,
                self.route.at,
                top_k,
                inter,
                hidden,
                self.act.at,
                x
            )?;
        }
        mark("moe down")
    }

    /// Bytes of act, the k experts' SwiGLU outputs.
    fn act_bytes(&self) -> usize {
        self.top_k * self.inter * self.elem
    }

    /// Bytes of weights the kernel `mark` names ("moe router", "moe gate_up", "moe down") reads
    /// in one layer (0 for any other name).
    pub fn weight_bytes(&self, mark: &str) -> usize {
        let rows = match mark {
            "moe router" => self.experts,
            "moe gate_up" => self.top_k * 2 * self.inter,
            "moe down" => self.top_k * self.inter,
            _ => 0,
        };
        self.elem * rows * self.hidden
    }
}

/// Blocks of `func` a multiprocessor holds at once with `THREADS` threads and `shared` bytes of
/// dynamic shared memory (raising the kernel's limit first where it is above the default).
fn blocks_per_sm(func: &CudaFunction, shared: usize, name: &str) -> Result<usize> {
    if shared > DEFAULT_SHARED_BYTES {
        func.set_attribute(
            sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared as i32,
        )
        .with_context(|| format!("decode step: {shared} bytes of shared memory for {name}"))?;
    }
    let blocks = func
        .occupancy_max_active_blocks_per_multiprocessor(THREADS, shared, None)
        .with_context(|| format!("decode step: occupancy of {name}"))?;
    Ok(blocks as usize)
}
