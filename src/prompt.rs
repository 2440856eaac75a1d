//! The prompt as token ids: text (from `--prompt`, `--prompt-file` or the default, optionally
//! through the chat template) or a synthetic id sequence.

use anyhow::{bail, Context, Result};

use crate::cli::args::{RunArgs, DEFAULT_PROMPT};
use crate::model::source::ModelFiles;
use crate::model::synthetic::splitmix64;
use crate::tokenize::{ChatTemplate, TextTokenizer};

/// Ids below this are ordinary (non-special) Qwen3 tokens.
const QWEN3_REGULAR_TOKENS: u32 = 151_643;

/// The prompt's token ids.
pub fn prompt_ids(args: &RunArgs, files: &ModelFiles, tokenizer: &TextTokenizer) -> Result<Vec<u32>> {
    if let Some(n) = args.synthetic_prompt {
        let positions = files.config.max_position_embeddings;
        if n > positions as u64 {
            bail!(
                "--synthetic-prompt {n}: more tokens than the model's max_position_embeddings ({positions})"
            );
        }
        let limit = QWEN3_REGULAR_TOKENS.min(files.config.vocab_size as u32);
        return Ok(synthetic_prompt(n as usize, limit));
    }
    let text = match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("--prompt-file {}: cannot read", path.display()))?,
        (None, None) => DEFAULT_PROMPT.to_owned(),
    };
    if text.is_empty() {
        bail!("the prompt is empty");
    }
    let text = if args.chat {
        let config = files
            .tokenizer_config
            .as_ref()
            .context("--chat: the model directory has no tokenizer_config.json")?;
        ChatTemplate::from_tokenizer_config(config, "tokenizer_config.json")?.render_user_prompt(&text)?
    } else {
        text
    };
    tokenizer.encode(&text)
}

/// `n` ids in `[0, limit)`, the same for every run.
pub fn synthetic_prompt(n: usize, limit: u32) -> Vec<u32> {
    (0..n as u64)
        .map(|i| (splitmix64(0, i) % limit as u64) as u32)
        .collect()
}
