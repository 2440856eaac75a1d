//! Turning prompt ids into generated ids: chunked prefill on one process, decode, sampling.

pub mod decode;
pub mod prefill;
pub mod sampling;

pub use decode::{decode, DecodeOutcome};
pub use prefill::prefill_local;
pub use sampling::{Sampler, SamplingParams};
