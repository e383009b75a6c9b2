//! `ferry`: userspace networking and file sharing for VMs and containers.
//! This file only parses the command line, sets up logging and dispatches.

mod cli;
mod logging;
mod sshfwd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Multi-call: invoked through a link named after a tool we replace.
    if let Some(tool) = args.first().and_then(cli::compat::tool_for_argv0) {
        // Each front end sets up logging itself (gvproxy has -debug/-log-file).
        return cli::compat::run(tool, &args[1..]);
    }
    let cli = cli::Cli::parse_from(args);
    logging::init(&cli.log);
    match cli::dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ferry: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
