//! The transport layer's environment overrides, as values: parsed once at setup by
//! `cli::environment` (with the command line, on every rank) and handed down, so that no
//! transport reads the environment itself and a bad value ends the job before anything runs.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

/// `QWEN3_MPI_CUDA_AWARE=1|0`: whether MPI can move device memory, over the library's answer.
pub const CUDA_AWARE_ENV: &str = "QWEN3_MPI_CUDA_AWARE";
/// `QWEN3_MPI_HOST_PATH=mpi|window`: the allgather over `--transport host` through MPI's own
/// allgather (staged on a GPU, one `MPI_Allgatherv` on the CPU) or through a node-shared MPI
/// window (an error where it cannot run). Unset: the window when every rank is on one node.
pub const HOST_PATH_ENV: &str = "QWEN3_MPI_HOST_PATH";
/// `QWEN3_MPI_STAGE_PIECE_BYTES=N`: bytes per rank of one piece of the staged host allgather.
pub const STAGE_PIECE_ENV: &str = "QWEN3_MPI_STAGE_PIECE_BYTES";
/// `QWEN3_MPI_PROGRESS_POLL_US=N`: microseconds the MPI progress thread sleeps between probes
/// (0: never sleeps).
pub const PROGRESS_POLL_ENV: &str = "QWEN3_MPI_PROGRESS_POLL_US";

/// Bytes per rank per piece of the staged host allgather, unless overridden.
pub const DEFAULT_STAGE_PIECE_BYTES: usize = 1 << 20;

/// What `QWEN3_MPI_HOST_PATH` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPath {
    Mpi,
    Window,
}

/// Every transport override (`None`: not set, the built-in choice).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TransportSettings {
    pub cuda_aware: Option<bool>,
    pub host_path: Option<HostPath>,
    pub stage_piece_bytes: Option<usize>,
    pub progress_poll: Option<Duration>,
}

impl TransportSettings {
    /// From the variables `get` returns (the process environment at setup); each bad value is
    /// an error naming the variable and what it takes.
    pub fn parse(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        Ok(Self {
            cuda_aware: get(CUDA_AWARE_ENV)
                .map(|v| parse_switch(CUDA_AWARE_ENV, &v))
                .transpose()?,
            host_path: match get(HOST_PATH_ENV).as_deref() {
                None | Some("") => None,
                Some("mpi") => Some(HostPath::Mpi),
                Some("window") => Some(HostPath::Window),
                Some(other) => bail!("{HOST_PATH_ENV}={other}: expected `mpi` or `window`"),
            },
            stage_piece_bytes: get(STAGE_PIECE_ENV)
                .map(|v| match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(anyhow!("{STAGE_PIECE_ENV}={v}: expected a byte count above 0")),
                })
                .transpose()?,
            progress_poll: get(PROGRESS_POLL_ENV)
                .map(|v| {
                    v.parse()
                        .map(Duration::from_micros)
                        .map_err(|_| anyhow!("{PROGRESS_POLL_ENV}={v}: expected microseconds"))
                })
                .transpose()?,
        })
    }

    /// Bytes per rank of one piece of the staged host allgather.
    pub fn stage_piece_bytes(&self) -> usize {
        self.stage_piece_bytes.unwrap_or(DEFAULT_STAGE_PIECE_BYTES)
    }
}

/// `1|yes|true` or `0|no|false`.
fn parse_switch(name: &str, value: &str) -> Result<bool> {
    match value {
        "1" | "yes" | "true" => Ok(true),
        "0" | "no" | "false" => Ok(false),
        other => bail!("{name}={other}: expected 1 or 0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<TransportSettings> {
        TransportSettings::parse(&|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn unset_variables_leave_the_built_in_choices() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings, TransportSettings::default());
        assert_eq!(settings.stage_piece_bytes(), DEFAULT_STAGE_PIECE_BYTES);
    }

    #[test]
    fn each_variable_is_parsed_into_its_value() {
        let settings = parse(&[
            (CUDA_AWARE_ENV, "0"),
            (HOST_PATH_ENV, "window"),
            (STAGE_PIECE_ENV, "4096"),
            (PROGRESS_POLL_ENV, "0"),
        ])
        .unwrap();
        assert_eq!(settings.cuda_aware, Some(false));
        assert_eq!(settings.host_path, Some(HostPath::Window));
        assert_eq!(settings.stage_piece_bytes(), 4096);
        assert_eq!(settings.progress_poll, Some(Duration::ZERO));
        assert_eq!(
            parse(&[(HOST_PATH_ENV, "mpi")]).unwrap().host_path,
            Some(HostPath::Mpi)
        );
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_variable() {
        for (name, value) in [
            (CUDA_AWARE_ENV, "maybe"),
            (HOST_PATH_ENV, "shm"),
            (STAGE_PIECE_ENV, "1MiB"),
            (STAGE_PIECE_ENV, "0"),
            (PROGRESS_POLL_ENV, "-5"),
        ] {
            let error = parse(&[(name, value)]).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{name}={value}: expected")), "{error}");
        }
    }
}
