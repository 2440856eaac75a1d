//! The model's `tokenizer.json` (Hugging Face tokenizers).

use anyhow::{anyhow, bail, Result};
use tokenizers::Tokenizer;

pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// `origin` names the file in errors.
    pub fn from_bytes(json: &[u8], origin: &str) -> Result<Self> {
        let inner = Tokenizer::from_bytes(json).map_err(|e| anyhow!("{origin}: invalid tokenizer ({e})"))?;
        Ok(Self { inner })
    }

    /// Token ids of `text` as transformers' `tokenizer(text)` gives them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
        let ids = encoding.get_ids().to_vec();
        if ids.is_empty() {
            bail!("the prompt is empty: it has no tokens");
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("cannot decode tokens: {e}"))
    }

    /// Incremental decoder for streaming generated text (special tokens such as EOS omitted).
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            inner: self.inner.decode_stream(true),
        }
    }
}

/// Turns generated ids into text pieces as they arrive (whole UTF-8 characters only).
pub struct TextStream<'a> {
    inner: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
}

impl TextStream<'_> {
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.inner
            .step(id)
            .map_err(|e| anyhow!("cannot decode token {id}: {e}"))
    }
}
