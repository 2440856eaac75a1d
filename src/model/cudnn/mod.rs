//! Prefill attention through cuDNN's fused scaled-dot-product attention (flash attention),
//! built with the cuDNN frontend (`sdpa_shim.cpp`) and loaded at run time: the binary does not
//! link libcudnn, so a machine without it still runs, on our own kernel
//! (`super::flash_attention`).
//!
//! The caller decides once per job: [`Cudnn::load`] (a one-line error when the library is missing),
//! then [`Cudnn::prepare`] of every chunk shape the job runs (an error when cuDNN has no engine
//! for one); on either error it logs the line and uses the kernel for the whole job. Graphs are
//! built once per shape and process (a few hundred ms each) and kept.
//!
//! Library search: `QWEN3_MPI_CUDNN_LIB` (a full path) if set, else `libcudnn.so.9` through the
//! loader (LD_LIBRARY_PATH, the binary's rpath, the ld cache). The frontend also dlopens the
//! CUDA runtime itself: it must find `libcudart.so.13` (the binary already links it, through
//! the rpath `/usr/local/cuda/lib64`) and not also a `libcudart.so.12`.

mod ffi;

use std::ffi::{c_char, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};

/// Environment variable naming the cuDNN library to open (a full path).
pub const LIBRARY_ENV: &str = "QWEN3_MPI_CUDNN_LIB";
/// What is opened when [`LIBRARY_ENV`] is unset, by the loader's usual search.
pub const DEFAULT_LIBRARY: &str = "libcudnn.so.9";

/// Bytes of the message buffer the shim writes into.
const MESSAGE_BYTES: usize = 2048;

/// An open cuDNN handle with its built graphs, for one GPU. Keep one per process (each holds
/// its own graphs); the library itself is opened once per process whatever the count.
pub struct Cudnn {
    context: Mutex<RawContext>,
    version: Version,
    description: String,
    library: String,
    /// The stream of the device the handle was made on (for its context).
    stream: Arc<CudaStream>,
}

// A job shares one `Cudnn` between its loaders and its compute thread.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Cudnn>()
};

/// A cuDNN version, from `cudnnGetVersion()` (major·10000 + minor·100 + patch for cuDNN 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub i64);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0 / 10000, self.0 / 100 % 100, self.0 % 100)
    }
}

/// Whether cuDNN attention takes this precision and head size (the shape check; whether the
/// library has an engine for a chunk shape is known after [`Cudnn::prepare`]).
pub fn supports(dtype: DType, head_dim: usize) -> bool {
    matches!(dtype, DType::BF16 | DType::F16) && (64..=256).contains(&head_dim) && head_dim.is_multiple_of(8)
}

