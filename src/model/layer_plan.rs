//! Which kernels a decoder layer runs on, chosen once per process from the device, the dtype,
//! the model's shape and `QWEN3_MPI_ATTENTION`, with the reason, for the log and the trace.
//!
//! `QWEN3_MPI_ATTENTION`:
//! - `auto` (default): the fused layer (our elementwise kernels between cuBLAS products) with
//!   cuDNN's fused attention for prefill where the cuDNN library loads, else our flash kernel
//!   (`kernels/attention.cu`, bf16); decode through the fused decode step (`decode_step.rs`).
//! - `cudnn`: as `auto`, but a missing or unusable cuDNN is an error.
//! - `kernel`: as `auto` with our flash prefill kernel (no cuDNN), to race the two.
//! - `reference`: every layer unfused in plain tensor operations, the reference for checks
//!   (also what the CPU always runs).

#[cfg(feature = "cudnn")]
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use candle_core::{DType, Device};

use super::config::Qwen3Config;

pub const ATTENTION_ENV: &str = "QWEN3_MPI_ATTENTION";

/// The prefill attention of the fused layer.
#[derive(Clone)]
pub enum PrefillAttention {
    /// cuDNN's fused flash attention (the library found at run time).
    #[cfg(feature = "cudnn")]
    Cudnn(Arc<super::cudnn::Cudnn>),
    /// Our FlashAttention-2-style kernel (bf16, head_dim 128).
    Flash,
    /// Plain tensor operations over the cache (scores in f32).
    Reference,
}

/// How a layer's decode step (one token) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodePath {
    /// The fused decode step: matrix-vector kernels at memory bandwidth with the elementwise
    /// work in their prologues and epilogues (`decode_step.rs`).
    FusedStep,
    /// Each layer's forward with one token (the fused layer or the reference).
    Layers,
}

#[derive(Clone)]
pub struct LayerPlan {
    /// The fused GPU layer (`fused_layer.rs`); else the unfused reference.
    pub fused: bool,
    pub prefill: PrefillAttention,
    pub decode: DecodePath,
    /// One line: what was chosen and why.
    pub reason: String,
    /// What prefill falls back on when cuDNN cannot build a job's graphs (`auto`); `None` when
    /// cuDNN was asked for by name or is not in use.
    pub fallback: Option<(PrefillAttention, String)>,
}

impl LayerPlan {
    /// The unfused reference everywhere (the CPU path).
    pub fn reference(reason: &str) -> Self {
        Self {
            fused: false,
            prefill: PrefillAttention::Reference,
            decode: DecodePath::Layers,
            reason: reason.to_owned(),
            fallback: None,
        }
    }

    /// Builds what the prefill attention needs for a job's chunks, `(L, start)` each, before
    /// the clock starts (cuDNN's graphs); returns the seconds it took, if there was anything to
    /// build. Where cuDNN cannot run a chunk and was not asked for by name, prefill falls back on
    /// our kernel, with the reason.
    #[allow(unused_variables)]
    pub fn prepare(
        &mut self,
        chunks: &[(usize, usize)],
        cfg: &Qwen3Config,
        dtype: DType,
        capacity: usize,
    ) -> Result<Option<f64>> {
        #[cfg(feature = "cudnn")]
        if let PrefillAttention::Cudnn(cudnn) = &self.prefill {
            let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
            match cudnn.prepare(chunks, heads, kv_heads, cfg.head_dim, dtype, capacity) {
                Ok(took) => return Ok(Some(took.as_secs_f64())),
                Err(error) => match self.fallback.take() {
                    Some((fallback, name)) => {
                        tracing::warn!("{error}; prefill attention falls back on {name}");
                        self.reason = format!("{}; cuDNN failed at setup ({error}), so {name}", self.reason);
                        self.prefill = fallback;
                    }
                    None => bail!("{ATTENTION_ENV}=cudnn: {error}"),
                },
            }
        }
        Ok(None)
    }

