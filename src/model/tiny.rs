//! The built-in `tiny` model: Qwen3 architecture at toy size, real Qwen3 tokenizer, weights
//! generated from a fixed seed. Everything is compiled in.

pub const CONFIG_JSON: &str = include_str!("tiny/config.json");
pub const TOKENIZER_JSON: &[u8] = include_bytes!("tiny/tokenizer.json");
pub const TOKENIZER_CONFIG_JSON: &str = include_str!("tiny/tokenizer_config.json");
/// Qwen3's end tokens: `<|im_end|>` and `<|endoftext|>`.
pub const EOS_TOKEN_IDS: [u32; 2] = [151645, 151643];
/// Seed of the synthetic weights.
pub const SEED: u64 = 0x5157_454e_335f_4d50; // "QWEN3_MP"
