use std::process::ExitCode;

use clap::Parser;
use qwen3_mpi::cli::Cli;

fn main() -> ExitCode {
    let args = Cli::parse().into_run_args();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match qwen3_mpi::run::run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("qwen3-mpi: error: cannot write the JSON report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qwen3-mpi: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
