//! Qwen3: configuration, weights and the layer-range model the pipeline stages run.

pub mod attention;
pub mod bus_error;
pub mod config;
/// Prefill attention through cuDNN's flash attention, loaded at run time (`--features cudnn`).
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod decode_gemv;
#[cfg(feature = "cuda")]
mod decode_products;
pub mod decode_split;
#[cfg(feature = "cuda")]
pub mod decode_step;
pub mod decode_variants;
pub mod decoder_layer;
#[cfg(feature = "cuda")]
pub mod dense_gemm;
#[cfg(feature = "cuda")]
pub mod flash_attention;
#[cfg(feature = "cuda")]
pub mod flash_decode;
#[cfg(feature = "cuda")]
mod fused_layer;
#[cfg(feature = "cuda")]
mod gpu_tensors;
#[cfg(feature = "cuda")]
mod kernel_inputs;
#[cfg(feature = "cuda")]
pub mod kernel_modules;
pub mod kv_cache;
#[cfg(feature = "cuda")]
mod layer_ops;
pub mod layer_plan;
pub mod layer_probe;
pub mod layer_weights;
pub mod mlp;
pub mod moe;
pub mod moe_config;
#[cfg(feature = "cuda")]
mod moe_decode;
#[cfg(feature = "cuda")]
mod moe_ops;
pub mod qwen3;
pub mod rope;
pub mod router;
pub mod safetensors_file;
pub mod source;
pub mod stage_decoder;
#[cfg(feature = "cuda")]
pub mod staged_upload;
#[cfg(feature = "cuda")]
mod step_attention;
pub mod synthetic;
pub mod tiny;
pub mod weight_names;
pub mod weights;

pub use config::{MoeConfig, Qwen3Config};
pub use kv_cache::KvCache;
pub use qwen3::Qwen3;
pub use stage_decoder::{StageDecoder, StageInput, StageOutput};
pub use weight_names::StageParts;
