//! Fault injection for the failure tests: `QWEN3_MPI_FAULT=<action>@<rank>:<phase>:<step>`
//! makes rank `<rank>` fail at step `<step>` of `<phase>` (`prefill` or `decode`; `load`: right
//! after the rank maps its `<step>`-th checkpoint file, counted from 0, before reading it).
//! Actions: `error` (an ordinary error), `panic` (a Rust panic, as a bug would),
//! `kill` (SIGKILL itself), `stall` (SIGSTOP itself),
//! `diverge` (decode only: this rank's token of that step is altered before the cross-rank
//! check, as if it had computed a different one),
//! `truncate` (load only: the file just mapped is truncated to 0 bytes, as if it were cut or
//! replaced on disk while the job loads it; reading it then raises SIGBUS).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::model::weights::AfterMap;

pub const FAULT_ENV: &str = "QWEN3_MPI_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    Error,
    Panic,
    Kill,
    Stall,
    Diverge,
    Truncate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Load,
    Prefill,
    Decode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    action: FaultAction,
    rank: usize,
    phase: Phase,
    step: usize,
}

impl Fault {
    pub fn parse(text: &str) -> Result<Self> {
        let malformed = || {
            anyhow::anyhow!(
                "{FAULT_ENV}={text}: expected <error|panic|kill|stall|diverge|truncate>@<rank>:<load|prefill|decode>:<step> (truncate at load only)"
            )
        };
        let (action, rest) = text.split_once('@').ok_or_else(malformed)?;
        let mut fields = rest.split(':');
        let (Some(rank), Some(phase), Some(step), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed());
        };
        let fault = Self {
            action: match action {
                "error" => FaultAction::Error,
                "panic" => FaultAction::Panic,
                "kill" => FaultAction::Kill,
                "stall" => FaultAction::Stall,
                "diverge" => FaultAction::Diverge,
                "truncate" => FaultAction::Truncate,
                _ => return Err(malformed()),
            },
            rank: rank.parse().map_err(|_| malformed())?,
            phase: match phase {
                "load" => Phase::Load,
                "prefill" => Phase::Prefill,
                "decode" => Phase::Decode,
                _ => return Err(malformed()),
            },
            step: step.parse().map_err(|_| malformed())?,
        };
        if (fault.action == FaultAction::Truncate) != (fault.phase == Phase::Load) {
            return Err(malformed());
        }
        Ok(fault)
    }

    /// The hook a checkpoint calls after mapping each file, for a `load` fault planned on this
    /// rank.
    pub fn after_map(fault: Option<Self>, rank: usize) -> Option<AfterMap> {
        let f = fault.filter(|f| f.phase == Phase::Load && f.rank == rank)?;
        Some(Arc::new(move |path: &Path, mapped_before: usize| {
            if mapped_before != f.step {
                return Ok(());
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| file.set_len(0))
                .with_context(|| format!("{FAULT_ENV}: cannot truncate {}", path.display()))
        }))
    }

    /// Fires if this is the planned rank, phase and step.
    pub fn check(fault: Option<&Self>, rank: usize, phase: Phase, step: usize) -> Result<()> {
        let Some(f) = fault else { return Ok(()) };
        if (f.rank, f.phase, f.step) != (rank, phase, step) {
            return Ok(());
        }
        match f.action {
            FaultAction::Error => bail!("injected fault ({FAULT_ENV}) at {phase:?} step {step}"),
            FaultAction::Panic => panic!("injected panic ({FAULT_ENV}) at {phase:?} step {step}"),
            FaultAction::Kill => raise(libc::SIGKILL),
            FaultAction::Stall => raise(libc::SIGSTOP),
            FaultAction::Diverge | FaultAction::Truncate => {}
        }
        Ok(())
    }

    /// `generated` as this rank reports it to the cross-rank check: with a `diverge` fault
    /// planned here, its token at the fault's decode step is altered.
    pub fn as_checked(fault: Option<&Self>, rank: usize, generated: &[u32]) -> Vec<u32> {
        let mut ids = generated.to_vec();
        if let Some(f) = fault.filter(|f| f.action == FaultAction::Diverge && f.rank == rank) {
            if let Some(id) = ids.get_mut(f.step) {
                *id ^= 1;
            }
        }
        ids
    }
}

fn raise(signal: libc::c_int) {
    // SAFETY: sends a signal to this process; no memory is touched.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let f = Fault::parse("kill@2:decode:3").unwrap();
        assert_eq!(
            f,
            Fault {
                action: FaultAction::Kill,
                rank: 2,
                phase: Phase::Decode,
                step: 3
            }
        );
        assert!(Fault::parse("kill@2:decode").is_err());
        assert!(Fault::parse("boom@1:prefill:0").is_err());
        assert!(Fault::parse("truncate@1:prefill:0").is_err());
        assert!(Fault::parse("error@1:load:0").is_err());
        assert!(Fault::parse("truncate@1:load:0").is_ok());
        assert!(Fault::check(
            Some(&Fault::parse("error@1:prefill:2").unwrap()),
            1,
            Phase::Prefill,
            2
        )
        .is_err());
        assert!(Fault::check(
            Some(&Fault::parse("error@1:prefill:2").unwrap()),
            0,
            Phase::Prefill,
            2
        )
        .is_ok());
    }
}
