//! Progress on rank 0's stderr for long runs: prefill chunk k of N with tokens/s and the time to
//! the first token, then decode tokens/s. Where stderr is a terminal, one line is rewritten in
//! place (a carriage return, never ANSI codes) a few times a second, from half a second in.
//! Elsewhere a whole line every 5 s, so short jobs print none (under `mpirun` a rank's stderr
//! is a pipe even when the user watches a terminal, and a log file may hold it);
//! `--progress-every S` sets the rate (0: off). Unless it is given, decode progress is left out
//! where the generated text streams to a terminal (under `mpirun`, rank 0's stdout always is
//! one, a pseudo-terminal), which shows decode's progress itself.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// On a terminal: the first update after this, then one every [`TERMINAL_EVERY`].
const TERMINAL_DELAY: Duration = Duration::from_millis(500);
const TERMINAL_EVERY: Duration = Duration::from_millis(200);
/// Whole lines, unless `--progress-every` says otherwise.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Where progress goes, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sink {
    Off,
    /// stderr is a terminal: one line rewritten in place.
    Terminal {
        decode: bool,
    },
    /// A line every `every`.
    Lines {
        every: Duration,
        decode: bool,
    },
}

pub struct Progress {
    sink: Sink,
    state: Mutex<State>,
}

struct State {
    phase_started: Instant,
    last: Option<Instant>,
    /// Width of the line left on the terminal (to blank it out).
    open_line: usize,
}

impl Progress {
    /// Rank 0's progress (none elsewhere): `every` is `--progress-every` (0: off).
    pub fn for_rank(rank: usize, every: Option<f64>) -> Self {
        // decode progress only where the text does not stream to a terminal
        let decode = !std::io::stdout().is_terminal();
        let sink = match every {
            _ if rank != 0 => Sink::Off,
            Some(s) if s <= 0.0 => Sink::Off,
            // asked for: decode too, wherever the text goes
            Some(s) => Sink::Lines {
                every: Duration::from_secs_f64(s),
                decode: true,
            },
            None if std::io::stderr().is_terminal() => Sink::Terminal { decode },
            None => Sink::Lines {
                every: LINE_EVERY,
                decode,
            },
        };
        Self {
            sink,
            state: Mutex::new(State {
                phase_started: Instant::now(),
                last: None,
                open_line: 0,
            }),
        }
    }

    /// A new phase (a prefill run, the decode) starts its clock now.
    pub fn start_phase(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.phase_started = Instant::now();
            state.last = None;
        }
    }

    /// Rank 0 has passed chunk `done` (counted from 1) of `chunks`, `tokens` prompt tokens in
    /// all; `ranks − 1` more stages follow it.
    pub fn prefill(&self, done: usize, chunks: usize, tokens: usize, total_tokens: usize, ranks: usize) {
        self.report(false, |elapsed| {
            let rate = tokens as f64 / elapsed.max(1e-9);
            // the chunks left, then the pipeline's drain through the other stages
            let left = (chunks - done + ranks - 1) as f64 * elapsed / done.max(1) as f64;
            format!(
                "prefill: rank 0 passed chunk {done} of {chunks} ({tokens} of {total_tokens} tokens, \
                 {rate:.0} tokens/s); first token in about {left:.1} s"
            )
        });
    }

    /// Decode has made `done` of `total` tokens.
    pub fn decode(&self, done: usize, total: usize) {
        self.report(true, |elapsed| {
            format!(
                "decode: token {done} of {total}, {:.1} tokens/s",
                done as f64 / elapsed.max(1e-9)
            )
        });
    }

    /// Blanks a line left on the terminal, before other output.
    pub fn clear(&self) {
        if let Ok(mut state) = self.state.lock() {
            if state.open_line > 0 {
                let blank = format!("\r{:width$}\r", "", width = state.open_line);
                let _ = std::io::stderr().lock().write_all(blank.as_bytes());
                state.open_line = 0;
            }
        }
    }

    fn report(&self, decode: bool, line: impl FnOnce(f64) -> String) {
        let (delay, every) = match self.sink {
            Sink::Off => return,
            Sink::Terminal { decode: false } | Sink::Lines { decode: false, .. } if decode => return,
            Sink::Terminal { .. } => (TERMINAL_DELAY, TERMINAL_EVERY),
            Sink::Lines { every, .. } => (every, every),
        };
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        let due = match state.last {
            None => now.duration_since(state.phase_started) >= delay,
            Some(last) => now.duration_since(last) >= every,
        };
        if !due {
            return;
        }
        state.last = Some(now);
        let text = format!(
            "qwen3-mpi: {}",
            line(now.duration_since(state.phase_started).as_secs_f64())
        );
        let mut stderr = std::io::stderr().lock();
        if matches!(self.sink, Sink::Terminal { .. }) {
            let width = state.open_line.max(text.chars().count());
            let _ = write!(stderr, "\r{text:width$}");
            let _ = stderr.flush();
            state.open_line = width;
        } else {
            let _ = stderr.write_all(format!("{text}\n").as_bytes());
        }
    }
}
