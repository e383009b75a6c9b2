//! Drop-in command lines: ferry invoked as `slirp4netns`, `gvproxy` or
//! `virtiofsd` (through a link or a copy with that name).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Slirp4netns,
    Gvproxy,
    Virtiofsd,
}

/// The tool named by argv[0]'s file name, if it is one we stand in for.
pub fn tool_for_argv0(argv0: &OsString) -> Option<Tool> {
    match Path::new(argv0).file_name()?.to_str()? {
        "slirp4netns" => Some(Tool::Slirp4netns),
        "gvproxy" => Some(Tool::Gvproxy),
        "virtiofsd" => Some(Tool::Virtiofsd),
        _ => None,
    }
}

pub fn run(tool: Tool, _args: &[OsString]) -> ExitCode {
    let (name, missing) = match tool {
        Tool::Slirp4netns => ("slirp4netns", "the slirp4netns front end (issue 4)"),
        Tool::Gvproxy => ("gvproxy", "the gvproxy front end (issue 4)"),
        Tool::Virtiofsd => ("virtiofsd", "the virtiofsd front end (issue 6)"),
    };
    super::placeholder::not_implemented(&format!("ferry as {name}"), missing)
}
