//! The Qwen3 model as a pipeline stage: any contiguous range of decoder layers, plus the
//! embedding and/or the final norm and lm_head where the stage needs them. The KV cache is the
//! caller's.

use std::ops::Range;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm};

use super::config::Qwen3Config;
use super::decoder_layer::Layer;
use super::kv_cache::KvCache;
use super::layer_plan::{self, LayerPlan};
use super::layer_probe::LayerProbe;
use super::layer_weights::WeightLoader;
use super::rope::RotaryTable;
use super::weight_names::{embed_spec, final_norm_spec, lm_head_spec, StageParts};
use super::weights::WeightSource;

pub struct Qwen3 {
    cfg: Qwen3Config,
    dtype: DType,
    device: Device,
    embed_tokens: Option<Embedding>,
    /// Indexed by global layer; `None` for layers this process has not loaded.
    layers: Vec<Option<Layer>>,
    norm: Option<RmsNorm>,
    lm_head: Option<Linear>,
    rope: RotaryTable,
    plan: LayerPlan,
}

impl Qwen3 {
    /// Loads the layers in `layers` and the `parts` a stage needs; `positions` sizes the RoPE
    /// table (the KV capacity of the job).
    pub fn load(
        cfg: &Qwen3Config,
        source: &dyn WeightSource,
        layers: Range<usize>,
        parts: StageParts,
        positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if layers.end > cfg.num_hidden_layers || layers.start > layers.end {
            bail!("layer range {layers:?} is outside 0..{}", cfg.num_hidden_layers);
        }
        let mut model = Self {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            embed_tokens: None,
            layers: (0..cfg.num_hidden_layers).map(|_| None).collect(),
            norm: None,
            lm_head: None,
            rope: RotaryTable::new(cfg, positions, dtype, device)?,
            plan: layer_plan::choose(cfg, dtype, device)?,
        };
        model.load_parts(source, parts)?;
        model.load_layers(source, layers)?;
        Ok(model)
    }

    fn loader<'a>(&'a self, source: &'a dyn WeightSource) -> WeightLoader<'a> {
        WeightLoader {
            source,
            dtype: self.dtype,
            device: &self.device,
        }
    }

    /// Loads the embedding and/or head if not loaded yet.
    pub fn load_parts(&mut self, source: &dyn WeightSource, parts: StageParts) -> Result<()> {
        let loader = self.loader(source);
        let embed = match (parts.embed, &self.embed_tokens) {
            (true, None) => Some(Embedding::new(
                loader.tensor(&embed_spec(&self.cfg))?,
                self.cfg.hidden_size,
            )),
            _ => None,
        };
        let head = match (parts.head, &self.lm_head) {
            (true, None) => Some((
                RmsNorm::new(loader.tensor(&final_norm_spec(&self.cfg))?, self.cfg.rms_norm_eps),
                Linear::new(loader.tensor(&lm_head_spec(&self.cfg))?, None),
            )),
            _ => None,
        };
        if embed.is_some() {
            self.embed_tokens = embed;
        }
        if let Some((norm, lm_head)) = head {
            self.norm = Some(norm);
            self.lm_head = Some(lm_head);
        }
        Ok(())
    }

    /// Loads decoder layers in `layers` that are not loaded yet.
    pub fn load_layers(&mut self, source: &dyn WeightSource, layers: Range<usize>) -> Result<()> {
        for layer in layers {
            if self.layers[layer].is_none() {
                let loaded = Layer::load(self.loader(source), &self.cfg, layer)?;
                self.layers[layer] = Some(loaded);
            }
        }
        Ok(())
    }

