//! No KV sync (`--decode pipeline`): each rank keeps only its own layers' K/V, so a prefill
//! without sync calls runs on this transport, which moves nothing and is never asked to.

use anyhow::{bail, Result};

use super::{KvTransport, SyncStats};
use crate::schedule::KvSyncCall;

pub struct SkippedSync;

impl KvTransport for SkippedSync {
    fn name(&self) -> &'static str {
        "none"
    }

    fn run_call(&mut self, call: &KvSyncCall, _: &mut SyncStats) -> Result<()> {
        bail!(
            "internal: KV sync call of step {} with the KV sync skipped (--decode pipeline)",
            call.step
        )
    }
}
