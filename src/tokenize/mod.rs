//! Text ↔ token ids: the checkpoint's tokenizer and its chat template.

pub mod chat;
pub mod tokenizer;

pub use chat::ChatTemplate;
pub use tokenizer::TextTokenizer;
