//! Subcommands whose implementation has not landed yet. They say so and
//! fail, rather than pretending to work.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PlaceholderArgs {
    /// Arguments (not interpreted yet).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Exit status for "this is not implemented yet".
const NOT_IMPLEMENTED: u8 = 2;

pub fn not_implemented(what: &str, missing: &str) -> ExitCode {
    eprintln!("ferry: {what} is not implemented yet: {missing} has not landed in this build");
    ExitCode::from(NOT_IMPLEMENTED)
}