impl Cudnn {
    /// Opens cuDNN (the library once per process, see the module doc for where it is looked
    /// for) and makes a handle on `device`'s GPU. Err: one line saying what was tried and how
    /// to fix it.
    pub fn load(device: &Device) -> Result<Self, String> {
        let device = device
            .as_cuda_device()
            .map_err(|_| "cuDNN attention: needs a CUDA device".to_owned())?;
        let from_env = std::env::var(LIBRARY_ENV).ok().filter(|p| !p.is_empty());
        let library = from_env.clone().unwrap_or_else(|| DEFAULT_LIBRARY.to_owned());
        let tried = match &from_env {
            Some(path) => format!("{LIBRARY_ENV}={path}"),
            None => format!("{DEFAULT_LIBRARY} by the loader's search ({LIBRARY_ENV} unset)"),
        };
        let path = CString::new(library.clone())
            .map_err(|_| format!("cuDNN attention: {LIBRARY_ENV} holds a NUL byte"))?;
        let stream = device.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| format!("cuDNN attention: cannot make the GPU's context current: {e}"))?;
        let mut raw = std::ptr::null_mut();
        let (mut version, mut cuda_version) = (0i64, 0i64);
        // SAFETY: `path` is a NUL-terminated string alive for the call; `raw`, `version` and
        // `cuda_version` are valid out-pointers; the message buffer is owned by `call`.
        let opened = call(|msg, len| unsafe {
            ffi::qwen3_cudnn_open(path.as_ptr(), &mut raw, &mut version, &mut cuda_version, msg, len)
        });
        let description = match opened {
            Ok(description) => description,
            Err((_, why)) => {
                return Err(format!(
                    "cuDNN attention unavailable: tried {tried}: {why}{}",
                    fix_for(&why)
                ))
            }
        };
        let context =
            NonNull::new(raw).ok_or_else(|| "cuDNN attention: open returned no context".to_owned())?;
        tracing::info!("{description}");
        Ok(Self {
            context: Mutex::new(RawContext(context)),
            version: Version(version),
            description,
            library,
            stream,
        })
    }

    /// One line: the library's version and path, the CUDA version it was built for, the GPU.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The opened library's version (prints as `9.13.0`).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The library opened: the value of [`LIBRARY_ENV`], or [`DEFAULT_LIBRARY`].
    pub fn library(&self) -> &str {
        &self.library
    }

    /// Builds the graph of every chunk a job will run, `(L, start)` each, before timing starts;
    /// returns how long it took. An error (one line) names the first shape cuDNN cannot run.
    pub fn prepare(
        &self,
        chunks: &[(usize, usize)],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        capacity: usize,
    ) -> candle_core::Result<Duration> {
        let started = Instant::now();
        let mut context = self.lock()?;
        self.stream.context().bind_to_thread().w()?;
        for &(len, start) in chunks {
            if start + len > capacity {
                candle_core::bail!(
                    "cuDNN attention: chunk of {len} at {start} ends beyond the cache ({capacity} positions)"
                );
            }
            let shape = sdpa_shape(dtype, len, start + len, heads, kv_heads, head_dim)?;
            context.prepare(&shape)?;
        }
        Ok(started.elapsed())
    }

    /// Attention of queries at positions `[start, start + L)` over cache positions
    /// `[0, start + L)`, causal (query i sees keys ≤ start + i), K/V read in place.
    /// q: (L, H, D) → (L, H, D); `layer_kv`: one layer of the cache, (capacity, 2, KVH, D);
    /// bf16 or f16, both alike. Builds the graph first if [`Cudnn::prepare`] did not.
    pub fn prefill_attention(
        &self,
        q: &Tensor,
        layer_kv: &Tensor,
        start: usize,
    ) -> candle_core::Result<Tensor> {
        let op = CudnnPrefill { cudnn: self, start };
        q.contiguous()?.apply_op2_no_bwd(layer_kv, &op)
    }

    fn lock(&self) -> candle_core::Result<MutexGuard<'_, RawContext>> {
        self.context
            .lock()
            .map_err(|_| candle_core::Error::msg("cuDNN attention: an earlier call panicked"))
    }
}

/// The shim's context. Dropping it destroys the handle and the graphs.
struct RawContext(NonNull<ffi::Context>);

// SAFETY: the shim's context is plain heap state plus a cuDNN handle, not tied to the thread
// that made it (cuDNN handles may be used from any thread, one at a time, with the right CUDA
// context current: every method binds it first). `Cudnn` keeps it behind a Mutex, so calls
// never overlap.
unsafe impl Send for RawContext {}

impl RawContext {
    /// The workspace bytes of `shape`, building its graph if needed.
    fn prepare(&mut self, shape: &ffi::SdpaShape) -> candle_core::Result<usize> {
        let (mut workspace, mut build_ns) = (0i64, 0i64);
        // SAFETY: the context is live (owned by self), `shape` and the out-pointers are valid.
        call(|msg, len| unsafe {
            ffi::qwen3_cudnn_prepare(self.0.as_ptr(), shape, &mut workspace, &mut build_ns, msg, len)
        })
        .map_err(|(status, why)| shape_error(shape, status, &why))?;
        tracing::debug!(
            len = shape.len,
            end = shape.end,
            build_ns,
            workspace,
            "cuDNN attention graph"
        );
        usize::try_from(workspace)
            .map_err(|_| candle_core::Error::msg("cuDNN attention: negative workspace size"))
    }

    /// Queues the attention on `stream`. The pointers are device addresses the caller keeps
    /// alive (and their event guards) until this returns.
    fn execute(
        &mut self,
        shape: &ffi::SdpaShape,
        stream: *mut std::ffi::c_void,
        ptrs: [u64; 5],
    ) -> candle_core::Result<()> {
        let [q, k, v, o, workspace] = ptrs;
        // SAFETY: the context is live; `stream` is the CUstream of the device the context was
        // made for.
        call(|msg, len| unsafe { ffi::qwen3_cudnn_set_stream(self.0.as_ptr(), stream, msg, len) })
            .map_err(|(_, why)| candle_core::Error::msg(why))?;
        // SAFETY: the pointers address buffers of the sizes `shape` implies (checked by the
        // caller), alive until the stream passes this call.
        call(|msg, len| unsafe {
            ffi::qwen3_cudnn_execute(self.0.as_ptr(), shape, q, k, v, o, workspace, msg, len)
        })
        .map(drop)
        .map_err(|(status, why)| shape_error(shape, status, &why))
    }
}

