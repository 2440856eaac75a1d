//! One decode step (a token through every layer and the head, or through a pipeline stage's
//! layer range: from the token or the previous stage's hidden state, to the logits or the
//! hidden state for the next stage; `stage_decoder.rs`) as a chain of our own kernels
//! (`kernels/decode_ops.cu`, `kernels/layer_ops.cu`) on buffers made once per decode: a step
//! reads every weight once, so it should take what the weights' bytes take at memory bandwidth.
//! Six launches a layer, no allocation but the logits, no candle op in between. The token and
//! its position are read from device memory, and the key ranges of the attention are fixed by the
//! cache's capacity, so the whole step is captured once as a CUDA graph and replayed for every
//! token (`QWEN3_MPI_DECODE_GRAPH=0` launches it kernel by kernel instead;
//! `QWEN3_MPI_DECODE_PROFILE=1` times each kernel of the first step and logs the table). Each
//! kernel is queued to overlap the one before it (programmatic dependent launch,
//! `kernels/overlap.cuh`): a product starts streaming its weights while the previous kernel
//! drains (`QWEN3_MPI_DECODE_OVERLAP=0` queues them one after the other):
//!
//! ```text
//! x = embed[token]
//! per layer:  qkv  = W_qkv · RMSNorm(x)                 gemv_rmsnorm_store
//!             q, cache[pos] = q/k norm, RoPE, K/V       qk_norm_rope_cache
//!             attn = softmax(q Kᵀ) V over [0, pos]      decode_attention_g<G> (ranges merged)
//!             x    = x + W_o · attn                     gemv_copy_residual
//!             gu   = W_gu · RMSNorm(x)                  gemv_rmsnorm_store
//!             x    = x + W_down · SwiGLU(gu)            gemv_swiglu_residual
//! logits = float(W_lm · RMSNorm(x))                     gemv_rmsnorm_f32
//! ```
//!
//! A Qwen3-MoE sparse layer runs three kernels of `moe_decode.rs` in place of the last two (the
//! router, then only the k chosen experts' gate/up and down rows, routed on the device).
//!
//! The `gemv_*` products run the register kernel of `decode_ops.cu` or, with
//! `QWEN3_MPI_DECODE_GEMV=ring…`, the ring kernel of `decode_gemv_ring.cu` (the same sums, bit
//! for bit; `decode_gemv.rs` picks the kernel and its grid). By default (`QWEN3_MPI_DECODE_QK=fused`)
//! the attention kernel does the q/k step itself (`decode_attention_qk_g<G>`, `decode_variants.rs`),
//! five launches a layer; `separate` gives it a kernel of its own.

use anyhow::{bail, Context, Result};
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaEvent, CudaFunction, CudaGraph, CudaSlice, DevicePtr,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice};
use candle_core::{DType, Tensor};
use candle_nn::RmsNorm;

use super::config::Qwen3Config;
use super::decode_gemv::{GemvChoice, GemvKernel};
use super::decode_products::Gemv;
use super::decoder_layer::Layer;
use super::gpu_tensors::{address, alloc, cuda_device, dtype_suffix, grid, launch_kernel, wrap};
use super::kernel_modules::function;
use super::kernel_modules::KernelModule::{DecodeOps, LayerOps};
use super::kv_cache::KvCache;
use super::layer_ops::QkNormRope;
use super::moe_decode::{MoeLayer, MoeStep};
use super::rope::RotaryTable;
use super::stage_decoder::{StageInput, StageOutput};
use super::step_attention::StepAttention;

const HEAD_DIM: usize = 128;

/// What the step reads of a model: consecutive layers (every layer, or a pipeline stage's),
/// the embedding where the step starts from the token, the head where it ends with logits.
pub struct ModelParts<'a> {
    pub cfg: &'a Qwen3Config,
    pub layers: Vec<&'a Layer>,
    /// The global index of `layers[0]` (its place in the KV cache).
    pub first_layer: usize,
    /// (vocab, hidden)
    pub embed: Option<&'a Tensor>,
    /// The final norm and the (vocab, hidden) head (the embedding itself when the two are tied).
    pub head: Option<(&'a RmsNorm, &'a Tensor)>,
    pub rope: &'a RotaryTable,
}

