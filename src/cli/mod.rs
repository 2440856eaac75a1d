//! Command line: what a user types, parsed and checked.

pub mod args;
pub mod logging;

pub use args::{Cli, Command, RunArgs};