    /// Short name of the prefill attention, for the trace and the summary.
    pub fn prefill_name(&self) -> &'static str {
        match &self.prefill {
            #[cfg(feature = "cudnn")]
            PrefillAttention::Cudnn(_) => "cudnn",
            PrefillAttention::Flash => "flash-kernel",
            PrefillAttention::Reference => "reference",
        }
    }

    pub fn decode_name(&self) -> &'static str {
        match self.decode {
            DecodePath::FusedStep => "fused-step",
            DecodePath::Layers if self.fused => "fused-layers",
            DecodePath::Layers => "reference",
        }
    }
}

/// What `QWEN3_MPI_ATTENTION` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Requested {
    Auto,
    Cudnn,
    Kernel,
    Reference,
}

/// The value of `QWEN3_MPI_ATTENTION` (unset: `None`).
fn parse_requested(value: Option<&str>) -> Result<Requested> {
    match value {
        None | Some("") | Some("auto") => Ok(Requested::Auto),
        Some("cudnn") => Ok(Requested::Cudnn),
        Some("kernel") => Ok(Requested::Kernel),
        Some("reference") => Ok(Requested::Reference),
        Some(other) => bail!("{ATTENTION_ENV}={other}: expected auto, cudnn, kernel or reference"),
    }
}

/// The plan for `cfg` in `dtype` on `device`.
pub fn choose(cfg: &Qwen3Config, dtype: DType, device: &Device) -> Result<LayerPlan> {
    let requested = parse_requested(std::env::var(ATTENTION_ENV).ok().as_deref())?;
    if !device.is_cuda() {
        return Ok(LayerPlan::reference("CPU: the unfused layer"));
    }
    if requested == Requested::Reference {
        return Ok(LayerPlan::reference(&format!(
            "{ATTENTION_ENV}=reference: the unfused layer"
        )));
    }
    let covered = fused_layer_covers(cfg, dtype);
    if let Err(why) = &covered {
        if requested == Requested::Cudnn {
            bail!("{ATTENTION_ENV}=cudnn: {why}");
        }
        return Ok(LayerPlan::reference(&format!("the unfused layer: {why}")));
    }
    let decode = if decode_step_covers(cfg) {
        DecodePath::FusedStep
    } else {
        DecodePath::Layers
    };
    let flash = if dtype == DType::BF16 {
        (PrefillAttention::Flash, "our flash kernel")
    } else {
        (
            PrefillAttention::Reference,
            "reference attention (our flash kernel is bf16 only)",
        )
    };
    let fallback = (requested == Requested::Auto).then(|| (flash.0.clone(), flash.1.to_owned()));
    let (prefill, why) = match requested {
        Requested::Kernel => (flash.0, format!("{ATTENTION_ENV}=kernel: {}", flash.1)),
        _ => match load_cudnn(device) {
            Ok(found) => found,
            Err(why) if requested == Requested::Cudnn => bail!("{ATTENTION_ENV}=cudnn: {why}"),
            Err(why) => (flash.0, format!("{}: {why}", flash.1)),
        },
    };
    // which library runs the layer's products (`QWEN3_MPI_DENSE_GEMM`; a bad value ends setup)
    #[cfg(feature = "cuda")]
    let products = super::dense_gemm::DenseGemm::chosen()?.name();
    #[cfg(not(feature = "cuda"))]
    let products = "cuBLAS";
    Ok(LayerPlan {
        fused: true,
        prefill,
        decode,
        reason: format!("fused layer; products: {products}; prefill attention: {why}; decode: {decode:?}"),
        fallback,
    })
}

/// Whether the fused layer's kernels take this model and dtype, or why not.
fn fused_layer_covers(cfg: &Qwen3Config, dtype: DType) -> std::result::Result<(), String> {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return Err(format!("the fused kernels take bf16 or f16, not {dtype:?}"));
    }
    if cfg.head_dim != 128
        || !cfg.hidden_size.is_multiple_of(8)
        || cfg.hidden_size > 8192
        || !cfg.intermediate_size.is_multiple_of(8)
    {
        return Err(format!(
            "the fused kernels take head_dim 128, hidden and intermediate sizes multiple of 8 and hidden ≤ 8192 \
             (this model: head_dim {}, hidden {}, intermediate {})",
            cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
        ));
    }
    if let Some(moe) = &cfg.moe {
        let (max_experts, max_top_k) = (super::moe::GPU_MAX_EXPERTS, super::moe::GPU_MAX_TOP_K);
        if moe.num_experts > max_experts
            || moe.num_experts_per_tok > max_top_k
            || !moe.moe_intermediate_size.is_multiple_of(8)
        {
            return Err(format!(
                "the fused MoE block takes at most {max_experts} experts, {max_top_k} per token, and an expert \
                 intermediate size multiple of 8 (this model: {} experts, {} per token, intermediate {}: the MoE \
                 block runs in plain tensor operations)",
                moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size
            ));
        }
    }
    Ok(())
}

