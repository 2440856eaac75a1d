//! An MPI-3 shared-memory window over the ranks of one node: the thin unsafe layer under the
//! KV transport in `sync/shared_window.rs`. The `mpi` crate (rsmpi 0.8) has no one-sided API
//! and no shared windows, so `MPI_Comm_split_type`, `MPI_Win_allocate_shared`,
//! `MPI_Win_shared_query`, `MPI_Win_lock_all`, `MPI_Win_sync`, `MPI_Win_unlock_all` and
//! `MPI_Win_free` are called here through `mpi::ffi`; everything above uses [`SharedWindow`].
//!
//! **Slots.** Each rank's segment holds two slots of `slot_bytes`: slot set 0 and slot set 1.
//! Exchange round `k` uses set `k mod 2`: a rank writes its own slot of that set, every rank
//! meets at one node barrier, then every rank reads every slot of that set.
//!
//! **Why one barrier per round suffices.** A rank writes its slot of set `s` only before it
//! enters the barrier of round `k`, and reads the others' slots of `s` only after it leaves that
//! barrier and before it enters the barrier of round `k + 1`. Its next write to set `s` is in
//! round `k + 2`, after it has left the barrier of round `k + 1`, which no rank leaves before every
//! rank has entered it, so every rank has finished reading set `s` of round `k`. With a single
//! slot set, a second barrier per round would be needed before a slot could be overwritten.
//!
//! **Memory model.** The window lives in one passive-target epoch (`MPI_Win_lock_all` at
//! allocation, `MPI_Win_unlock_all` before it is freed). Each round follows the MPI-3 unified
//! model's recipe for direct loads and stores: the writer's `MPI_Win_sync`, the barrier, the
//! reader's `MPI_Win_sync`.

use std::os::raw::{c_int, c_void};
use std::ptr;

use anyhow::{bail, ensure, Context, Result};
use mpi::ffi;
use mpi::raw::{AsRaw, FromRaw};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

fn check(code: c_int, what: &str) -> Result<()> {
    if code != 0 {
        bail!("{what} failed with MPI error code {code}");
    }
    Ok(())
}

/// The ranks of `comm` that share memory with this one (`MPI_Comm_split_type` with
/// `MPI_COMM_TYPE_SHARED`, ordered by rank in `comm`), as a communicator. Collective over `comm`.
pub fn node_communicator(comm: &SimpleCommunicator) -> Result<SimpleCommunicator> {
    // SAFETY: an out-pointer to a local handle; `comm` is a live communicator.
    let mut node = unsafe { ffi::RSMPI_COMM_NULL };
    check(
        unsafe {
            ffi::MPI_Comm_split_type(
                comm.as_raw(),
                ffi::RSMPI_COMM_TYPE_SHARED,
                comm.rank(),
                ffi::RSMPI_INFO_NULL,
                &mut node,
            )
        },
        "MPI_Comm_split_type",
    )?;
    ensure!(
        node != unsafe { ffi::RSMPI_COMM_NULL },
        "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) gave no communicator"
    );
    // SAFETY: a new, live intra-communicator that only this value will use (and free).
    Ok(unsafe { SimpleCommunicator::from_raw(node) })
}

/// Bytes of a memory page (the unit of page-locking).
pub fn page_bytes() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// Bytes free where Open MPI puts shared windows' backing files (`OMPI_MCA_osc_sm_backing_directory`,
/// else `/dev/shm`), if that directory can be asked; Open MPI refuses a window larger than that.
pub fn backing_store_free() -> Option<(String, u64)> {
    let dir = std::env::var("OMPI_MCA_osc_sm_backing_directory").unwrap_or_else(|_| "/dev/shm".into());
    let path = std::ffi::CString::new(dir.clone()).ok()?;
    // SAFETY: a NUL-terminated path and an out-struct that statvfs fills on success.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some((dir, stat.f_bavail as u64 * stat.f_frsize as u64))
}

/// A window of two slots per rank in memory every rank of one node maps (see the module doc).
pub struct SharedWindow {
    win: ffi::MPI_Win,
    node: SimpleCommunicator,
    /// Every rank's segment (two slots) as mapped in this process, by node rank.
    segments: Vec<*mut u8>,
    slot_bytes: usize,
    rounds: u64,
    /// An exchange stopped midway (its fill or drain failed): the slot protocol no longer holds.
    broken: bool,
    freed: bool,
}

// SAFETY: the window and communicator handles are opaque MPI objects usable from any thread
// at MPI_THREAD_MULTIPLE (the job requires it); the segments are process-wide mappings. The
// value is used by one thread at a time (`&mut self` for every exchange).
unsafe impl Send for SharedWindow {}

