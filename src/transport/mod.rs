//! MPI underneath the pipeline: the world, its communicators, and tensors as bytes on the wire.

pub mod host_bytes;
pub mod mpi_env;

pub use mpi_env::{MpiEnv, SharedComm};
