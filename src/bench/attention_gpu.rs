//! The GPU side of `bench-attention` (see `attention.rs`): inputs, the f32 check, each backend
//! prepared and timed between CUDA events.

use anyhow::{Context, Result};
use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
use candle_core::{DType, Device, Tensor};

use super::attention::{rows_to_check, AttentionBackend, AttentionBenchArgs, ChunkShape, TOLERANCE};
use super::attention_reference::{attend, keys_values, unfused_prefill};
use super::attention_table::{causal_flops, median_min_ms, AttentionRow};
use crate::model::flash_attention;

/// Runs every (shape, backend) on `--gpu`.
pub fn measure(args: &AttentionBenchArgs) -> Result<Vec<AttentionRow>> {
    let dtype = args.dtype.dtype();
    if dtype == DType::F32 {
        anyhow::bail!("--dtype: attention backends take bf16 or f16");
    }
    if args.kv_heads == 0 || !args.heads.is_multiple_of(args.kv_heads) {
        anyhow::bail!(
            "--heads {} is not a multiple of --kv-heads {}",
            args.heads,
            args.kv_heads
        );
    }
    let device = Device::new_cuda(args.gpu).with_context(|| format!("--gpu {}", args.gpu))?;
    device.set_seed(args.seed)?;
    let cudnn = load_cudnn(&device, args.backends.contains(&AttentionBackend::Cudnn));
    let mut rows = Vec::new();
    for &shape in &args.shapes {
        let inputs = Inputs::random(args, shape, dtype, &device)
            .with_context(|| format!("inputs of {}@{}", shape.len, shape.end))?;
        let check = Check::new(&inputs, args.check_rows as usize)
            .with_context(|| format!("f32 reference of {}@{}", shape.len, shape.end))?;
        for &backend in &args.backends {
            let row = measure_one(args, backend, &inputs, &check, &cudnn);
            eprintln!(
                "bench-attention: {} {}@{}: {}",
                row.backend, row.len, row.end, row.status
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Random q and one cache layer holding exactly the chunk's keys.
struct Inputs {
    shape: ChunkShape,
    /// (L, H, D)
    q: Tensor,
    /// (E, 2, KVH, D)
    kv: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Inputs {
    fn random(args: &AttentionBenchArgs, shape: ChunkShape, dtype: DType, device: &Device) -> Result<Self> {
        let (heads, kv_heads, dim) = (args.heads, args.kv_heads, args.head_dim);
        let q = Tensor::randn(0f32, 1.0, (shape.len, heads, dim), device)?.to_dtype(dtype)?; // (L, H, D)
        let kv = Tensor::randn(0f32, 1.0, (shape.end, 2, kv_heads, dim), device)?.to_dtype(dtype)?; // (E, 2, KVH, D)
        Ok(Self {
            shape,
            q,
            kv,
            heads,
            kv_heads,
            head_dim: dim,
        })
    }

    fn row(&self, backend: AttentionBackend, status: String) -> AttentionRow {
        AttentionRow {
            backend: backend.name().to_owned(),
            len: self.shape.len,
            end: self.shape.end,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            dtype: format!("{:?}", self.q.dtype()).to_lowercase(),
            status,
            iters: 0,
            median_ms: None,
            min_ms: None,
            tflops: None,
            rel_err: None,
            build_ms: None,
        }
    }
}

/// Attention in f32 of a sample of the chunk's query rows.
struct Check {
    /// (R,) u32: the rows checked
    rows: Tensor,
    /// (R, H, D) f32
    expected: Tensor,
}

impl Check {
    fn new(inputs: &Inputs, max_rows: usize) -> Result<Self> {
        let device = inputs.q.device();
        let picked = rows_to_check(inputs.shape.len, max_rows);
        let start = inputs.shape.start() as u32;
        let positions: Vec<u32> = picked.iter().map(|&r| start + r).collect();
        let rows = Tensor::new(picked.as_slice(), device)?; // (R,)
        let positions = Tensor::new(positions.as_slice(), device)?; // (R,)
        let q = inputs.q.to_dtype(DType::F32)?.index_select(&rows, 0)?; // (R, H, D)
        let (k, v) = keys_values(&inputs.kv, inputs.shape.end, DType::F32)?; // (KVH, E, D) each
        let expected = attend(&q, &positions, &k, &v)?; // (R, H, D)
        Ok(Self { rows, expected })
    }

    /// ‖out − ref‖ / ‖ref‖ on the checked rows; out: (L, H, D).
    fn relative_error(&self, out: &Tensor) -> Result<f64> {
        let got = out.to_dtype(DType::F32)?.index_select(&self.rows, 0)?; // (R, H, D)
        let diff = (got - &self.expected)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let norm = self.expected.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        Ok((diff / norm).sqrt())
    }
}

/// Why a backend has no timing for a shape.
enum Skip {
    Unavailable(String),
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))] // only building a cuDNN graph fails here
    Failed(String),
}

/// A backend ready to call on one shape.
struct Prepared<'a> {
    call: Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>,
    build_ms: Option<f64>,
}

fn measure_one(
    args: &AttentionBenchArgs,
    backend: AttentionBackend,
    inputs: &Inputs,
    check: &Check,
    cudnn: &CudnnHandle,
) -> AttentionRow {
    let prepared = match prepare(backend, inputs, cudnn) {
        Ok(prepared) => prepared,
        Err(Skip::Unavailable(why)) => return inputs.row(backend, format!("unavailable: {why}")),
        Err(Skip::Failed(why)) => return inputs.row(backend, format!("FAILED: {why}")),
    };
    let mut row = inputs.row(backend, String::new());
    row.build_ms = prepared.build_ms;
    let (times, out) = match time_calls(args, &inputs.q, &*prepared.call) {
        Ok(timed) => timed,
        Err(e) => {
            return AttentionRow {
                status: format!("FAILED: {e:#}"),
                ..row
            }
        }
    };
    let (median_ms, min_ms) = median_min_ms(&times);
    let flops = causal_flops(inputs.shape.len, inputs.shape.end, inputs.heads, inputs.head_dim);
    row.iters = times.len();
    row.median_ms = median_ms;
    row.min_ms = min_ms;
    row.tflops = median_ms.map(|ms| flops / (ms * 1e-3) / 1e12);
    row.status = match check.relative_error(&out) {
        Ok(err) => {
            row.rel_err = Some(err);
            if err.is_finite() && err <= TOLERANCE {
                "ok".to_owned()
            } else {
                format!("FAILED: relative error {err:.3e} above {TOLERANCE:e}")
            }
        }
        Err(e) => format!("FAILED: check: {e:#}"),
    };
    row
}

fn prepare<'a>(
    backend: AttentionBackend,
    inputs: &'a Inputs,
    cudnn: &'a CudnnHandle,
) -> Result<Prepared<'a>, Skip> {
    let start = inputs.shape.start();
    match backend {
        AttentionBackend::Reference => Ok(Prepared {
            call: Box::new(move || unfused_prefill(&inputs.q, &inputs.kv, start)),
            build_ms: None,
        }),
        AttentionBackend::Kernel => {
            if !flash_attention::supported(&inputs.q, inputs.head_dim) {
                return Err(Skip::Unavailable(format!(
                    "the kernel takes bf16 with head_dim {}",
                    flash_attention::HEAD_DIM
                )));
            }
            Ok(Prepared {
                call: Box::new(move || flash_attention::prefill_attention(&inputs.q, &inputs.kv, start)),
                build_ms: None,
            })
        }
        AttentionBackend::Cudnn => prepare_cudnn(inputs, cudnn),
    }
}

