//! The built-in `tiny` and `tiny-moe` models: the Qwen3 and Qwen3-MoE architectures at toy
//! size, the real Qwen3 tokenizer, weights generated from a fixed seed. Everything is compiled
//! in.

pub const CONFIG_JSON: &str = include_str!("tiny/config.json");
pub const TOKENIZER_JSON: &[u8] = include_bytes!("tiny/tokenizer.json");
pub const TOKENIZER_CONFIG_JSON: &str = include_str!("tiny/tokenizer_config.json");
/// Qwen3's end tokens: `<|im_end|>` and `<|endoftext|>`.
pub const EOS_TOKEN_IDS: [u32; 2] = [151645, 151643];
/// Seed of the synthetic weights.
pub const SEED: u64 = 0x5157_454e_335f_4d50; // "QWEN3_MP"
/// `tiny-moe`: Qwen3-MoE at the same size (16 experts, 4 per token, one dense layer).
pub const MOE_CONFIG_JSON: &str = include_str!("tiny/config-moe.json");
/// Seed of `tiny-moe`'s synthetic weights.
pub const MOE_SEED: u64 = 0x5157_454e_335f_4d45; // "QWEN3_ME"

/// The built-in `tiny` model's config (for tests).
#[cfg(test)]
pub fn config() -> super::config::Qwen3Config {
    let json = serde_json::from_str(CONFIG_JSON).expect("the built-in config is JSON");
    super::config::Qwen3Config::from_json(&json).expect("the built-in config is a Qwen3 config")
}
