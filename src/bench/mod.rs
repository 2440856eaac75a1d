//! Benchmarks beside the main job: the KV sync alone (an MPI job) and prefill attention alone
//! (one GPU, no MPI).

pub mod attention;
#[cfg(feature = "cuda")]
mod attention_gpu;
pub mod attention_reference;
pub mod attention_table;
pub mod comm;
pub mod comm_table;
