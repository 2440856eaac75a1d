//! SIGBUS on a memory-mapped checkpoint file (truncated on disk while the job reads it) turned
//! into one line naming the file and the job's ordinary ending, instead of a rank dying with no
//! word. The crate's one place of signal FFI: a registry of mapped files and the handler.
//!
//! The handler does only what is async-signal-safe: atomic loads of the registry, copies into
//! a buffer on its stack, `write(2)`, `nanosleep(2)`, `_exit(2)`. It cannot finish the trace
//! or call MPI itself (neither is safe inside a handler), so it writes the preformatted line to
//! stderr and hands it through a pipe to a thread started at install time, which ends the job
//! in normal context as every other failure does (`job::failure::end_job`: rank 0 finishes its
//! trace, another rank sends its line to rank 0 first, then `MPI_Abort`). Meanwhile the
//! faulting thread stays parked in the handler. It faults while copying a tensor's bytes, which
//! happens outside every lock of ours, so the ending never waits on it; should the ending not
//! end the process within [`PARK_SECONDS`] (a lock held elsewhere, a wedged MPI), the handler
//! ends it with `_exit(1)` and the trace stays an unfinished `.partial`. (On a GPU the CUDA
//! driver may be what reads the bytes, holding its own locks while parked: our ending calls no
//! CUDA, and should a CUDA-aware MPI's abort wait on one, the deadline ends the process.)
//!
//! A SIGBUS at an address outside every registered file is not ours: the handler puts back the
//! action that was installed before it (Open MPI's, or the default) and returns, so the access
//! faults again under that action.

use std::ffi::c_void;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use anyhow::{bail, Result};

/// What ends the job once a line has been printed; the line names the rank and the file.
pub type BusErrorAction = fn(&str) -> !;

/// The most files registered at once (a dense Qwen3 has at most a few dozen shards).
const SLOTS: usize = 256;
/// Longest line written (one atomic pipe write: at most PIPE_BUF, 4096 bytes on Linux).
const LINE_MAX: usize = 4000;
/// How long the faulting thread waits for the job to end before ending the process itself.
pub const PARK_SECONDS: u32 = 15;
const ERROR_PREFIX: &[u8] = b"qwen3-mpi: error: ";
const TRUNCATED: &[u8] =
    b": bus error (SIGBUS) reading this memory-mapped checkpoint file: it was truncated or replaced on disk while the job loaded it";

/// One mapped file: its address range and its path, as the handler prints it.
struct Mapping {
    start: usize,
    len: usize,
    path: Box<[u8]>,
}

static MAPPINGS: [AtomicPtr<Mapping>; SLOTS] = [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS];

/// What the handler needs, made at install time.
struct Installed {
    /// `rank R: `
    rank_prefix: Box<[u8]>,
    /// Write end of the pipe to the ending thread.
    pipe: libc::c_int,
    /// The SIGBUS action before ours, put back for faults that are not ours.
    previous: libc::sigaction,
}

static INSTALLED: AtomicPtr<Installed> = AtomicPtr::new(ptr::null_mut());
static FIRED: AtomicBool = AtomicBool::new(false);

/// A file's mapping known to the handler; forgotten when dropped (drop it before unmapping).
pub struct Registration {
    slot: Option<usize>,
}

/// Makes a SIGBUS inside `len` bytes at `start` print a line naming `path`.
pub fn register(start: *const u8, len: usize, path: &Path) -> Registration {
    let mapping = Box::into_raw(Box::new(Mapping {
        start: start as usize,
        len,
        path: path.display().to_string().into_bytes().into_boxed_slice(),
    }));
    for (slot, entry) in MAPPINGS.iter().enumerate() {
        if entry
            .compare_exchange(ptr::null_mut(), mapping, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return Registration { slot: Some(slot) };
        }
    }
    // every slot taken: a fault in this file gets the previous action (never seen by the handler)
    // SAFETY: `mapping` came from Box::into_raw above and was published nowhere.
    drop(unsafe { Box::from_raw(mapping) });
    Registration { slot: None }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            // The entry is leaked, not freed: a handler on another thread may be reading it.
            MAPPINGS[slot].store(ptr::null_mut(), Ordering::Release);
        }
    }
}