/// Whether the fused decode step takes this model (its attention kernels exist for 1 to 8 query
/// heads per KV head; a MoE model's sparse layers take the MoE kernels that the fused layer's
/// check admitted, `moe_decode.rs`).
fn decode_step_covers(cfg: &Qwen3Config) -> bool {
    let heads = cfg.num_attention_heads;
    let kv_heads = cfg.num_key_value_heads;
    kv_heads > 0 && heads.is_multiple_of(kv_heads) && (1..=8).contains(&(heads / kv_heads))
}

/// cuDNN, loaded once per process (a job's model is built by more than one loader).
#[cfg(feature = "cudnn")]
fn load_cudnn(device: &Device) -> std::result::Result<(PrefillAttention, String), String> {
    static LOADED: OnceLock<std::result::Result<Arc<super::cudnn::Cudnn>, String>> = OnceLock::new();
    let cudnn = LOADED
        .get_or_init(|| super::cudnn::Cudnn::load(device).map(Arc::new))
        .clone()?;
    let why = format!("cuDNN {}", cudnn.version());
    Ok((PrefillAttention::Cudnn(cudnn), why))
}

#[cfg(not(feature = "cudnn"))]
fn load_cudnn(_: &Device) -> std::result::Result<(PrefillAttention, String), String> {
    Err("this build has no cuDNN (build with --features cudnn)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Qwen3Config {
        crate::model::tiny::config()
    }

    #[test]
    fn attention_choice_is_read_from_its_variable_and_a_bad_value_names_it() {
        assert_eq!(parse_requested(None).unwrap(), Requested::Auto);
        assert_eq!(parse_requested(Some("cudnn")).unwrap(), Requested::Cudnn);
        assert_eq!(parse_requested(Some("kernel")).unwrap(), Requested::Kernel);
        assert_eq!(parse_requested(Some("reference")).unwrap(), Requested::Reference);
        let error = parse_requested(Some("fast")).unwrap_err().to_string();
        assert!(error.contains("QWEN3_MPI_ATTENTION=fast"), "{error}");
    }

    #[test]
    fn the_cpu_runs_the_unfused_reference() {
        let cfg = tiny();
        let plan = choose(&cfg, DType::F32, &Device::Cpu).unwrap();
        assert!(!plan.fused);
        assert_eq!(
            (plan.prefill_name(), plan.decode_name()),
            ("reference", "reference")
        );
    }

    #[test]
    fn mixture_of_experts_models_take_the_fused_layer_where_its_moe_kernels_fit() {
        let json = serde_json::from_str(crate::model::tiny::MOE_CONFIG_JSON).unwrap();
        let mut cfg = Qwen3Config::from_json(&json).unwrap();
        cfg.head_dim = 128; // a shape the fused attention takes
        assert!(fused_layer_covers(&cfg, DType::BF16).is_ok());
        cfg.moe.as_mut().unwrap().moe_intermediate_size = 30;
        let why = fused_layer_covers(&cfg, DType::BF16).unwrap_err();
        assert!(why.contains("MoE block runs in plain tensor operations"), "{why}");
    }

    #[test]
    fn the_fused_decode_step_covers_one_to_eight_query_heads_per_kv_head() {
        let mut cfg = tiny();
        for (heads, kv_heads, covered) in [
            (16, 8, true),
            (40, 8, true),
            (64, 8, true),
            (8, 8, true),
            (72, 8, false),
        ] {
            cfg.num_attention_heads = heads;
            cfg.num_key_value_heads = kv_heads;
            assert_eq!(decode_step_covers(&cfg), covered, "{heads} over {kv_heads}");
        }
    }
}