/// Device addresses of one layer's weights and cache.
struct LayerAddresses {
    qkv: u64,
    o: u64,
    mlp: MlpAddresses,
    input_norm: u64,
    post_norm: u64,
    q_norm: u64,
    k_norm: u64,
    /// (capacity, 2, KVH, D)
    kv: u64,
}

/// A layer's feed-forward weights: the dense MLP's, or a sparse layer's router and experts.
enum MlpAddresses {
    Dense { gate_up: u64, down: u64 },
    Sparse(MoeLayer),
}

/// Whether the step is replayed as a CUDA graph (`QWEN3_MPI_DECODE_GRAPH`, default on).
const GRAPH_ENV: &str = "QWEN3_MPI_DECODE_GRAPH";
/// Times each kernel of the first step (`QWEN3_MPI_DECODE_PROFILE=1`) and logs the table.
const PROFILE_ENV: &str = "QWEN3_MPI_DECODE_PROFILE";
/// Whether the step's kernels overlap their neighbours (`QWEN3_MPI_DECODE_OVERLAP`, default on).
const OVERLAP_ENV: &str = "QWEN3_MPI_DECODE_OVERLAP";

/// A scratch vector of the step and its address.
struct Buffer {
    _slice: CudaStorageSlice,
    at: u64,
}

/// The step's end where it holds the head: final norm, lm_head, their product, the logits.
struct Head {
    final_norm: u64,
    lm_head: u64,
    gemv: Gemv,
    /// Where the head writes the logits (vocab, f32).
    logits_out: Buffer,
}

pub struct DecodeStep {
    device: CudaDevice,
    layers: Vec<LayerAddresses>,
    /// The embedding table, where the step starts from the token (else from `x`).
    embed: Option<u64>,
    /// Where the step ends with the logits (else with the hidden state in `x`).
    head: Option<Head>,
    cos: u64,
    sin: u64,
    hidden: usize,
    dtype: DType,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    /// Positions the cache and the RoPE table hold.
    capacity: usize,
    eps: f32,
    embed_fn: CudaFunction,
    qk_fn: CudaFunction,
    attention: StepAttention,
    qkv: Gemv,
    o: Gemv,
    gate_up: Gemv,
    down: Gemv,
    /// The sparse layers' kernels (a Qwen3-MoE model).
    moe: Option<MoeStep>,
    /// The token (u32) and (position, keys) (i32) of the step, read by the kernels: written
    /// before each step, their addresses baked into the graph.
    _step_inputs: CudaSlice<i32>,
    token_at: u64,
    position_at: u64,
    graph: Option<CudaGraph>,
    use_graph: bool,
    overlap: bool,
    profile: bool,
    x: Buffer,
    qkv_out: Buffer,
    q: Buffer,
    attn: Buffer,
    gate_up_out: Buffer,
    /// Handles that keep every tensor whose address the step holds alive.
    _held: Vec<Tensor>,
}

