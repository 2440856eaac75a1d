//! `qwen3-mpi`: parse the command line, start MPI, run the job, report.
//!
//! Exit codes: 0 success; 1 an error (printed as one line); 2 a command-line error; 3 the
//! watchdog ended a job stuck in an MPI call (see README).

use std::process::ExitCode;

use qwen3_mpi::cli::trace_tool::run_trace_tool;
use qwen3_mpi::cli::{Action, Cli};
use qwen3_mpi::job::failure::JobError;
use qwen3_mpi::job::run_job;
use qwen3_mpi::transport::mpi_env::{launcher_rank, MpiEnv};

fn main() -> ExitCode {
    let args = match Cli::parse_command_line().map(Cli::into_action) {
        Ok(Action::Run(args)) => args,
        Ok(Action::BenchComm(args)) => return bench_comm(&args),
        Ok(Action::BenchAttention(args)) => return bench_attention(&args),
        Ok(Action::Predict(args)) => {
            return match qwen3_mpi::cli::predict::predict_table(&args) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    qwen3_mpi::eprint_line!("qwen3-mpi: error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Action::Trace(command)) => {
            return match run_trace_tool(&command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    qwen3_mpi::eprint_line!("qwen3-mpi: error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            // Every rank parses the same line: only rank 0 prints the message.
            match e.use_stderr() {
                true if launcher_rank() == 0 => print_usage_error(&e),
                true => {}
                false => {
                    let _ = e.print(); // --help, --version
                }
            }
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let env = match start_mpi() {
        Ok(env) => env,
        Err(code) => return code,
    };
    match run_job(&args, &env) {
        Ok(report) => {
            if env.rank == 0 {
                print!("{}", report.summary());
                if args.json {
                    match serde_json::to_string(&report) {
                        Ok(line) => println!("{line}"),
                        Err(e) => {
                            qwen3_mpi::eprint_line!("qwen3-mpi: error: cannot write the JSON report: {e}")
                        }
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(JobError::Failed { error, report }) => {
            if report {
                if env.size > 1 {
                    qwen3_mpi::eprint_line!("qwen3-mpi: error: rank {}: {error:#}", env.rank);
                } else {
                    qwen3_mpi::eprint_line!("qwen3-mpi: error: {error:#}");
                }
            }
            ExitCode::FAILURE
        }
        Err(JobError::PeerFailed(_)) => ExitCode::FAILURE,
        Err(JobError::Fatal(error)) => {
            qwen3_mpi::eprint_line!("qwen3-mpi: error: rank {}: {error:#}", env.rank);
            ExitCode::FAILURE
        }
    }
}

/// `qwen3-mpi bench-comm`: any error ends every rank (peers may be inside a collective).
fn bench_comm(args: &qwen3_mpi::bench::comm::CommBenchArgs) -> ExitCode {
    let env = match start_mpi() {
        Ok(env) => env,
        Err(code) => return code,
    };
    match qwen3_mpi::bench::comm::run_comm_bench(args, &env) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            qwen3_mpi::eprint_line!("qwen3-mpi: error: rank {}: bench-comm: {e:#}", env.rank);
            env.abort(1)
        }
    }
}

/// `qwen3-mpi bench-attention`: one process, one GPU, no MPI.
fn bench_attention(args: &qwen3_mpi::bench::attention::AttentionBenchArgs) -> ExitCode {
    qwen3_mpi::cli::logging::init_logging();
    match qwen3_mpi::bench::attention::run_attention_bench(args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            qwen3_mpi::eprint_line!("qwen3-mpi: error: bench-attention: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logging, then MPI; a failure is one line naming the rank the launcher gave.
fn start_mpi() -> Result<MpiEnv, ExitCode> {
    qwen3_mpi::cli::logging::init_logging();
    match MpiEnv::init() {
        Ok(env) => {
            qwen3_mpi::cli::logging::set_log_rank(env.rank);
            // a panic on any thread of any rank ends the whole job, not just its thread; so do
            // an MPI error and a checkpoint file cut while mapped (SIGBUS; installed after
            // MPI_Init, which sets a SIGBUS handler of its own), with a line naming the rank and
            // the trace marked
            qwen3_mpi::job::failure::install_panic_hook(env.rank);
            let routed = qwen3_mpi::job::failure::route_mpi_errors(env.rank)
                .and_then(|_| qwen3_mpi::job::failure::route_bus_errors(env.rank));
            if let Err(e) = routed {
                qwen3_mpi::eprint_line!("qwen3-mpi: error: rank {}: {e:#}", env.rank);
                return Err(ExitCode::FAILURE);
            }
            Ok(env)
        }
        Err(e) => {
            qwen3_mpi::eprint_line!("qwen3-mpi: error: rank {}: {e:#}", launcher_rank());
            Err(ExitCode::FAILURE)
        }
    }
}

/// clap's usage error in one write: clap writes it in pieces, and under `mpirun` the
/// launcher's own lines (its banner for a rank that exited non-zero) could land between them.
fn print_usage_error(e: &clap::Error) {
    use std::io::{IsTerminal as _, Write as _};
    let mut stderr = std::io::stderr().lock();
    let text = match stderr.is_terminal() {
        true => e.render().ansi().to_string(),
        false => e.render().to_string(),
    };
    let _ = stderr.write_all(text.as_bytes());
}
