//! MPI underneath the pipeline: the world, its communicators, the transport choice, raw MPI
//! calls on device or host addresses, and tensors as bytes on the wire.

#[cfg(feature = "cuda")]
pub mod cuda_ipc;
#[cfg(feature = "cuda")]
pub mod device_memory;
pub mod gpu_sharing;
pub mod hidden_out;
pub mod host_bytes;
pub mod mpi_env;
pub mod mpi_raw;
pub mod placement;
pub mod progress;
pub mod selection;
pub mod settings;
pub mod shared_window;

pub use mpi_env::{MpiEnv, SharedComm};
pub use selection::{plan_transport, CudaAwareness, Site, Transport, TransportArg, TransportPlan};
pub use settings::TransportSettings;