impl DecodeStep {
    pub fn new(parts: &ModelParts, kv: &KvCache) -> Result<Self> {
        let cfg = parts.cfg;
        let Some(first) = parts.layers.first() else {
            bail!("decode step: no layers");
        };
        let first_weight = first.attention().1.qkv_weight();
        let device = cuda_device(first_weight, "decode step")?;
        let dtype = first_weight.dtype();
        let suffix = dtype_suffix(dtype)?;
        let (hidden, heads, kv_heads, inter) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        );
        let group = heads / kv_heads;
        if cfg.head_dim != HEAD_DIM || heads % kv_heads != 0 || !(1..=8).contains(&group) {
            bail!(
                "decode step: no kernel for head_dim {} with {heads} heads over {kv_heads}",
                cfg.head_dim
            );
        }
        if parts.first_layer + parts.layers.len() > cfg.num_hidden_layers || kv.dtype() != dtype {
            bail!("decode step: needs layers of the model and a {dtype:?} cache");
        }
        let mut held: Vec<Tensor> = parts.embed.into_iter().cloned().collect();
        if let Some((norm, lm_head)) = parts.head {
            held.extend([norm.weight().clone(), lm_head.clone()]);
        }
        let mut layers = Vec::with_capacity(parts.layers.len());
        for (index, layer) in parts.layers.iter().enumerate() {
            let (input_norm, attn, post_norm) = layer.attention();
            let (q_norm, k_norm, _) = attn.qk_norms();
            let tensors = [
                attn.qkv_weight(),
                attn.o_weight(),
                input_norm.weight(),
                post_norm.weight(),
                q_norm,
                k_norm,
            ];
            let a = tensors
                .iter()
                .map(|t| address(t))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let mlp = match layer {
                Layer::Dense(dense) => {
                    let (gate_up, down) = (dense.mlp.gate_up_weight(), dense.mlp.down_weight());
                    held.extend([gate_up.clone(), down.clone()]);
                    MlpAddresses::Dense {
                        gate_up: address(gate_up)?,
                        down: address(down)?,
                    }
                }
                Layer::Sparse(sparse) => MlpAddresses::Sparse(MoeLayer::new(&sparse.mlp, &mut held)?),
            };
            let layer_kv = kv.layer(parts.first_layer + index)?;
            layers.push(LayerAddresses {
                qkv: a[0],
                o: a[1],
                mlp,
                input_norm: a[2],
                post_norm: a[3],
                q_norm: a[4],
                k_norm: a[5],
                kv: address(&layer_kv)?,
            });
            held.extend(tensors.iter().map(|&t| t.clone()));
            held.push(layer_kv);
        }
        let (cos, sin) = parts.rope.tables();
        held.extend([cos.clone(), sin.clone()]);
        let capacity = kv.capacity().min(cos.dim(0)?);

