//! MPI underneath the pipeline: the world, its communicators, the transport choice, raw MPI
//! calls on device or host addresses, and tensors as bytes on the wire.

#[cfg(feature = "cuda")]
pub mod cuda_ipc;
#[cfg(feature = "cuda")]
pub mod device_memory;
pub mod gpu_sharing;
#[cfg(feature = "cuda")]
pub mod hidden_ipc;
/// Without CUDA there is no IPC path: the type exists so that callers need no `cfg`, but no
/// value of it can.
#[cfg(not(feature = "cuda"))]
pub mod hidden_ipc {
    pub enum HiddenIpc {}

    impl HiddenIpc {
        pub fn open(
            _comm: &mpi::topology::SimpleCommunicator,
            _positions: usize,
            _hidden: usize,
            _dtype: candle_core::DType,
            _device: &candle_core::Device,
        ) -> anyhow::Result<Self> {
            anyhow::bail!("this build has no CUDA")
        }

        pub fn incoming(&self, _start: usize, _len: usize) -> anyhow::Result<candle_core::Tensor> {
            match *self {}
        }

        pub fn close(self) -> anyhow::Result<()> {
            match self {}
        }
    }
}
#[cfg(feature = "cuda")]
pub mod hidden_device;
/// Without CUDA there is no GPU-to-GPU path: as with `hidden_ipc`, the type has no value.
#[cfg(not(feature = "cuda"))]
pub mod hidden_device {
    use super::mpi_raw::RawRequest;

    pub enum HiddenDevice {}

    impl HiddenDevice {
        pub fn open(
            _comm: &mpi::topology::SimpleCommunicator,
            _positions: usize,
            _hidden: usize,
            _dtype: candle_core::DType,
            _device: &candle_core::Device,
        ) -> anyhow::Result<Self> {
            anyhow::bail!("this build has no CUDA")
        }

        pub fn send(
            &self,
            _start: usize,
            _len: usize,
            _to: usize,
            _chunk: usize,
        ) -> anyhow::Result<RawRequest> {
            match *self {}
        }

        pub fn receive(
            &self,
            _start: usize,
            _len: usize,
            _from: usize,
            _chunk: usize,
        ) -> anyhow::Result<RawRequest> {
            match *self {}
        }

        pub fn incoming(&self, _start: usize, _len: usize) -> anyhow::Result<candle_core::Tensor> {
            match *self {}
        }
    }
}
pub mod hidden_out;
pub mod hidden_plan;
pub mod host_bytes;
pub mod mpi_env;
pub mod mpi_raw;
pub mod placement;
pub mod progress;
pub mod selection;
pub mod settings;
pub mod shared_window;

pub use hidden_plan::{plan_hidden, HiddenArg, HiddenPath, HiddenPlan};
pub use mpi_env::{MpiEnv, SharedComm};
pub use selection::{plan_transport, CudaAwareness, Site, Transport, TransportArg, TransportPlan};
pub use settings::TransportSettings;
