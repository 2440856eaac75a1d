//! The thin unsafe layer under the KV sync and the GPU-to-GPU hidden states: MPI calls on raw
//! addresses (device memory with a CUDA-aware MPI, or any memory the caller vouches for), which
//! the mpi crate's slice-based API cannot express, plus the two constants from `mpi_shim.c`.

use std::os::raw::{c_int, c_void};

use anyhow::{bail, Result};
use mpi::datatype::{Equivalence, UserDatatype};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;

extern "C" {
    fn qwen3_mpi_in_place() -> *mut c_void;
    fn qwen3_mpi_cuda_support() -> c_int;
    fn qwen3_mpi_set_error_callback(on_error: extern "C" fn(*const std::os::raw::c_char, c_int)) -> c_int;
}

/// What an MPI error does instead of ending the process inside MPI: gets the error's text and
/// must end the job itself.
pub type MpiErrorAction = fn(&str) -> !;

static ON_MPI_ERROR: std::sync::OnceLock<MpiErrorAction> = std::sync::OnceLock::new();

extern "C" fn on_mpi_error(text: *const std::os::raw::c_char, code: c_int) {
    let text = if text.is_null() {
        String::new()
    } else {
        // SAFETY: the shim passes a NUL-terminated buffer that lives for this call.
        unsafe { std::ffi::CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    if let Some(action) = ON_MPI_ERROR.get() {
        action(&format!("MPI error {code}: {}", text.trim()));
    }
}

/// Routes MPI errors on the world communicator, and on every communicator duplicated from it
/// afterwards (a duplicate inherits its error handler), to `action`. Call right after
/// initialisation, before any duplicate.
pub fn on_mpi_errors(action: MpiErrorAction) -> Result<()> {
    let _ = ON_MPI_ERROR.set(action);
    // SAFETY: MPI is initialised; the callback has the shim's signature and never unwinds into C
    // (it ends the process).
    check(
        unsafe { qwen3_mpi_set_error_callback(on_mpi_error) },
        "MPI_Comm_set_errhandler",
    )
}

/// What the MPI library says of device memory: `Some(true)` if it moves it, `Some(false)` if
/// not, `None` if it has no way to say (not Open MPI, or an Open MPI without the extension).
pub fn library_cuda_support() -> Option<bool> {
    // SAFETY: a query with no arguments; valid once MPI is initialised.
    match unsafe { qwen3_mpi_cuda_support() } {
        1 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// A datatype of `bytes` contiguous bytes: one KV position, so counts and displacements of
/// a whole cache stay small.
pub fn bytes_datatype(bytes: usize) -> Result<UserDatatype> {
    let count = c_int::try_from(bytes)?;
    Ok(UserDatatype::contiguous(count, &u8::equivalent_datatype()))
}

/// Displacements of consecutive variable-count blocks: the running sum of `counts`, starting at 0
/// (the layout `MPI_Allgatherv` and `MPI_Gatherv` receive into).
pub fn packed_displacements(counts: &[c_int]) -> Vec<c_int> {
    counts
        .iter()
        .scan(0, |offset, &count| {
            let at = *offset;
            *offset += count;
            Some(at)
        })
        .collect()
}

fn check(code: c_int, what: &str) -> Result<()> {
    if code != 0 {
        bail!("{what} failed with MPI error code {code}");
    }
    Ok(())
}

/// `MPI_Allgatherv(MPI_IN_PLACE, …, base, counts, displs, unit, comm)`: rank q's contribution
/// already sits at `base + displs[q]` units and lands at the same place on every rank.
///
/// # Safety
/// `base` must address `max(displs[q] + counts[q])` units of `unit` that MPI may read and
/// write (device memory only with a CUDA-aware MPI), valid for the whole call.
pub unsafe fn allgatherv_in_place(
    comm: &SimpleCommunicator,
    base: *mut c_void,
    counts: &[c_int],
    displs: &[c_int],
    unit: &UserDatatype,
) -> Result<()> {
    let code = ffi::MPI_Allgatherv(
        qwen3_mpi_in_place(),
        0,
        unit.as_raw(),
        base,
        counts.as_ptr(),
        displs.as_ptr(),
        unit.as_raw(),
        comm.as_raw(),
    );
    check(code, "MPI_Allgatherv")
}

/// `MPI_Sendrecv` between raw addresses, counts in units of `unit`.
///
/// # Safety
/// `send` must address `send_count` units readable, `recv` `recv_count` units writable, for
/// the whole call (device memory only with a CUDA-aware MPI).
#[allow(clippy::too_many_arguments)]
pub unsafe fn sendrecv(
    comm: &SimpleCommunicator,
    send: *const c_void,
    send_count: c_int,
    dest: c_int,
    recv: *mut c_void,
    recv_count: c_int,
    source: c_int,
    unit: &UserDatatype,
) -> Result<()> {
    let code = ffi::MPI_Sendrecv(
        send,
        send_count,
        unit.as_raw(),
        dest,
        0,
        recv,
        recv_count,
        unit.as_raw(),
        source,
        0,
        comm.as_raw(),
        ffi::RSMPI_STATUS_IGNORE,
    );
    check(code, "MPI_Sendrecv")
}

/// A non-blocking send or receive on a raw address (`isend` / `irecv`), finished by
/// [`RawRequest::test`] or [`RawRequest::wait`]. Dropped while pending (only on the way to
/// ending the job), it is left to MPI, never waited for: its memory must outlive the process's
/// MPI, as the job's buffers do.
pub struct RawRequest {
    request: ffi::MPI_Request,
    done: bool,
}

// SAFETY: an MPI request handle is a plain value; with MPI_THREAD_MULTIPLE any thread may test it.
unsafe impl Send for RawRequest {}

impl RawRequest {
    /// Whether it has finished (never blocks).
    pub fn test(&mut self) -> Result<bool> {
        if !self.done {
            let mut flag: c_int = 0;
            // SAFETY: `request` is a live request of this value (done is false).
            let code = unsafe { ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            check(code, "MPI_Test")?;
            self.done = flag != 0;
        }
        Ok(self.done)
    }

    /// Blocks until it has finished.
    pub fn wait(&mut self) -> Result<()> {
        if !self.done {
            // SAFETY: as in `test`.
            let code = unsafe { ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE) };
            check(code, "MPI_Wait")?;
            self.done = true;
        }
        Ok(())
    }
}

impl Drop for RawRequest {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!("an MPI request on a raw address was dropped before it finished");
        }
    }
}

/// `MPI_Isend` of `bytes` bytes at `address` to `dest` with `tag`.
///
/// # Safety
/// `address` must hold `bytes` readable bytes (device memory only with a CUDA-aware MPI) until
/// the request has finished.
pub unsafe fn isend(
    comm: &SimpleCommunicator,
    address: *const c_void,
    bytes: usize,
    dest: usize,
    tag: c_int,
) -> Result<RawRequest> {
    let (count, peer) = (c_int::try_from(bytes)?, c_int::try_from(dest)?);
    let byte = u8::equivalent_datatype();
    start("MPI_Isend", |request| {
        ffi::MPI_Isend(address, count, byte.as_raw(), peer, tag, comm.as_raw(), request)
    })
}

/// `MPI_Irecv` of `bytes` bytes into `address` from `source` with `tag`.
///
/// # Safety
/// `address` must hold `bytes` writable bytes (device memory only with a CUDA-aware MPI) that
/// nothing else touches until the request has finished.
pub unsafe fn irecv(
    comm: &SimpleCommunicator,
    address: *mut c_void,
    bytes: usize,
    source: usize,
    tag: c_int,
) -> Result<RawRequest> {
    let (count, peer) = (c_int::try_from(bytes)?, c_int::try_from(source)?);
    let byte = u8::equivalent_datatype();
    start("MPI_Irecv", |request| {
        ffi::MPI_Irecv(address, count, byte.as_raw(), peer, tag, comm.as_raw(), request)
    })
}

/// A request that `call` starts (writing its handle), or the error it returned.
unsafe fn start(what: &str, call: impl FnOnce(*mut ffi::MPI_Request) -> c_int) -> Result<RawRequest> {
    let mut request = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
    check(call(request.as_mut_ptr()), what)?;
    Ok(RawRequest {
        // SAFETY: the call succeeded, so it wrote the handle
        request: unsafe { request.assume_init() },
        done: false,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn displacements_are_running_sums() {
        assert_eq!(super::packed_displacements(&[3, 0, 5, 2]), vec![0, 3, 3, 8]);
        assert!(super::packed_displacements(&[]).is_empty());
    }
}
