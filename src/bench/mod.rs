//! Benchmarks that run as MPI jobs beside the main one.

pub mod comm;
pub mod comm_table;
