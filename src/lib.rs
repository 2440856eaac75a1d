//! qwen3-mpi: Qwen3 inference across GPUs as an MPI job.
//!
//! Data flows one way: [`cli`] → job setup → schedule → stage loop (compute ↔ kv sync) →
//! decode → [`trace`].

pub mod abort;
pub mod bench;
pub mod cli;
pub mod device;
pub mod generate;
pub mod job;
pub mod model;
pub mod prompt;
pub mod schedule;
pub mod sync;
pub mod tokenize;
pub mod trace;
pub mod transport;
pub mod units;
