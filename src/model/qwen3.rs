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
use super::weights::{CountingSource, WeightSource};

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
    /// Bytes of the tensors loaded, as they loaded: per global layer (0 where not loaded),
    /// the embedding, and the final norm with lm_head.
    bytes: LoadedBytes,
}

#[derive(Debug, Clone, Default)]
struct LoadedBytes {
    layers: Vec<u64>,
    embed: u64,
    head: u64,
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
            bytes: LoadedBytes {
                layers: vec![0; cfg.num_hidden_layers],
                ..LoadedBytes::default()
            },
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

    /// Loads the embedding and/or head if not loaded yet. With tied embeddings, lm_head is
    /// the embedding's own table where this model holds it (not a second copy).
    pub fn load_parts(&mut self, source: &dyn WeightSource, parts: StageParts) -> Result<()> {
        if parts.embed && self.embed_tokens.is_none() {
            let counted = CountingSource::new(source);
            let table = self.loader(&counted).tensor(&embed_spec(&self.cfg))?;
            self.embed_tokens = Some(Embedding::new(table, self.cfg.hidden_size));
            self.bytes.embed = counted.bytes();
        }
        if parts.head && self.lm_head.is_none() {
            let counted = CountingSource::new(source);
            let loader = self.loader(&counted);
            let norm = RmsNorm::new(loader.tensor(&final_norm_spec(&self.cfg))?, self.cfg.rms_norm_eps);
            let weight = match (&self.embed_tokens, self.cfg.tie_word_embeddings) {
                (Some(embed), true) => embed.embeddings().clone(),
                _ => loader.tensor(&lm_head_spec(&self.cfg))?,
            };
            self.norm = Some(norm);
            self.lm_head = Some(Linear::new(weight, None));
            self.bytes.head = counted.bytes();
        }
        Ok(())
    }

    /// Loads decoder layers in `layers` that are not loaded yet.
    pub fn load_layers(&mut self, source: &dyn WeightSource, layers: Range<usize>) -> Result<()> {
        for layer in layers {
            if self.layers[layer].is_none() {
                let counted = CountingSource::new(source);
                let loaded = Layer::load(self.loader(&counted), &self.cfg, layer)?;
                self.layers[layer] = Some(loaded);
                self.bytes.layers[layer] = counted.bytes();
                tracing::debug!("layer {layer} loaded ({} bytes read)", counted.bytes());
            }
        }
        Ok(())
    }

    /// Takes over the layers and parts of `other` that this model lacks. With tied
    /// embeddings, an embedding taken over brings the head that shares its table.
    pub fn absorb(&mut self, mut other: Qwen3) {
        let theirs = other.layers.into_iter().zip(other.bytes.layers);
        for ((mine, bytes), (layer, their_bytes)) in
            self.layers.iter_mut().zip(&mut self.bytes.layers).zip(theirs)
        {
            if mine.is_none() {
                *mine = layer;
                *bytes = their_bytes;
            }
        }
        if self.embed_tokens.is_none() && other.embed_tokens.is_some() {
            self.embed_tokens = other.embed_tokens.take();
            self.bytes.embed = other.bytes.embed;
        }
        if self.lm_head.is_none() && other.lm_head.is_some() {
            self.norm = other.norm.take();
            self.lm_head = other.lm_head.take();
            self.bytes.head = other.bytes.head;
        }
        // tied: one table, the embedding's, wherever the head's copy came from
        if let (true, Some(embed), Some(head), Some(norm)) = (
            self.cfg.tie_word_embeddings,
            &self.embed_tokens,
            &self.lm_head,
            &self.norm,
        ) {
            if head.weight().id() != embed.embeddings().id() {
                self.lm_head = Some(Linear::new(embed.embeddings().clone(), None));
                let norm = norm.weight();
                self.bytes.head = (norm.elem_count() * norm.dtype().size_in_bytes()) as u64;
            }
        }
    }

    /// Bytes of the weights this model holds, summed over the tensors as they were loaded.
    pub fn resident_weight_bytes(&self) -> u64 {
        self.bytes.layers.iter().sum::<u64>() + self.bytes.embed + self.bytes.head
    }

    /// The decoder layers this model holds (global indices).
    pub fn resident_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&l| self.layers[l].is_some())
            .collect()
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

    /// The decode step of `layers` (with the embedding and/or the head as `parts` says) in
    /// one chain of fused kernels, when the plan has one (a GPU, those layers and parts
    /// loaded). Built once per decode; it keeps handles on the weights and reads and writes
    /// `kv`.
    #[cfg(feature = "cuda")]
    pub fn fused_decode_step(
        &self,
        kv: &KvCache,
        layers: Range<usize>,
        parts: StageParts,
    ) -> Result<Option<super::decode_step::DecodeStep>> {
        if self.plan.decode != layer_plan::DecodePath::FusedStep || layers.is_empty() {
            return Ok(None);
        }
        let first_layer = layers.start;
        let layers = layers.map(|l| self.decoder(l)).collect::<Result<Vec<_>>>()?;
        let embed = match (parts.embed, &self.embed_tokens) {
            (true, Some(embed)) => Some(embed.embeddings()),
            (true, None) => return Ok(None),
            (false, _) => None,
        };
        let head = match (parts.head, &self.norm, &self.lm_head) {
            (true, Some(norm), Some(lm_head)) => Some((norm, lm_head.weight())),
            (true, _, _) => return Ok(None),
            (false, _, _) => None,
        };
        let parts = super::decode_step::ModelParts {
            cfg: &self.cfg,
            layers,
            first_layer,
            embed,
            head,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::SyntheticWeights;

    fn tiny() -> Qwen3Config {
        crate::model::tiny::config()
    }

    #[test]
    fn a_stage_completed_in_the_background_holds_the_whole_model_once() {
        let cfg = tiny();
        assert!(
            cfg.tie_word_embeddings,
            "the built-in model ties its head to the embedding"
        );
        let source = SyntheticWeights {
            seed: crate::model::tiny::SEED,
        };
        let layers = cfg.num_hidden_layers;
        let load = |range: Range<usize>, embed, head| {
            Qwen3::load(
                &cfg,
                &source,
                range,
                StageParts { embed, head },
                64,
                DType::F32,
                &Device::Cpu,
            )
            .unwrap()
        };
        let whole = load(0..layers, true, true);
        // the first and the last rank of two (their layers and their end of the model), then
        // what the background load adds
        for (owned, embed, rest_layers) in [(0..1, true, 1..layers), (1..layers, false, 0..1)] {
            let mut stage = load(owned.clone(), embed, !embed);
            let mut rest = load(0..0, !embed, embed);
            rest.load_layers(&source, rest_layers).unwrap();
            stage.absorb(rest);
            assert_eq!(
                stage.resident_weight_bytes(),
                whole.resident_weight_bytes(),
                "{owned:?}"
            );
            let (table, head) = (
                stage.embed_tokens.as_ref().unwrap(),
                stage.lm_head.as_ref().unwrap(),
            );
            assert_eq!(
                head.weight().id(),
                table.embeddings().id(),
                "{owned:?}: the tied head is a second table"
            );
        }
    }
}
