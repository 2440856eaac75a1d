//! The HDF5 file every job writes.

pub mod file;
pub mod spans;

pub use file::TraceFile;