    /// Takes over the layers and parts of `other` that this model lacks.
    pub fn absorb(&mut self, other: Qwen3) {
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            if mine.is_none() {
                *mine = theirs;
            }
        }
        if self.embed_tokens.is_none() {
            self.embed_tokens = other.embed_tokens;
        }
        if self.lm_head.is_none() {
            self.norm = other.norm;
            self.lm_head = other.lm_head;
        }
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.cfg
    }

    /// Builds what prefill attention needs for the job's chunks, `(L, start)` each, before the
    /// clock starts; the seconds it took, if anything was built.
    pub fn prepare_prefill(&mut self, chunks: &[(usize, usize)], capacity: usize) -> Result<Option<f64>> {
        self.plan.prepare(chunks, &self.cfg, self.dtype, capacity)
    }

    /// The kernels the layers run on, and why.
    pub fn plan(&self) -> &LayerPlan {
        &self.plan
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// ids (L) → hidden (L, hidden)
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let embed = self
            .embed_tokens
            .as_ref()
            .context("this stage has no embedding loaded")?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary (vocab_size {})",
                self.cfg.vocab_size
            );
        }
        let ids = Tensor::new(ids, &self.device)?;
        Ok(embed.forward(&ids)?)
    }

    /// Runs decoder layers `layers` over a chunk at positions `[start, start + L)`, writing each
    /// layer's K/V for those positions into `kv`. hidden: (L, hidden) → (L, hidden)
    pub fn forward_layers(
        &self,
        layers: Range<usize>,
        hidden: Tensor,
        start: usize,
        kv: &KvCache,
    ) -> Result<Tensor> {
        let mut x = hidden;
        for layer in layers {
            x = self.forward_layer(layer, &x, start, kv)?;
        }
        Ok(x)
    }

    /// One decoder layer; the seam the pipeline uses to sync K/V after each layer.
    pub fn forward_layer(&self, layer: usize, hidden: &Tensor, start: usize, kv: &KvCache) -> Result<Tensor> {
        self.forward_layer_probed(layer, hidden, start, kv, None)
    }

    /// As [`Self::forward_layer`], with `probe` seeing where each part of the layer's work
    /// begins (matrix products, attention, elementwise kernels).
    pub fn forward_layer_probed(
        &self,
        layer: usize,
        hidden: &Tensor,
        start: usize,
        kv: &KvCache,
        probe: Option<&dyn LayerProbe>,
    ) -> Result<Tensor> {
        self.decoder(layer)?
            .forward(hidden, start, &self.rope, kv, &self.plan, probe)
    }

    fn decoder(&self, layer: usize) -> Result<&Layer> {
        self.layers
            .get(layer)
            .and_then(Option::as_ref)
            .with_context(|| format!("decoder layer {layer} is not loaded on this stage"))
    }

    /// The decode step over every layer in one chain of fused kernels, when the plan has one
    /// (a GPU, every layer and the head loaded). Built once per decode; it keeps handles on the
    /// weights and reads and writes `kv`.
    #[cfg(feature = "cuda")]
    pub fn fused_decode_step(&self, kv: &KvCache) -> Result<Option<super::decode_step::DecodeStep>> {
        if self.plan.decode != layer_plan::DecodePath::FusedStep {
            return Ok(None);
        }
        let layers = (0..self.cfg.num_hidden_layers)
            .map(|l| {
                self.decoder(l)?.dense().with_context(|| {
                    format!(
                        "decode step: layer {l} is a mixture-of-experts layer, which it has no kernels for"
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (Some(embed), Some(norm), Some(lm_head)) = (&self.embed_tokens, &self.norm, &self.lm_head) else {
            return Ok(None);
        };
        let parts = super::decode_step::ModelParts {
            cfg: &self.cfg,
            layers,
            embed: embed.embeddings(),
            final_norm: norm,
            lm_head: lm_head.weight(),
            rope: &self.rope,
        };
        Ok(Some(super::decode_step::DecodeStep::new(&parts, kv)?))
    }

    /// Final norm and lm_head of the last position. hidden: (L, hidden) → logits (vocab), f32
    pub fn logits_last(&self, hidden: &Tensor) -> Result<Tensor> {
        let norm = self
            .norm
            .as_ref()
            .context("this stage has no final norm loaded")?;
        let lm_head = self
            .lm_head
            .as_ref()
            .context("this stage has no lm_head loaded")?;
        let len = hidden.dim(0)?;
        let last = hidden.narrow(0, len - 1, 1)?; // (1, hidden)
        let logits = lm_head.forward(&norm.forward(&last)?)?; // (1, vocab)
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }
}
