//! Log lines (tracing, to stderr) that carry the rank: `[rank 2 +1.234s] INFO …`.

use std::sync::OnceLock;
use std::time::Instant;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

static RANK: OnceLock<usize> = OnceLock::new();

/// Prefixes each line with the rank (known once MPI is up; the launcher's until then) and the
/// seconds since start.
struct RankAndUptime {
    start: Instant,
}

impl FormatTime for RankAndUptime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let rank = RANK
            .get()
            .copied()
            .unwrap_or_else(crate::transport::mpi_env::launcher_rank);
        write!(w, "[rank {rank} +{:.3}s]", self.start.elapsed().as_secs_f64())
    }
}

/// Starts logging at `RUST_LOG` (default: warnings); colours only when stderr is a terminal
/// (a log file or a pipe gets plain text).
pub fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_timer(RankAndUptime {
            start: Instant::now(),
        })
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

/// Records the MPI rank for every later log line.
pub fn set_log_rank(rank: usize) {
    let _ = RANK.set(rank);
}

/// Writes `line` and a newline to stderr in one write, so that lines from several ranks (which
/// mpirun forwards as they come) never interleave inside a line. `eprintln!` writes each
/// formatted piece separately. A message with line breaks of its own (HDF5's error stack, its
/// `ctime` timestamps) is joined into one line.
pub fn eprint_line(line: &str) {
    use std::io::Write as _;
    let mut text = one_line(line);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `text` with every run of whitespace that holds a line break made one space.
pub fn one_line(text: &str) -> String {
    if !text.contains(['\n', '\r']) {
        return text.to_owned();
    }
    let mut joined = String::with_capacity(text.len());
    for (i, piece) in text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        if i > 0 {
            joined.push(' ');
        }
        joined.push_str(piece);
    }
    joined
}

/// `eprint_line(&format!(…))`.
#[macro_export]
macro_rules! eprint_line {
    ($($arg:tt)*) => {
        $crate::cli::logging::eprint_line(&format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn hdf5_text_with_line_breaks_becomes_one_line() {
        let hdf5 = "H5Fopen(): file read failed: time = Tue Dec  1 11:19:10 2026\n, filename = 'x.h5'";
        assert_eq!(
            one_line(hdf5),
            "H5Fopen(): file read failed: time = Tue Dec  1 11:19:10 2026 , filename = 'x.h5'"
        );
        assert_eq!(one_line("a  b"), "a  b");
        assert_eq!(one_line("a\r\n\r\n  b\n"), "a b");
    }
}