        let stream = device.cuda_stream();
        let sms = stream
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .context("decode step: multiprocessor count")? as usize;
        let load = |name: &str, module| function(&device, module, name);
        let choice = GemvChoice::from_env().map_err(anyhow::Error::msg)?;
        tracing::info!("decode step: matrix-vector kernel {}", choice.label());
        // W (rows, cols)
        let gemv = |kind: &str, rows: usize, cols: usize| -> Result<Gemv> {
            Gemv::new(&device, &choice, kind, (rows, cols), dtype, sms)
        };
        let qkv_rows = (heads + 2 * kv_heads) * HEAD_DIM;
        let vocab = match (parts.embed, parts.head) {
            (Some(embed), _) => embed.dim(0)?,
            (None, Some((_, lm_head))) => lm_head.dim(0)?,
            (None, None) => cfg.vocab_size,
        };
        let qkv = gemv("rmsnorm_store", qkv_rows, hidden)?;
        let o = gemv("copy_residual", hidden, heads * HEAD_DIM)?;
        let gate_up = gemv("rmsnorm_store", 2 * inter, hidden)?;
        let down = gemv("swiglu_residual", hidden, inter)?;
        let head = match parts.head {
            Some((norm, lm_head)) => {
                let lm_head_at = address(lm_head)?;
                let (slice, at) = alloc(&device, DType::F32, vocab)?;
                Some(Head {
                    final_norm: address(norm.weight())?,
                    lm_head: lm_head_at,
                    gemv: gemv("rmsnorm_f32", vocab, hidden)?,
                    logits_out: Buffer { _slice: slice, at },
                })
            }
            None => None,
        };
        let ring = matches!(choice.kernel, GemvKernel::Ring(_));
        let attention = StepAttention::new(&device, (heads, kv_heads), suffix, capacity, sms, ring)?;
        // [token, position, keys]
        let step_inputs = stream.alloc_zeros::<i32>(3).context("decode step: its inputs")?;
        let step_inputs_at = step_inputs.device_ptr(&stream).0;
        let buffer = |dtype: DType, len: usize| -> Result<Buffer> {
            let (slice, at) = alloc(&device, dtype, len)?;
            Ok(Buffer { _slice: slice, at })
        };
        Ok(Self {
            layers,
            embed: parts.embed.map(address).transpose()?,
            head,
            cos: address(cos)?,
            sin: address(sin)?,
            hidden,
            dtype,
            heads,
            kv_heads,
            vocab,
            capacity,
            eps: cfg.rms_norm_eps as f32,
            embed_fn: load(&format!("embed_row_{suffix}"), DecodeOps)?,
            qk_fn: load(&format!("qk_norm_rope_cache_{suffix}"), LayerOps)?,
            attention,
            qkv,
            o,
            gate_up,
            down,
            moe: match cfg.moe {
                Some(_) => Some(MoeStep::new(&device, cfg, dtype, sms, ring)?),
                None => None,
            },
            token_at: step_inputs_at,
            position_at: step_inputs_at + 4,
            _step_inputs: step_inputs,
            graph: None,
            use_graph: !matches!(std::env::var(GRAPH_ENV).as_deref(), Ok("0") | Ok("off")),
            overlap: !matches!(std::env::var(OVERLAP_ENV).as_deref(), Ok("0") | Ok("off")),
            profile: matches!(std::env::var(PROFILE_ENV).as_deref(), Ok("1") | Ok("on")),
            x: buffer(dtype, hidden)?,
            qkv_out: buffer(dtype, qkv_rows)?,
            q: buffer(dtype, heads * HEAD_DIM)?,
            attn: buffer(dtype, heads * HEAD_DIM)?,
            gate_up_out: buffer(dtype, 2 * inter)?,
            device,
            _held: held,
        })
    }

    /// Runs `input` (the token, where the step holds the embedding, else the previous stage's
    /// hidden state (1, hidden)) at `position` through the step's layers, writing their K/V into
    /// the cache. → the logits (vocab, f32) where it holds the head, else the hidden state
    /// (1, hidden)
    pub fn run(&mut self, input: StageInput, position: usize) -> Result<StageOutput> {
        if position >= self.capacity {
            bail!(
                "KV cache overflow: position {position} exceeds its capacity of {}",
                self.capacity
            );
        }
        let stream = self.device.cuda_stream();
        let token = match (input, self.embed) {
            (StageInput::Token(token), Some(_)) => {
                if token as usize >= self.vocab {
                    bail!(
                        "token id {token} is outside the vocabulary (vocab_size {})",
                        self.vocab
                    );
                }
                token
            }
            (StageInput::Hidden(hidden), None) => {
                if hidden.dims() != [1, self.hidden] || hidden.dtype() != self.dtype {
                    bail!(
                        "decode step: a hidden state of shape {:?} ({:?}) for (1, {}) ({:?})",
                        hidden.dims(),
                        hidden.dtype(),
                        self.hidden,
                        self.dtype
                    );
                }
                let hidden = hidden.contiguous()?;
                let from = address(&hidden)?;
                let bytes = self.hidden * self.dtype.size_in_bytes();
                // SAFETY: `hidden` (alive for the call) and x hold `bytes`, on the stream the step
                // runs on, which also produced `hidden`.
                unsafe {
                    sys::cuMemcpyDtoDAsync_v2(self.x.at, from, bytes, stream.cu_stream())
                        .result()
                        .context("decode step: its input hidden state")?;
                }
                0
            }
            (StageInput::Token(_), None) => bail!("decode step: no embedding to start from a token"),
            (StageInput::Hidden(_), Some(_)) => bail!("decode step: it starts from the token"),
        };
        // token < vocab < 2^31
        let inputs = [token as i32, position as i32, position as i32 + 1];
        // This copy must stay a copy on the stream before the step's first kernel: it completes
        // every earlier step before this one starts, which the kernels' reads of earlier steps'
        // outputs before they wait rely on (kernels/overlap.cuh).
        // SAFETY: 12 bytes from a live host array into the step's 3-int buffer, on the stream the
        // step runs on (a pageable copy: the values are taken before the call returns).
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(self.token_at, inputs.as_ptr().cast(), 12, stream.cu_stream())
                .result()
                .context("decode step: its inputs")?;
        }
        if self.profile {
            self.profile = false; // the first step only
            let report = self.enqueue_timed()?;
            tracing::info!("decode step, kernel by kernel (position {position}):\n{report}");
        } else if self.use_graph {
            if self.graph.is_none() {
                self.graph = self.capture()?;
            }
            match &self.graph {
                Some(graph) => graph.launch().context("decode step: graph launch")?,
                None => self.enqueue(&mut |_| Ok(()))?,
            }
        } else {
            self.enqueue(&mut |_| Ok(()))?;
        }
        // the graph's buffers are the same every step: the caller gets its own copy
        let (from, dtype, len, shape) = match &self.head {
            Some(head) => (head.logits_out.at, DType::F32, self.vocab, vec![self.vocab]),
            None => (self.x.at, self.dtype, self.hidden, vec![1, self.hidden]),
        };
        let (copy, copy_at) = alloc(&self.device, dtype, len)?;
        // SAFETY: both buffers hold `len` elements of `dtype`, on the stream that wrote them.
        unsafe {
            sys::cuMemcpyDtoDAsync_v2(copy_at, from, len * dtype.size_in_bytes(), stream.cu_stream())
                .result()
                .context("decode step: output copy")?;
        }
        let out = wrap(&self.device, copy, shape);
        Ok(match self.head {
            Some(_) => StageOutput::Logits(out),
            None => StageOutput::Hidden(out),
        })
    }

    /// The step as a CUDA graph, or `None` (with a warning) where the driver will not capture it.
    fn capture(&self) -> Result<Option<CudaGraph>> {
        let stream = self.device.cuda_stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .context("decode step: begin capture")?;
        let queued = self.enqueue(&mut |_| Ok(()));
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        match graph {
            Ok(Some(graph)) => Ok(Some(graph)),
            Ok(None) => Ok(None),
            Err(error) => {
                tracing::warn!("decode step: no CUDA graph ({error}); kernels are launched one by one");
                Ok(None)
            }
        }
    }

    /// Queues the step: every kernel, after each of which `mark` sees its name.
    fn enqueue(&self, mark: &mut dyn FnMut(&'static str) -> Result<()>) -> Result<()> {
        let (token_at, position_at) = (self.token_at, self.position_at);
        if let Some(embed) = self.embed {
            // SAFETY: embed (vocab, hidden) row *token_at < vocab (checked by `run`) into x (hidden).
            unsafe {
                launch_kernel!(
                    overlapped if self.overlap; self.device,
                    &self.embed_fn,
                    grid(self.hidden.div_ceil(256) as u32, 256, 0),
                    embed,
                    0u32,
                    token_at,
                    self.x.at,
                    self.hidden as i32
                )?;
            }
            mark("embed")?;
        }
        for layer in &self.layers {
            self.layer(layer, position_at, mark)?;
        }
        if let Some(head) = &self.head {
            self.gemv(
                &head.gemv,
                head.lm_head,
                self.x.at,
                head.final_norm,
                0,
                head.logits_out.at,
            )?;
            mark("gemv lm_head")?;
        }
        Ok(())
    }

    /// One layer of the step; the position is `position_at[0]`, the keys `position_at[1]`.
    fn layer(
        &self,
        layer: &LayerAddresses,
        position_at: u64,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        // 1. qkv = W_qkv · RMSNorm(x)
        self.gemv(
            &self.qkv,
            layer.qkv,
            self.x.at,
            layer.input_norm,
            0,
            self.qkv_out.at,
        )?;
        mark("gemv qkv")?;
        // 2. q/k norms and RoPE, K/V into the cache at the position (by the attention itself
        // where it does the q/k step)
        let qk = QkNormRope {
            qkv: self.qkv_out.at,
            q_w: layer.q_norm,
            k_w: layer.k_norm,
            cos: self.cos,
            sin: self.sin,
            q_out: self.q.at,
            kv: layer.kv,
            rows: 1,
            heads: self.heads,
            kv_heads: self.kv_heads,
            start: 0,
            start_at: position_at,
            eps: self.eps,
        };
        if !self.attention.does_qk_step() {
            // SAFETY: one row of qkv ((H + 2 KVH) D), the norm weights (D), RoPE row `position`
            // < capacity, q out (H D), cache position `position` < capacity (checked by `run`).
            unsafe { qk.queue(&self.device, &self.qk_fn, self.overlap)? };
            mark("q/k norm, RoPE, cache write")?;
        }
        // 3. attention over cache positions [0, keys), in fixed key ranges merged by the last
        // SAFETY: `qk`'s buffers are the step's (one row; the cache and the RoPE table hold
        // `capacity` positions), attn is (H, D); keys = position + 1 ≤ capacity (checked by `run`).
        unsafe {
            self.attention
                .queue(&self.device, self.overlap, &qk, self.attn.at, position_at + 4)?
        };
        mark(if self.attention.does_qk_step() {
            "attention with q/k norm, RoPE, cache write"
        } else {
            "attention"
        })?;
        // 4. x = x + W_o · attn; 5. gu = W_gu · RMSNorm(x); 6. x = x + W_down · SwiGLU(gu)
        self.gemv(&self.o, layer.o, self.attn.at, 0, self.x.at, self.x.at)?;
        mark("gemv o")?;
        let (gate_up, down) = match (&layer.mlp, &self.moe) {
            (MlpAddresses::Dense { gate_up, down }, _) => (*gate_up, *down),
            (MlpAddresses::Sparse(experts), Some(moe)) => {
                // 5.-6. for a sparse layer: router, the chosen experts' gate/up, their down
                // SAFETY: x and the norm hold `hidden` elements; the layer's weights are held.
                return unsafe {
                    moe.queue(
                        &self.device,
                        experts,
                        self.x.at,
                        layer.post_norm,
                        self.overlap,
                        mark,
                    )
                };
            }
            (MlpAddresses::Sparse(_), None) => {
                bail!("internal: decode step: a sparse layer in a dense model")
            }
        };
        self.gemv(
            &self.gate_up,
            gate_up,
            self.x.at,
            layer.post_norm,
            0,
            self.gate_up_out.at,
        )?;
        mark("gemv gate_up")?;
        self.gemv(&self.down, down, self.gate_up_out.at, 0, self.x.at, self.x.at)?;
        mark("gemv down")
    }

    /// out = epilogue(W · prologue(x)): `norm` for the RMSNorm prologue, `residual` for the
    /// residual epilogue (0 where the kernel takes none).
    fn gemv(&self, g: &Gemv, weight: u64, x: u64, norm: u64, residual: u64, out: u64) -> Result<()> {
        // SAFETY: W is (rows, cols) and every vector is sized for its kernel at construction.
        unsafe {
            g.queue(
                &self.device,
                self.overlap,
                self.eps,
                weight,
                x,
                norm,
                residual,
                out,
            )
        }
    }

    /// Queues the step with an event after every kernel, waits, and tabulates the time of each
    /// kind of kernel, with the bandwidth of the matrix-vector products.
    fn enqueue_timed(&self) -> Result<String> {
        let stream = self.device.cuda_stream();
        let event = || stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
        let start = event().context("decode profile: event")?;
        let mut marks: Vec<(&'static str, CudaEvent)> = Vec::new();
        self.enqueue(&mut |name| {
            marks.push((name, event().context("decode profile: event")?));
            Ok(())
        })?;
        stream.synchronize()?;
        let bytes = |g: &Gemv| g.weight_bytes();
        let layers = self.layers.len() as f64;
        let mut rows: Vec<(&'static str, f64, usize, f64)> = Vec::new(); // (kind, ms, count, bytes)
        let mut previous = &start;
        for (name, end) in &marks {
            let ms = f64::from(previous.elapsed_ms(end)?);
            let weight_bytes = match *name {
                "gemv qkv" => bytes(&self.qkv),
                "gemv o" => bytes(&self.o),
                "gemv gate_up" => bytes(&self.gate_up),
                "gemv down" => bytes(&self.down),
                "gemv lm_head" => self.head.as_ref().map_or(0.0, |h| bytes(&h.gemv)),
                moe => self.moe.as_ref().map_or(0.0, |m| m.weight_bytes(moe) as f64),
            };
            match rows.iter_mut().find(|r| r.0 == *name) {
                Some(row) => {
                    row.1 += ms;
                    row.2 += 1;
                    row.3 += weight_bytes;
                }
                None => rows.push((name, ms, 1, weight_bytes)),
            }
            previous = end;
        }
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let mut table =
            "| kernel | launches | ms in all | µs each | GB/s of weights |\n|---|---|---|---|---|\n"
                .to_string();
        for (name, ms, count, weight_bytes) in &rows {
            let bandwidth = if *weight_bytes > 0.0 {
                format!("{:.0}", weight_bytes / (ms * 1e-3) / 1e9)
            } else {
                "-".into()
            };
            table += &format!(
                "| {name} | {count} | {ms:.3} | {:.1} | {bandwidth} |\n",
                ms * 1e3 / *count as f64
            );
        }
        table += &format!("| all ({} layers) | {} | {total:.3} | | |", layers, marks.len());
        Ok(table)
    }
}
