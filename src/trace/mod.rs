//! The HDF5 file every job writes.

pub mod cost_fit;
pub mod cost_report;
pub mod device_spans;
pub mod file;
pub mod nvtx;
pub mod perfetto;
pub mod read;
pub mod span_names;
pub mod spans;
pub mod summary_table;

pub use file::TraceFile;
