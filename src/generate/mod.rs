//! Turning prompt ids into generated ids on one process: chunked prefill, then decode.

pub mod chunks;
pub mod decode;
pub mod prefill;
pub mod sampling;

pub use chunks::{default_chunk_size, split_prompt, Chunk};
pub use decode::{decode, DecodeOutcome};
pub use prefill::prefill_local;
pub use sampling::{Sampler, SamplingParams};
