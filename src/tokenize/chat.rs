//! The chat template of `tokenizer_config.json`, rendered with minijinja the way transformers'
//! `apply_chat_template(..., add_generation_prompt=True)` renders it.

use anyhow::{anyhow, Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde_json::Value;

pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Value,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// From a parsed `tokenizer_config.json`; `origin` names the file in errors.
    pub fn from_tokenizer_config(config: &Value, origin: &str) -> Result<Self> {
        let source = config
            .get("chat_template")
            .and_then(Value::as_str)
            .with_context(|| format!("{origin}: no `chat_template` string (needed by --chat)"))?;
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| anyhow!("{origin}: chat template does not parse: {e}"))?;
        let token = |key: &str| config.get(key).and_then(Value::as_str).map(str::to_owned);
        let special_tokens = serde_json::json!({
            "bos_token": token("bos_token"),
            "eos_token": token("eos_token"),
            "pad_token": token("pad_token"),
        });
        Ok(Self { env, special_tokens })
    }

    /// The prompt text for one user message, ending with the assistant turn's opening.
    pub fn render_user_prompt(&self, user_message: &str) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let messages = vec![context! { role => "user", content => user_message }];
        let text = template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                ..minijinja::Value::from_serialize(&self.special_tokens)
            })
            .map_err(|e| anyhow!("chat template failed to render: {e}"))?;
        Ok(text)
    }
}