impl Drop for RawContext {
    fn drop(&mut self) {
        // SAFETY: the context is live and dropped once.
        if let Err((_, why)) = call(|msg, len| unsafe { ffi::qwen3_cudnn_close(self.0.as_ptr(), msg, len) }) {
            tracing::warn!("{why}");
        }
    }
}

/// Runs one shim call with a message buffer. Ok: what the call wrote there (often nothing);
/// Err: its status and message.
fn call(f: impl FnOnce(*mut c_char, usize) -> ffi::Status) -> Result<String, (ffi::Status, String)> {
    let mut msg = vec![0u8; MESSAGE_BYTES];
    let status = f(msg.as_mut_ptr().cast(), msg.len());
    let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
    let text = String::from_utf8_lossy(&msg[..end]).into_owned();
    match status {
        ffi::OK => Ok(text),
        _ if text.is_empty() => Err((status, format!("cuDNN call failed with status {status}"))),
        _ => Err((status, text)),
    }
}

/// How to fix a failed open, from its message.
fn fix_for(why: &str) -> String {
    if why.contains("dlopen") {
        format!(
            "; put the folder holding {DEFAULT_LIBRARY} on LD_LIBRARY_PATH or set {LIBRARY_ENV} to its full path"
        )
    } else if why.contains("libcudart") {
        "; the cuDNN frontend needs exactly one of libcudart.so.13 / .12 on the loader's path (/usr/local/cuda/lib64)"
            .to_owned()
    } else {
        String::new()
    }
}

fn shape_error(shape: &ffi::SdpaShape, status: ffi::Status, why: &str) -> candle_core::Error {
    let what = if status == ffi::UNSUPPORTED {
        "not supported"
    } else {
        "failed"
    };
    candle_core::Error::msg(format!(
        "cuDNN attention {what} for L={} end={} heads={}/{} head_dim={}: {why}",
        shape.len, shape.end, shape.heads, shape.kv_heads, shape.head_dim
    ))
}

/// The shim's shape of one chunk, after the checks every backend makes.
fn sdpa_shape(
    dtype: DType,
    len: usize,
    end: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> candle_core::Result<ffi::SdpaShape> {
    let dtype_code = match dtype {
        DType::BF16 => ffi::BF16,
        DType::F16 => ffi::F16,
        other => candle_core::bail!("cuDNN attention takes bf16 or f16, not {other:?}"),
    };
    if !supports(dtype, head_dim) {
        candle_core::bail!("cuDNN attention: head_dim {head_dim} outside 64..=256 (multiple of 8)");
    }
    if len == 0 || end < len {
        candle_core::bail!("cuDNN attention: chunk of {len} queries ending at {end}");
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!("cuDNN attention: {heads} query heads over {kv_heads} kv heads");
    }
    let int = |v: usize| {
        i64::try_from(v).map_err(|_| candle_core::Error::msg("cuDNN attention: size overflows i64"))
    };
    Ok(ffi::SdpaShape {
        dtype: dtype_code,
        reserved: 0,
        len: int(len)?,
        end: int(end)?,
        heads: int(heads)?,
        kv_heads: int(kv_heads)?,
        head_dim: int(head_dim)?,
        kv_position_stride: int(2 * kv_heads * head_dim)?, // (capacity, 2, KVH, D): K then V
        scale: 1.0 / (head_dim as f32).sqrt(),
    })
}

struct CudnnPrefill<'a> {
    cudnn: &'a Cudnn,
    start: usize,
}