/// Warm-up calls, then `iters` calls each between two CUDA events on the device's stream
/// (queued back to back, so the times are the GPU's); returns the times (s) and the last output.
fn time_calls(
    args: &AttentionBenchArgs,
    q: &Tensor,
    call: &dyn Fn() -> candle_core::Result<Tensor>,
) -> Result<(Vec<f64>, Tensor)> {
    let stream = q.device().as_cuda_device()?.cuda_stream();
    let mut out = call()?;
    for _ in 1..args.warmup {
        out = call()?;
    }
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut events = vec![stream.record_event(timing)?];
    for _ in 0..args.iters {
        out = call()?;
        events.push(stream.record_event(timing)?);
    }
    let mut times = Vec::with_capacity(args.iters as usize);
    for pair in events.windows(2) {
        times.push(f64::from(pair[0].elapsed_ms(&pair[1])?) * 1e-3);
    }
    Ok((times, out))
}

#[cfg(feature = "cudnn")]
type CudnnHandle = Result<crate::model::cudnn::Cudnn, String>;

#[cfg(not(feature = "cudnn"))]
type CudnnHandle = Result<(), String>;

#[cfg(feature = "cudnn")]
fn load_cudnn(device: &Device, wanted: bool) -> CudnnHandle {
    if !wanted {
        return Err("not asked for".into());
    }
    match crate::model::cudnn::Cudnn::load(device) {
        Ok(cudnn) => {
            eprintln!("bench-attention: {}", cudnn.description());
            Ok(cudnn)
        }
        Err(why) => {
            eprintln!("bench-attention: {why}");
            Err("cuDNN did not load (the line above says why)".into())
        }
    }
}

#[cfg(not(feature = "cudnn"))]
fn load_cudnn(_: &Device, _: bool) -> CudnnHandle {
    Err("this binary was built without --features cudnn".into())
}

#[cfg(feature = "cudnn")]
fn prepare_cudnn<'a>(inputs: &'a Inputs, cudnn: &'a CudnnHandle) -> Result<Prepared<'a>, Skip> {
    let cudnn = cudnn.as_ref().map_err(|why| Skip::Unavailable(why.clone()))?;
    let (shape, dtype) = (inputs.shape, inputs.q.dtype());
    let built = cudnn
        .prepare(
            &[(shape.len, shape.start())],
            inputs.heads,
            inputs.kv_heads,
            inputs.head_dim,
            dtype,
            shape.end,
        )
        .map_err(|e| Skip::Failed(e.to_string()))?;
    Ok(Prepared {
        call: Box::new(move || cudnn.prefill_attention(&inputs.q, &inputs.kv, shape.start())),
        build_ms: Some(built.as_secs_f64() * 1e3),
    })
}

#[cfg(not(feature = "cudnn"))]
fn prepare_cudnn<'a>(_: &'a Inputs, cudnn: &'a CudnnHandle) -> Result<Prepared<'a>, Skip> {
    let why = cudnn.as_ref().err().cloned().unwrap_or_default();
    Err(Skip::Unavailable(why))
}
