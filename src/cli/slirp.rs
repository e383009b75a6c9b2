//! ferry as `slirp4netns`: the command line podman and rootlesskit pass,
//! mapped onto ferry's network with slirp4netns's address plan (gateway and
//! host loopback .2, DNS .3, guest .100) and its API socket protocol.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use super::net::{DnsArgs, NetArgs};

/// ferry running as slirp4netns: user-mode networking for a network namespace.
#[derive(Debug, Parser)]
#[command(
    name = "slirp4netns",
    version,
    override_usage = "slirp4netns [OPTION]... PID|PATH [TAPNAME]",
    after_help = "Example:\n  slirp4netns --configure --mtu=65520 --disable-host-loopback $(cat /run/ctr.pid) tap0\n\nThis is ferry's slirp4netns front end; see docs/compat.md."
)]
pub struct SlirpArgs {
    /// bring up the interface
    #[arg(short = 'c', long)]
    pub configure: bool,
    /// specify the FD for terminating slirp4netns
    #[arg(short = 'e', long = "exit-fd", value_name = "FD")]
    pub exit_fd: Option<i32>,
    /// specify the FD to write to when the network is configured
    #[arg(short = 'r', long = "ready-fd", value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// specify MTU (default=1500, max=65520)
    #[arg(short = 'm', long, default_value_t = 1500)]
    pub mtu: u32,
    /// enable IPv6 (not supported by ferry yet: refused)
    #[arg(short = '6', long = "enable-ipv6")]
    pub enable_ipv6: bool,
    /// specify API socket path
    #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// specify network address CIDR (default=10.0.2.0/24)
    #[arg(long, default_value = "10.0.2.0/24")]
    pub cidr: String,
    /// prohibit connecting to 127.0.0.1:* on the host namespace
    #[arg(long = "disable-host-loopback")]
    pub disable_host_loopback: bool,
    /// specify network namespace type ([path|pid], default=pid)
    #[arg(long = "netns-type", default_value = "pid")]
    pub netns_type: String,
    /// specify user namespace path
    #[arg(long = "userns-path", value_name = "PATH")]
    pub userns_path: Option<PathBuf>,
    /// create a new mount namespace (accepted; ferry does not sandbox itself yet)
    #[arg(long = "enable-sandbox")]
    pub enable_sandbox: bool,
    /// enable seccomp to limit syscalls (accepted; ferry has no seccomp filter yet)
    #[arg(long = "enable-seccomp")]
    pub enable_seccomp: bool,
    /// disable built-in DNS server
    #[arg(long = "disable-dns")]
    pub disable_dns: bool,
    /// specify outbound ipv4 address slirp should bind to (not supported yet: refused)
    #[arg(long = "outbound-addr", value_name = "IPv4")]
    pub outbound_addr: Option<String>,
    /// specify outbound ipv6 address slirp should bind to (not supported yet: refused)
    #[arg(long = "outbound-addr6", value_name = "IPv6")]
    pub outbound_addr6: Option<String>,
    /// specify MAC address of the TAP interface (not supported yet: refused)
    #[arg(long = "macaddress", value_name = "MAC")]
    pub macaddress: Option<String>,
    /// specify the target type ([netns|bess], default=netns)
    #[arg(long = "target-type", default_value = "netns")]
    pub target_type: String,
    /// PID of a process in the namespace, or its path with --netns-type=path
    pub target: String,
    /// name of the tap device to create
    #[arg(default_value = "tap0")]
    pub tapname: String,
}

/// Takes ownership of an fd the parent passed, after checking it is open.
fn inherited(fd: i32, what: &str) -> anyhow::Result<File> {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    anyhow::ensure!(
        open && fd > 2,
        "{what} {fd} is not an open file descriptor of this process"
    );
    // SAFETY: the parent handed this fd to us for this purpose (slirp4netns's
    // protocol); it is open (checked above) and nothing else in ferry uses it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

pub fn run(args: SlirpArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !args.enable_ipv6,
        "--enable-ipv6: ferry has no IPv6 yet; run without it"
    );
    anyhow::ensure!(
        args.outbound_addr.is_none() && args.outbound_addr6.is_none(),
        "--outbound-addr/--outbound-addr6 are not supported by ferry yet"
    );
    anyhow::ensure!(args.macaddress.is_none(), "--macaddress is not supported by ferry yet");
    anyhow::ensure!(
        args.target_type == "netns",
        "--target-type={}: only netns is supported",
        args.target_type
    );
    let netns = match args.netns_type.as_str() {
        "pid" => {
            anyhow::ensure!(
                args.target.bytes().all(|b| b.is_ascii_digit()),
                "{:?} is not a PID (use --netns-type=path for a path)",
                args.target
            );
            format!("/proc/{}/ns/net", args.target)
        }
        "path" => args.target.clone(),
        other => anyhow::bail!("--netns-type={other}: expected pid or path"),
    };
    if args.enable_sandbox || args.enable_seccomp {
        tracing::warn!(
            "--enable-sandbox/--enable-seccomp accepted, but ferry does not sandbox itself yet (docs/compat.md)"
        );
    }
    let (base, prefix) = ferry_net::config::parse_cidr(&args.cidr)?;
    let at = |n: u32| Ipv4Addr::from(u32::from(base) + n);
    let ready = args.ready_fd.map(|fd| inherited(fd, "--ready-fd")).transpose()?;
    let exit = args.exit_fd.map(|fd| inherited(fd, "--exit-fd")).transpose()?;

    let mut net = NetArgs::for_vm(
        PathBuf::new(),
        DnsArgs {
            no_dns: args.disable_dns,
            ..DnsArgs::default()
        },
    );
    net.listen_qemu.clear();
    net.netns = vec![netns];
    net.tap = args.tapname.clone();
    net.configure = args.configure;
    net.mtu = args.mtu;
    net.subnet = format!("{base}/{prefix}");
    net.gateway = Some(at(2));
    net.host_alias = Some(at(2));
    net.no_host_loopback = args.disable_host_loopback;
    net.guest_ip = Some(at(100));
    net.dns_addr = Some(at(3));
    net.userns = args.userns_path.as_ref().map(|p| p.display().to_string());
    net.slirp_api = args.api_socket.clone();

    let notify = exit.map(|mut file| {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        // The parent closes (or writes to) its end to stop us.
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            let _ = file.read(&mut byte);
            n.notify_one();
        });
        notify
    });
    super::net::run_until(
        net,
        move |_| {
            if let Some(mut file) = ready {
                file.write_all(b"1").context("writing to --ready-fd")?;
            }
            Ok(())
        },
        notify,
    )
}
