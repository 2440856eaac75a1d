//! Command line: what a user types, parsed and checked.

pub mod args;
pub mod environment;
pub mod logging;
pub mod predict;
pub mod trace_tool;

pub use args::{Action, Cli, Command, RunArgs, TraceCommand};
