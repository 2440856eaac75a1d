//! The watchdog: every blocking MPI wait registers what it waits for; if one lasts longer than
//! `--timeout`, the rank says what it waited on and aborts the whole job.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit code of a job ended by the watchdog.
pub const TIMEOUT_EXIT_CODE: i32 = 3;

/// Ends the job with an exit code and the line the watchdog printed (for the trace).
type AbortFn = Box<dyn Fn(i32, &str) + Send + Sync>;

struct State {
    rank: usize,
    timeout: Duration,
    /// Open waits: (id, what, since).
    waits: Mutex<Vec<(u64, String, Instant)>>,
    next_id: Mutex<u64>,
    abort: AbortFn,
}

#[derive(Clone)]
pub struct Watchdog {
    state: Arc<State>,
}

impl Watchdog {
    /// Starts the watchdog thread. `abort` ends the job (MPI_Abort) and must not return.
    pub fn start(rank: usize, timeout: Duration, abort: AbortFn) -> Self {
        let state = Arc::new(State {
            rank,
            timeout,
            waits: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
            abort,
        });
        let watched = Arc::downgrade(&state);
        let period = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                let Some(state) = watched.upgrade() else { return };
                let expired = state.waits.lock().ok().and_then(|waits| {
                    waits
                        .iter()
                        .find(|(_, _, since)| since.elapsed() > state.timeout)
                        .map(|(_, what, _)| what.clone())
                });
                if let Some(what) = expired {
                    let line = format!(
                        "rank {}: timed out after {:.0} s waiting for {what} (--timeout); aborting the job",
                        state.rank,
                        state.timeout.as_secs_f64()
                    );
                    crate::eprint_line!("qwen3-mpi: error: {line}");
                    (state.abort)(TIMEOUT_EXIT_CODE, &line);
                }
            })
            .expect("the watchdog thread starts");
        Self { state }
    }

    /// Registers a wait until the returned guard is dropped.
    pub fn waiting_for(&self, what: impl Into<String>) -> WaitGuard {
        let id = {
            let mut next = self.state.next_id.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        if let Ok(mut waits) = self.state.waits.lock() {
            waits.push((id, what.into(), Instant::now()));
        }
        WaitGuard {
            state: self.state.clone(),
            id,
        }
    }
}

pub struct WaitGuard {
    state: Arc<State>,
    id: u64,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Ok(mut waits) = self.state.waits.lock() {
            waits.retain(|(id, _, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};

    #[test]
    fn a_wait_past_the_timeout_aborts_with_the_timeout_code() {
        let code = Arc::new(AtomicI32::new(0));
        let seen = code.clone();
        let dog = Watchdog::start(
            2,
            Duration::from_millis(50),
            Box::new(move |c, _| seen.store(c, Ordering::SeqCst)),
        );
        {
            let _quick = dog.waiting_for("a quick wait");
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(code.load(Ordering::SeqCst), 0, "a finished wait must not fire");
        let _slow = dog.waiting_for("a slow wait");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(code.load(Ordering::SeqCst), TIMEOUT_EXIT_CODE);
    }
}
