//! `--model`: the built-in `tiny` or `tiny-moe` model or a Hugging Face checkpoint directory,
//! resolved into config, weights and tokenizer files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::config::{token_ids, Qwen3Config};
use super::tiny;
use super::weights::{AfterMap, Checkpoint, SyntheticWeights, WeightSource};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The built-in toy model (`--model tiny`).
    Tiny,
    /// The built-in toy mixture-of-experts model (`--model tiny-moe`).
    TinyMoe,
    /// A Hugging Face model directory.
    Dir(PathBuf),
}

impl ModelSource {
    /// `tiny` and `tiny-moe` mean the built-in models (write `./tiny` for a directory of that
    /// name).
    pub fn from_arg(arg: &str) -> Self {
        match arg {
            "tiny" => Self::Tiny,
            "tiny-moe" => Self::TinyMoe,
            _ => Self::Dir(PathBuf::from(arg)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Tiny => "tiny (built-in)".into(),
            Self::TinyMoe => "tiny-moe (built-in)".into(),
            Self::Dir(dir) => dir.display().to_string(),
        }
    }

    /// Whether this is a built-in model (random weights, no files).
    pub fn is_builtin(&self) -> bool {
        matches!(self, Self::Tiny | Self::TinyMoe)
    }

    /// Everything but the weights, read and checked; weights open lazily.
    pub fn open(&self) -> Result<ModelFiles> {
        self.open_with(None)
    }

    /// As [`Self::open`], with `after_map` called after each checkpoint file is mapped.
    pub fn open_with(&self, after_map: Option<AfterMap>) -> Result<ModelFiles> {
        match self {
            Self::Tiny => builtin("tiny", tiny::CONFIG_JSON, tiny::SEED),
            Self::TinyMoe => builtin("tiny-moe", tiny::MOE_CONFIG_JSON, tiny::MOE_SEED),
            Self::Dir(dir) => open_dir(dir, after_map),
        }
    }
}

/// A resolved model: what every rank needs to build its stage and tokenizer.
pub struct ModelFiles {
    pub config: Qwen3Config,
    pub weights: Arc<dyn WeightSource>,
    pub tokenizer_json: Vec<u8>,
    /// `tokenizer_config.json` (chat template), if the directory has one.
    pub tokenizer_config: Option<Value>,
    /// EOS ids from `generation_config.json`.
    pub generation_eos: Vec<u32>,
}

impl ModelFiles {
    /// EOS ids from config.json and generation_config.json together.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.config.eos_token_ids.clone();
        for id in &self.generation_eos {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        ids
    }
}

/// A built-in model: its compiled-in config, synthetic weights from `seed`, the real tokenizer.
fn builtin(name: &str, config: &str, seed: u64) -> Result<ModelFiles> {
    let what = || format!("built-in {name} config");
    let config_json: Value = serde_json::from_str(config).with_context(what)?;
    Ok(ModelFiles {
        config: Qwen3Config::from_json(&config_json).with_context(what)?,
        weights: Arc::new(SyntheticWeights { seed }),
        tokenizer_json: tiny::TOKENIZER_JSON.to_vec(),
        tokenizer_config: Some(serde_json::from_str(tiny::TOKENIZER_CONFIG_JSON)?),
        generation_eos: tiny::EOS_TOKEN_IDS.to_vec(),
    })
}

fn open_dir(dir: &Path, after_map: Option<AfterMap>) -> Result<ModelFiles> {
    if dir.is_file() {
        let folder = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        bail!(
            "--model {}: is a file; give the model's directory ({})",
            dir.display(),
            folder.display()
        );
    }
    if !dir.is_dir() {
        bail!("model directory {} does not exist", dir.display());
    }
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        bail!("{}: not found", config_path.display());
    }
    let config = Qwen3Config::from_file(&config_path)?;
    let weights = Arc::new(Checkpoint::open_with(dir, after_map)?);
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer_json = std::fs::read(&tokenizer_path)
        .with_context(|| format!("{}: cannot read", tokenizer_path.display()))?;
    let tokenizer_config = read_optional_json(&dir.join("tokenizer_config.json"))?;
    let generation_eos = match read_optional_json(&dir.join("generation_config.json"))? {
        Some(gen) => token_ids(gen.get("eos_token_id")).with_context(|| {
            format!(
                "{}: field `eos_token_id`",
                dir.join("generation_config.json").display()
            )
        })?,
        None => vec![],
    };
    Ok(ModelFiles {
        config,
        weights,
        tokenizer_json,
        tokenizer_config,
        generation_eos,
    })
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Some(value))
}