/// Installs the handler (once per process; later calls do nothing): a SIGBUS in a registered
/// file prints `qwen3-mpi: error: rank R: FILE: bus error (SIGBUS) …` and `action` ends the job.
pub fn on_bus_error(rank: usize, action: BusErrorAction) -> Result<()> {
    static ONCE: AtomicBool = AtomicBool::new(false);
    if ONCE.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot make the SIGBUS pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fds[0] is the read end just made, owned by nobody else.
    let reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    std::thread::Builder::new()
        .name("bus-error".into())
        .spawn(move || end_on_line(reader, action))?;
    // SAFETY: sigaction with a null new action only reads the current one into `previous`.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    if unsafe { libc::sigaction(libc::SIGBUS, ptr::null(), &mut previous) } != 0 {
        bail!(
            "cannot read the SIGBUS action: {}",
            std::io::Error::last_os_error()
        );
    }
    let installed = Box::new(Installed {
        rank_prefix: format!("rank {rank}: ").into_bytes().into_boxed_slice(),
        pipe: fds[1],
        previous,
    });
    INSTALLED.store(Box::into_raw(installed), Ordering::Release);
    // SAFETY: `ours` is zeroed then filled: an SA_SIGINFO handler with the signature the
    // kernel calls, an empty mask.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = on_sigbus as *const () as usize;
    ours.sa_flags = libc::SA_SIGINFO;
    unsafe { libc::sigemptyset(&mut ours.sa_mask) };
    if unsafe { libc::sigaction(libc::SIGBUS, &ours, ptr::null_mut()) } != 0 {
        bail!(
            "cannot install the SIGBUS handler: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The ending thread: waits for the handler's line, then ends the job with it.
fn end_on_line(mut reader: std::fs::File, action: BusErrorAction) {
    use std::io::Read;
    let mut line = vec![0u8; LINE_MAX];
    loop {
        match reader.read(&mut line) {
            Ok(0) => return,
            Ok(n) => action(&String::from_utf8_lossy(&line[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// The mapping holding `address`, if any (atomic loads only).
fn find(address: usize) -> Option<&'static Mapping> {
    MAPPINGS.iter().find_map(|entry| {
        let mapping = entry.load(Ordering::Acquire);
        // SAFETY: non-null entries point to Mappings that are never freed.
        let mapping = unsafe { mapping.as_ref() }?;
        (address.wrapping_sub(mapping.start) < mapping.len).then_some(mapping)
    })
}

/// A line built on the stack (no allocation in the handler), cut at [`LINE_MAX`].
struct Line {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let n = text.len().min(LINE_MAX - 1 - self.len); // room kept for the newline
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    // SAFETY: set before the handler was installed, never freed.
    let Some(installed) = (unsafe { INSTALLED.load(Ordering::Acquire).as_ref() }) else {
        return;
    };
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let Some(mapping) = find(address) else {
        // not ours: the previous action handles the fault when the access runs again
        // SAFETY: `previous` is the action read from the kernel at install time.
        unsafe { libc::sigaction(libc::SIGBUS, &installed.previous, ptr::null_mut()) };
        return;
    };
    if !FIRED.swap(true, Ordering::AcqRel) {
        let mut line = Line {
            bytes: [0; LINE_MAX],
            len: 0,
        };
        line.push(ERROR_PREFIX);
        line.push(&installed.rank_prefix);
        line.push(&mapping.path);
        line.push(TRUNCATED);
        let end = line.len;
        line.bytes[end] = b'\n';
        // SAFETY: write(2) of bytes on this stack; async-signal-safe.
        unsafe {
            libc::write(2, line.bytes.as_ptr().cast(), end + 1);
            let body = &line.bytes[ERROR_PREFIX.len()..end];
            libc::write(installed.pipe, body.as_ptr().cast(), body.len());
        }
    }
    // A second faulting thread parks too: the first one's ending ends the process.
    park_then_exit()
}

/// Waits for the ending thread to end the process; ends it after [`PARK_SECONDS`] otherwise.
fn park_then_exit() -> ! {
    let second = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    for _ in 0..PARK_SECONDS {
        // SAFETY: nanosleep(2) with a valid timespec; async-signal-safe.
        unsafe { libc::nanosleep(&second, ptr::null_mut()) };
    }
    // SAFETY: _exit(2) is async-signal-safe and ends the process without running any code.
    unsafe { libc::_exit(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_range_is_found_until_dropped() {
        let bytes = [0u8; 64];
        let registration = register(bytes.as_ptr(), bytes.len(), Path::new("/m/model.safetensors"));
        let start = bytes.as_ptr() as usize;
        let found = find(start + 63).map(|m| m.path.to_vec());
        assert_eq!(found.as_deref(), Some(&b"/m/model.safetensors"[..]));
        assert!(find(start + 64).is_none_or(|m| m.start != start));
        drop(registration);
        assert!(find(start).is_none_or(|m| m.start != start));
    }

    #[test]
    fn a_line_is_cut_to_its_limit_with_room_for_the_newline() {
        let mut line = Line {
            bytes: [0; LINE_MAX],
            len: 0,
        };
        line.push(&[b'x'; LINE_MAX + 10]);
        assert_eq!(line.len, LINE_MAX - 1);
    }
}