impl CustomOp2 for CudnnPrefill<'_> {
    fn name(&self) -> &'static str {
        "cudnn-prefill"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cuDNN attention runs on the GPU only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        kv: &CudaStorage,
        kv_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = q.device();
        let slice = match (&q.slice, &kv.slice) {
            (CudaStorageSlice::BF16(q_all), CudaStorageSlice::BF16(kv_all)) => {
                let out = self.run(device, DType::BF16, (q_all, q_layout), (kv_all, kv_layout))?;
                CudaStorageSlice::BF16(out)
            }
            (CudaStorageSlice::F16(q_all), CudaStorageSlice::F16(kv_all)) => {
                let out = self.run(device, DType::F16, (q_all, q_layout), (kv_all, kv_layout))?;
                CudaStorageSlice::F16(out)
            }
            _ => candle_core::bail!(
                "cuDNN attention takes bf16 or f16 queries and cache alike, got {:?} and {:?}",
                q.dtype(),
                kv.dtype()
            ),
        };
        let storage = CudaStorage {
            slice,
            device: device.clone(),
        };
        Ok((storage, q_layout.shape().clone()))
    }
}

impl CudnnPrefill<'_> {
    /// Checks the shapes, then queues the attention on the device's stream; returns o (L, H, D).
    fn run<T: DeviceRepr>(
        &self,
        device: &CudaDevice,
        dtype: DType,
        (q_all, q_layout): (&CudaSlice<T>, &Layout),
        (kv_all, kv_layout): (&CudaSlice<T>, &Layout),
    ) -> candle_core::Result<CudaSlice<T>> {
        // 1. Shapes: q (L, H, D), the cache layer (capacity, 2, KVH, D), end ≤ capacity
        let (len, heads, dim) = q_layout.shape().dims3()?;
        let (capacity, two, kv_heads, kv_dim) = kv_layout.shape().dims4()?;
        if two != 2 || kv_dim != dim {
            candle_core::bail!(
                "cuDNN attention: cache layer {:?} does not match queries {:?}",
                kv_layout.shape(),
                q_layout.shape()
            );
        }
        let end = self.start + len;
        if end > capacity {
            candle_core::bail!(
                "cuDNN attention: positions up to {end} beyond the cache ({capacity} positions)"
            );
        }
        let (Some((q_begin, q_end)), Some((kv_begin, kv_end))) =
            (q_layout.contiguous_offsets(), kv_layout.contiguous_offsets())
        else {
            candle_core::bail!("cuDNN attention: queries and cache layer must be contiguous")
        };
        let shape = sdpa_shape(dtype, len, end, heads, kv_heads, dim)?;
        let stream = device.cuda_stream();
        if stream.context().ordinal() != self.cudnn.stream.context().ordinal() {
            candle_core::bail!(
                "cuDNN attention: handle made for GPU {}, tensors on GPU {}",
                self.cudnn.stream.context().ordinal(),
                stream.context().ordinal()
            );
        }

        // 2. The graph (built once per shape), then the output and workspace
        let mut context = self.cudnn.lock()?;
        stream.context().bind_to_thread().w()?;
        let workspace_bytes = context.prepare(&shape)?;
        // SAFETY: cuDNN writes every element of o, (L, H, D).
        let mut out = unsafe { device.alloc::<T>(len * heads * dim)? };
        // SAFETY: scratch memory, written by cuDNN before it reads it.
        let mut workspace = match workspace_bytes {
            0 => None,
            n => Some(unsafe { device.alloc::<u8>(n)? }),
        };

        // 3. Raw pointers; their guards record candle's events when dropped, after the call
        {
            let q_view = q_all.slice(q_begin..q_end);
            let kv_view = kv_all.slice(kv_begin..kv_end);
            let (q_ptr, _q_guard) = q_view.device_ptr(&stream);
            let (k_ptr, _kv_guard) = kv_view.device_ptr(&stream);
            let v_ptr = k_ptr + (kv_heads * dim * std::mem::size_of::<T>()) as u64; // V after K
            let (o_ptr, _o_guard) = out.device_ptr_mut(&stream);
            let (ws_ptr, _ws_guard) = match workspace.as_mut() {
                Some(ws) => {
                    let (ptr, guard) = ws.device_ptr_mut(&stream);
                    (ptr, Some(guard))
                }
                None => (0, None),
            };
            if [q_ptr, k_ptr, v_ptr, o_ptr, ws_ptr]
                .iter()
                .any(|p| !p.is_multiple_of(16))
            {
                candle_core::bail!("cuDNN attention: queries, cache layer or output not 16-byte aligned");
            }

            // 4. Queue it on candle's stream
            context.execute(
                &shape,
                stream.cu_stream().cast(),
                [q_ptr, k_ptr, v_ptr, o_ptr, ws_ptr],
            )?;
        }
        drop(workspace); // freed in stream order, after the call
        Ok(out)
    }
}
