//! The command-line interface: one module per subcommand.

pub mod compat;
mod control;
mod fs;
mod guest;
mod gvproxy;
mod gvproxy_config;
pub mod net;
mod platform;
mod registry;
mod run;
mod share;
pub mod slirp;
mod version;
mod vmm;
mod vms;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::LogOptions;

const EXAMPLES: &str = "\
Examples:
  ferry run -- uname -a                 boot a guest, run a command, return its exit code
  ferry run --name web -e MODE=dev -- sh -c 'hostname; echo $MODE'
  ferry run -d --name web -p 8080:80 -v ./site:/www -- httpd -f -p 80 -h /www
  ferry ps; ferry logs web; ferry exec web -- ls /www; ferry stop web
  ferry guest build                     build (or reuse) the cached guest initramfs
  ferry guest kernel                    show which kernel guests boot
  ferry version

Multi-call: linked or copied as `slirp4netns`, `gvproxy` or `virtiofsd`, ferry
acts as that tool. Documentation: docs/ in the source tree.";

/// Userspace networking and file sharing for virtual machines and containers.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest VM, run a command in it, stream its output and exit with its exit code.
    Run(Box<run::RunArgs>),
    /// List the VMs started by `ferry run` on this host.
    Ps(vms::PsArgs),
    /// Stop running VMs (by name) and forget them.
    Stop(vms::StopArgs),
    /// Print a VM's output (its command's stdout and stderr).
    Logs(vms::LogsArgs),
    /// Run a command in a running VM (through its guest agent).
    Exec(control::ExecArgs),
    /// Run the userspace network (NAT, DHCP, DNS) for a namespace or VM.
    Net(Box<net::NetArgs>),
    /// Serve a host directory to a guest over vhost-user-fs, with virtiofsd's
    /// command line (`ferry fs --help`; also: a link named virtiofsd).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Fs {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Boot a kernel in ferry's built-in VMM (KVM), devices in-process.
    Vmm(vmm::VmmArgs),
    /// Guest image tools: build the initramfs, find the kernel.
    #[command(subcommand)]
    Guest(guest::GuestCommand),
    /// Run as slirp4netns, with its command line (also: invoke ferry through a link named slirp4netns).
    #[command(name = "slirp4netns", disable_help_flag = true, disable_version_flag = true)]
    Slirp4netns {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run as gvproxy, with its command line (also: invoke ferry through a link named gvproxy).
    #[command(name = "gvproxy", disable_help_flag = true, disable_version_flag = true)]
    Gvproxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Print version and build information.
    Version,
}

pub fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run::run(*args),
        Command::Ps(args) => vms::ps(args),
        Command::Stop(args) => vms::stop(args),
        Command::Logs(args) => vms::logs(args),
        Command::Exec(args) => control::exec(args),
        Command::Net(args) => net::run(*args),
        Command::Fs { args } => Ok(fs::run(&args, true)),
        Command::Guest(cmd) => guest::run(cmd),
        Command::Vmm(args) => vmm::run(args),
        Command::Slirp4netns { args } => Ok(compat::run_after_logging(compat::Tool::Slirp4netns, &args)),
        Command::Gvproxy { args } => Ok(compat::run_after_logging(compat::Tool::Gvproxy, &args)),
        Command::Version => {
            version::print();
            Ok(ExitCode::SUCCESS)
        }
    }
}
