//! The HDF5 file every job writes.

pub mod file;
pub mod job_trace;

pub use file::TraceFile;
