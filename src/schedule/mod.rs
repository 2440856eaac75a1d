//! The prefill schedule and the decode step: pure functions of (ranks, layer split, chunks,
//! decode mode) that every rank evaluates identically. No MPI here; the tests check them over
//! many shapes.

pub mod chunk_choice;
pub mod chunk_cost;
pub mod chunks;
pub mod decode;
pub mod layer_split;
pub mod pipeline;
pub mod prefill_time;
pub mod ring;

pub use chunk_choice::{plan_chunks, ChunkPlan};
pub use chunk_cost::{DeviceRates, HopCost, JobCost};
pub use chunks::{chunks_of_lengths, split_prompt, split_prompt_balanced, Chunk, Chunking};
pub use decode::{decode_step_program, DecodeArg, DecodeMode, DecodeOp};
pub use layer_split::LayerSplit;
pub use pipeline::{KvBlock, KvSyncCall, Schedule, StageOp};
pub use prefill_time::{predict_prefill, PrefillPrediction};
pub use ring::{ring_steps, RingStep};