impl SharedWindow {
    /// Allocates two slots of `slot_bytes` per rank of `node` and opens the access epoch.
    /// Collective over `node`; every rank passes the same `slot_bytes`.
    pub fn allocate(node: SimpleCommunicator, slot_bytes: usize) -> Result<Self> {
        let segment_bytes = slot_bytes.checked_mul(2).context("shared window too large")?;
        let size = ffi::MPI_Aint::try_from(segment_bytes).context("shared window too large")?;
        let mut base: *mut u8 = ptr::null_mut();
        // SAFETY: `baseptr` is an out-pointer to a pointer (as the standard specifies it);
        // `win` an out-handle; `node` is live. Collective over `node`.
        let mut win = unsafe { ffi::RSMPI_WIN_NULL };
        check(
            unsafe {
                ffi::MPI_Win_allocate_shared(
                    size,
                    1,
                    ffi::RSMPI_INFO_NULL,
                    node.as_raw(),
                    &mut base as *mut *mut u8 as *mut c_void,
                    &mut win,
                )
            },
            "MPI_Win_allocate_shared",
        )?;
        let mut window = Self {
            win,
            node,
            segments: Vec::new(),
            slot_bytes,
            rounds: 0,
            broken: false,
            freed: false,
        };
        // SAFETY: `win` was just allocated; assert 0 (no exclusive lock is ever taken).
        check(
            unsafe { ffi::MPI_Win_lock_all(0, window.win) },
            "MPI_Win_lock_all",
        )?;
        for q in 0..window.node.size() {
            let (mut bytes, mut unit, mut at): (ffi::MPI_Aint, c_int, *mut u8) = (0, 0, ptr::null_mut());
            // SAFETY: out-pointers to locals (`baseptr` again a pointer to a pointer).
            check(
                unsafe {
                    ffi::MPI_Win_shared_query(
                        window.win,
                        q,
                        &mut bytes,
                        &mut unit,
                        &mut at as *mut *mut u8 as *mut c_void,
                    )
                },
                "MPI_Win_shared_query",
            )?;
            ensure!(
                !at.is_null() && usize::try_from(bytes).is_ok_and(|b| b >= segment_bytes),
                "MPI_Win_shared_query: rank {q} has {bytes} bytes at {at:?}, expected {segment_bytes}"
            );
            window.segments.push(at);
        }
        // Touch this rank's pages now, not in the first timed exchange.
        // SAFETY: this rank's own segment, `segment_bytes` long, read by no rank before the
        // first exchange's barrier.
        unsafe { ptr::write_bytes(window.segments[window.node.rank() as usize], 0, segment_bytes) };
        Ok(window)
    }

    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Ranks of the node (the window's communicator).
    pub fn ranks(&self) -> usize {
        self.segments.len()
    }

    /// The address range of this process that holds every rank's segment (one mapping with
    /// MPI's default contiguous allocation), for page-locking it: (start, bytes).
    pub fn span(&self) -> (*mut u8, usize) {
        let start = self.segments.iter().copied().min().unwrap_or(ptr::null_mut());
        let end = self
            .segments
            .iter()
            .map(|&s| s as usize + 2 * self.slot_bytes)
            .max();
        (start, end.map_or(0, |e| e - start as usize))
    }

    fn slot(&self, rank: usize, set: usize) -> *mut u8 {
        // in bounds: `segments[rank]` addresses two slots (checked at allocation)
        self.segments[rank].wrapping_add(set * self.slot_bytes)
    }

    fn sync(&self) -> Result<()> {
        // SAFETY: a live window inside its lock_all epoch.
        check(unsafe { ffi::MPI_Win_sync(self.win) }, "MPI_Win_sync")
    }

    /// One round of the slot protocol: `fill` writes this rank's slot; after the node barrier
    /// `drain` reads every rank's slot (index = node rank, its own included). Collective over
    /// the node: every rank calls it in the same order, with data or without. Whatever `drain`
    /// starts on the slots (an asynchronous copy) must be complete when it returns.
    pub fn exchange(
        &mut self,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
        drain: impl FnOnce(&[&[u8]]) -> Result<()>,
    ) -> Result<()> {
        ensure!(
            !self.freed && !self.broken,
            "the shared window is unusable (freed, or an exchange failed midway)"
        );
        self.broken = true; // until this round completes
        let set = (self.rounds % 2) as usize;
        let me = self.node.rank() as usize;
        // SAFETY: this rank's slot of `set`; no rank reads it now (module doc: the round that last
        // used it ended for every rank at the barrier of the round before this one).
        fill(unsafe { std::slice::from_raw_parts_mut(self.slot(me, set), self.slot_bytes) })?;
        self.sync()?;
        self.node.barrier();
        self.sync()?;
        // SAFETY: every slot of `set` was written before the barrier, and no rank writes one again
        // before this rank has entered the next round's barrier, after `drain` returns.
        let slots: Vec<&[u8]> = (0..self.ranks())
            .map(|q| unsafe { std::slice::from_raw_parts(self.slot(q, set) as *const u8, self.slot_bytes) })
            .collect();
        drain(&slots)?;
        self.rounds += 1;
        self.broken = false;
        Ok(())
    }

    /// Closes the epoch and frees the window. Collective over the node; before MPI finalises.
    pub fn free(mut self) -> Result<()> {
        self.freed = true;
        // SAFETY: a live window in its epoch; no slot is used after this (`self` is consumed).
        check(unsafe { ffi::MPI_Win_unlock_all(self.win) }, "MPI_Win_unlock_all")?;
        check(unsafe { ffi::MPI_Win_free(&mut self.win) }, "MPI_Win_free")
    }
}

impl Drop for SharedWindow {
    fn drop(&mut self) {
        // MPI_Win_free is collective: a drop on an error path must not wait for peers that may
        // never come, so an unfreed window is left to MPI_Abort or the end of the process.
        if !self.freed {
            tracing::debug!("a shared window was dropped without being freed");
        }
    }
}
