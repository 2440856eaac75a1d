//! The thin unsafe layer under the IPC KV transport: CUDA IPC handles of device memory, their
//! mappings in other processes of the node, and copy-engine copies between GPUs. cudarc's safe
//! API has no IPC; these are its raw driver bindings.

use anyhow::{anyhow, Result};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaStream};

/// Bytes of a `CUipcMemHandle`.
pub const HANDLE_BYTES: usize = 64;

fn check(what: &str, status: sys::CUresult) -> Result<()> {
    status.result().map_err(|e| anyhow!("CUDA {what} failed: {e:?}"))
}

/// An allocation of this process as another process of the node can map it: the IPC handle of
/// the allocation holding `address`, and `address`'s offset inside it.
pub struct ExportedMemory {
    pub handle: [u8; HANDLE_BYTES],
    pub offset: u64,
}

/// Exports the `cuMemAlloc` allocation that holds device `address` (the caller's context is
/// bound to this thread).
pub fn export(address: u64) -> Result<ExportedMemory> {
    let (mut base, mut size) = (0u64, 0usize);
    // SAFETY: out-pointers to locals; the driver checks that `address` is device memory.
    check("cuMemGetAddressRange", unsafe {
        sys::cuMemGetAddressRange_v2(&mut base, &mut size, address)
    })?;
    let mut handle = sys::CUipcMemHandle {
        reserved: [0; HANDLE_BYTES],
    };
    // SAFETY: `base` is the start of an allocation (just queried); the handle is written.
    check(
        "cuIpcGetMemHandle (the memory must come from cuMemAlloc)",
        unsafe { sys::cuIpcGetMemHandle(&mut handle, base) },
    )?;
    Ok(ExportedMemory {
        handle: handle.reserved.map(|c| c as u8),
        offset: address - base,
    })
}

/// Another process's allocation mapped into this one; unmapped on drop.
pub struct PeerMemory {
    base: u64,
    /// The exporter's address of interest inside the allocation, here.
    pub address: u64,
}

// SAFETY: a device address valid in this process's context from any thread.
unsafe impl Send for PeerMemory {}

impl PeerMemory {
    /// Maps a peer's exported allocation (with peer access enabled as needed).
    pub fn open(handle: &[u8; HANDLE_BYTES], offset: u64) -> Result<Self> {
        let handle = sys::CUipcMemHandle {
            reserved: handle.map(|b| b as std::ffi::c_char),
        };
        let mut base = 0u64;
        // SAFETY: the handle came from cuIpcGetMemHandle in a process of this node that keeps
        // the allocation for the whole job; `base` is written on success.
        check("cuIpcOpenMemHandle", unsafe {
            sys::cuIpcOpenMemHandle_v2(
                &mut base,
                handle,
                sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32,
            )
        })?;
        Ok(Self {
            base,
            address: base + offset,
        })
    }
}

impl PeerMemory {
    /// Unmaps the allocation, reporting a failure (the caller's context must be bound).
    pub fn close(mut self) -> Result<()> {
        let base = std::mem::take(&mut self.base);
        // SAFETY: mapped by cuIpcOpenMemHandle in `open`; the owner has synchronised its copies.
        check("cuIpcCloseMemHandle", unsafe { sys::cuIpcCloseMemHandle(base) })
    }
}

impl Drop for PeerMemory {
    /// On error paths only (`close` is the normal way): the process is ending anyway.
    fn drop(&mut self) {
        if self.base != 0 {
            // SAFETY: mapped by cuIpcOpenMemHandle in `open` and not yet unmapped.
            let _ = unsafe { sys::cuIpcCloseMemHandle(self.base) };
        }
    }
}

/// Queues a copy of `bytes` from device address `src` to `dst` (either may be a peer's mapping)
/// on `stream`, by the copy engines.
///
/// # Safety
/// Both ranges must be valid device memory until the stream has passed the copy, and nothing
/// else may write `dst` meanwhile.
pub unsafe fn copy_async(dst: u64, src: u64, bytes: usize, stream: &CudaStream) -> Result<()> {
    check(
        "cuMemcpyDtoDAsync",
        sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, stream.cu_stream()),
    )
}
