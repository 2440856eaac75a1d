//! `qwen3-mpi trace …`: tools over finished trace files; no MPI.

use anyhow::{Context, Result};

use super::args::TraceCommand;
use crate::trace::perfetto::perfetto_json;
use crate::trace::read::TraceView;
use crate::trace::summary_table::summary_table;

pub fn run_trace_tool(command: &TraceCommand) -> Result<()> {
    match command {
        TraceCommand::Summary { files } => {
            let traces = files
                .iter()
                .map(|f| TraceView::open(f))
                .collect::<Result<Vec<_>>>()?;
            print!("{}", summary_table(&traces));
        }
        TraceCommand::Perfetto { file, output } => {
            let trace = TraceView::open(file)?;
            let json = serde_json::to_string(&perfetto_json(&trace))?;
            std::fs::write(output, json).with_context(|| format!("-o {}: cannot write", output.display()))?;
        }
    }
    Ok(())
}
