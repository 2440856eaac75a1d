//! The HDF5 file every job writes.

pub mod file;

pub use file::TraceFile;
