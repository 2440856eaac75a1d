//! The `QWEN3_MPI_*` variables a job reads, parsed once at setup beside the command line: each
//! rank parses its own inside the first setup phase, whose outcome every rank agrees on, so a
//! bad value ends the job with one line naming the variable before anything runs. The model's
//! kernel switches (`QWEN3_MPI_ATTENTION`, `QWEN3_MPI_KV_ALLOC`, …) are read in `src/model/`;
//! the README's table lists every variable.

use anyhow::{bail, Result};

use crate::job::fault::{Fault, FAULT_ENV};
use crate::transport::TransportSettings;

/// `QWEN3_MPI_WEIGHT_LOAD=staged|during|after`: with redundant decode, the layers a rank does
/// not own load in the background during its prefill, on a GPU through page-locked staging
/// buffers on a stream of their own (`model::staged_upload`; the default; each tensor is
/// returned once its copies have landed), through candle's
/// plain upload on the compute stream (`during`: the load before 2026-12-01, whose copies sit
/// between the prefill's kernels; with ranks sharing one H200 it stalled 3 runs of 3 where
/// `staged` stalled none, `results/gpu-check/2026-12-01-session6.md`), or only after the
/// prefill, so that the first prefill runs alone on the device (a clean first-run timing).
/// On the CPU `staged` and `during` are the same load.
pub const WEIGHT_LOAD_ENV: &str = "QWEN3_MPI_WEIGHT_LOAD";

/// When the layers a rank does not own load (`QWEN3_MPI_WEIGHT_LOAD`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightLoad {
    /// In the background, during the first prefill, through candle's upload.
    DuringPrefill,
    /// In the background, on a GPU through staging buffers on a stream of their own.
    #[default]
    StagedDuringPrefill,
    /// After the first prefill.
    AfterPrefill,
}

/// The job's environment overrides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Environment {
    pub transport: TransportSettings,
    /// The fault the failure tests planned (`QWEN3_MPI_FAULT`), if any.
    pub fault: Option<Fault>,
    pub weight_load: WeightLoad,
}

impl Environment {
    /// From this process's environment.
    pub fn read() -> Result<Self> {
        Self::parse(&|name| std::env::var(name).ok())
    }

    /// From the variables `get` returns.
    pub fn parse(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        Ok(Self {
            transport: TransportSettings::parse(get)?,
            fault: get(FAULT_ENV).map(|text| Fault::parse(&text)).transpose()?,
            weight_load: match get(WEIGHT_LOAD_ENV).as_deref() {
                Some("during") => WeightLoad::DuringPrefill,
                None | Some("staged") => WeightLoad::StagedDuringPrefill,
                Some("after") => WeightLoad::AfterPrefill,
                Some(other) => bail!("{WEIGHT_LOAD_ENV}={other}: expected staged, during or after"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_fault_or_transport_value_is_one_error_naming_the_variable() {
        let bad_fault = Environment::parse(&|name| (name == FAULT_ENV).then(|| "oops".to_string()));
        assert!(bad_fault
            .unwrap_err()
            .to_string()
            .starts_with("QWEN3_MPI_FAULT=oops"));
        let bad_poll =
            Environment::parse(&|name| (name == "QWEN3_MPI_PROGRESS_POLL_US").then(|| "x".to_string()));
        assert!(bad_poll
            .unwrap_err()
            .to_string()
            .starts_with("QWEN3_MPI_PROGRESS_POLL_US=x"));
        let bad_load = Environment::parse(&|name| (name == WEIGHT_LOAD_ENV).then(|| "later".to_string()));
        assert!(bad_load
            .unwrap_err()
            .to_string()
            .starts_with("QWEN3_MPI_WEIGHT_LOAD=later"));
        let after = Environment::parse(&|name| (name == WEIGHT_LOAD_ENV).then(|| "after".to_string()));
        assert_eq!(after.unwrap().weight_load, WeightLoad::AfterPrefill);
        let during = Environment::parse(&|name| (name == WEIGHT_LOAD_ENV).then(|| "during".to_string()));
        assert_eq!(during.unwrap().weight_load, WeightLoad::DuringPrefill);
        let none = Environment::parse(&|_| None).unwrap();
        assert!(none.fault.is_none());
        assert_eq!(none.weight_load, WeightLoad::StagedDuringPrefill);
    }
}
