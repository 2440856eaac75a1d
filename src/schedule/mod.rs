//! The prefill schedule and the decode step: pure functions of (ranks, layer split, chunks,
//! decode mode) that every rank evaluates identically. No MPI here; the tests check them over
//! many shapes.

pub mod chunks;
pub mod decode;
pub mod layer_split;
pub mod pipeline;
pub mod ring;

pub use chunks::{
    attention_cost_scale, default_chunk_size, split_prompt, split_prompt_balanced, Chunk, Chunking,
};
pub use decode::{decode_step_program, DecodeArg, DecodeMode, DecodeOp};
pub use layer_split::LayerSplit;
pub use pipeline::{KvBlock, KvSyncCall, Schedule, StageOp};
pub use ring::{ring_steps, RingStep};
