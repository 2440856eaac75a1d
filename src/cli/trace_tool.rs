//! `qwen3-mpi trace …`: tools over finished trace files; no MPI.

use anyhow::{Context, Result};

use super::args::TraceCommand;
use crate::trace::cost_report::fit_report;
use crate::trace::perfetto::perfetto_json;
use crate::trace::read::TraceView;
use crate::trace::summary_table::{summary_csv, summary_table};

pub fn run_trace_tool(command: &TraceCommand) -> Result<()> {
    match command {
        TraceCommand::Summary { files, csv } => {
            // every file that reads gets its row; each one that does not, one line on stderr
            let mut traces = Vec::new();
            let mut bad = 0;
            for file in files {
                match TraceView::open(file) {
                    Ok(trace) => traces.push(trace),
                    Err(e) => {
                        crate::eprint_line!("qwen3-mpi: error: {e:#}");
                        bad += 1;
                    }
                }
            }
            if !traces.is_empty() {
                match csv {
                    true => print!("{}", summary_csv(&traces)),
                    false => print!("{}", summary_table(&traces)),
                }
            }
            if bad > 0 {
                anyhow::bail!(
                    "trace summary: {bad} of {} files could not be read (see above)",
                    files.len()
                );
            }
        }
        TraceCommand::FitCost { files, predict } => {
            let open = |files: &[std::path::PathBuf]| {
                files
                    .iter()
                    .map(|f| TraceView::open(f))
                    .collect::<Result<Vec<_>>>()
            };
            print!("{}", fit_report(&open(files)?, &open(predict)?)?);
        }
        TraceCommand::Perfetto { file, output } => {
            let trace = TraceView::open(file)?;
            let json = serde_json::to_string(&perfetto_json(&trace))?;
            std::fs::write(output, json).with_context(|| format!("-o {}: cannot write", output.display()))?;
        }
    }
    Ok(())
}
