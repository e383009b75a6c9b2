//! Drop-in command lines: ferry invoked as `slirp4netns`, `gvproxy` or
//! `virtiofsd` (through a link or a copy with that name).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

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

/// Entry from argv[0]: sets up logging, then runs the tool.
pub fn run(tool: Tool, args: &[OsString]) -> ExitCode {
    match tool {
        // These configure their own logging (-debug/-log-file, --log-level/-d).
        Tool::Gvproxy => return super::gvproxy::run(args),
        Tool::Virtiofsd => return super::fs::run(args, false),
        Tool::Slirp4netns => {}
    }
    crate::logging::init(&crate::logging::LogOptions::default());
    run_after_logging(tool, args)
}

/// Entry from `ferry slirp4netns|gvproxy ...`, where logging is set up.
pub fn run_after_logging(tool: Tool, args: &[OsString]) -> ExitCode {
    match tool {
        Tool::Slirp4netns => run_slirp4netns(args),
        Tool::Gvproxy => super::gvproxy::run(args),
        Tool::Virtiofsd => super::fs::run(args, true),
    }
}

fn run_slirp4netns(args: &[OsString]) -> ExitCode {
    let argv = std::iter::once(OsString::from("slirp4netns")).chain(args.iter().cloned());
    let parsed = match super::slirp::SlirpArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1));
        }
    };
    match super::slirp::run(parsed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slirp4netns (ferry): error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The first address of `family` on interface `name` (drop-ins accept an
/// interface name where an address is expected, e.g. `--outbound-addr=eth0`).
pub fn interface_address(name: &str, v6: bool) -> Option<std::net::IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs(3) fills `list`, freed below with freeifaddrs(3).
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs; its name is a NUL-terminated string and its
        // address, when non-null, a sockaddr of the family it says.
        unsafe {
            let ifa = &*cur;
            let this = std::ffi::CStr::from_ptr(ifa.ifa_name).to_str().unwrap_or("");
            if this == name && !ifa.ifa_addr.is_null() {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET if !v6 => {
                        let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
                    }
                    libc::AF_INET6 if v6 => {
                        let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        found = Some(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}
