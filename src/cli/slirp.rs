//! ferry as `slirp4netns`: the command line podman and rootlesskit pass,
//! mapped onto ferry's network with slirp4netns's address plan (gateway and
//! host loopback .2, DNS .3, guest .100; with `--enable-ipv6`, fd00::/64
//! with host fd00::2 and DNS fd00::3) and its API socket protocol. Error
//! messages that clients and slirp4netns's own tests grep are slirp4netns's.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    disable_version_flag = true,
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
    /// enable IPv6 (fd00::/64 by SLAAC; host and gateway fd00::2, DNS fd00::3)
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
    /// create a new mount namespace with an empty root (and drop all caps except CAP_NET_BIND_SERVICE if running as the root)
    #[arg(long = "enable-sandbox")]
    pub enable_sandbox: bool,
    /// enable seccomp to limit syscalls (an allow-list; other calls fail with EPERM)
    #[arg(long = "enable-seccomp")]
    pub enable_seccomp: bool,
    /// disable built-in DNS server
    #[arg(long = "disable-dns")]
    pub disable_dns: bool,
    /// sets outbound ipv4 address (or interface name) to bound to
    #[arg(long = "outbound-addr", value_name = "IPv4")]
    pub outbound_addr: Option<String>,
    /// sets outbound ipv6 address (or interface name) to bound to
    #[arg(long = "outbound-addr6", value_name = "IPv6")]
    pub outbound_addr6: Option<String>,
    /// specify the MAC address of the TAP (only valid with -c)
    #[arg(long = "macaddress", value_name = "MAC")]
    pub macaddress: Option<String>,
    /// specify the target type ([netns|bess], default=netns)
    #[arg(long = "target-type", default_value = "netns")]
    pub target_type: String,
    /// show version and exit
    #[arg(short = 'v', long = "version")]
    pub version: bool,
    /// PID of a process in the namespace, or its path with --netns-type=path
    #[arg(required_unless_present = "version")]
    pub target: Option<String>,
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

/// The lines `slirp4netns --version` prints; clients and slirp4netns's
/// tests parse `SLIRP_CONFIG_VERSION_MAX` (4: outbound addresses, DNS
/// switch and IPv6 are all there).
pub fn version_text() -> String {
    let v = env!("CARGO_PKG_VERSION");
    format!(
        "slirp4netns version 1.2.0+ferry.{v}\ncommit: ferry-{v}\nlibslirp: none (ferry {v}'s own NAT)\nSLIRP_CONFIG_VERSION_MAX: 4\nlibseccomp: none (seccompiler)\n"
    )
}

/// slirp4netns's CIDR rules and messages: a network address with a prefix
/// of 1-25 (the guest is .100).
fn parse_slirp_cidr(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, prefix) = s
        .split_once('/')
        .and_then(|(ip, p)| Some((ip.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("invalid CIDR: {s}"))?;
    anyhow::ensure!((1..=25).contains(&prefix), "prefix length needs to be 1-25");
    let mask = u32::MAX << (32 - u32::from(prefix));
    let net = Ipv4Addr::from(u32::from(ip) & mask);
    anyhow::ensure!(
        net == ip,
        "CIDR needs to be a network address like {net}/{prefix}, not like {ip}/{prefix}"
    );
    Ok((net, prefix))
}

/// An address or an interface name (the interface's first address of the
/// family), as slirp4netns accepts for `--outbound-addr`.
fn outbound(arg: &str, v6: bool) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = arg.parse::<IpAddr>() {
        anyhow::ensure!(
            ip.is_ipv6() == v6,
            "outbound_addr: {arg} is not an IPv{} address",
            if v6 { 6 } else { 4 }
        );
        return Ok(ip);
    }
    super::compat::interface_address(arg, v6).ok_or_else(|| {
        anyhow::anyhow!(
            "outbound_addr: no IPv{} address on interface {arg:?}",
            if v6 { 6 } else { 4 }
        )
    })
}

/// Whether `path` is a user namespace other than our own.
fn other_userns(path: &std::path::Path) -> bool {
    let ours = std::fs::read_link("/proc/self/ns/user").ok();
    std::fs::read_link(path).ok().is_some_and(|theirs| Some(theirs) != ours)
}

pub fn run(args: SlirpArgs) -> anyhow::Result<ExitCode> {
    if args.version {
        print!("{}", version_text());
        return Ok(ExitCode::SUCCESS);
    }
    let target = args.target.clone().unwrap_or_default();
    anyhow::ensure!(
        args.target_type == "netns",
        "--target-type={}: ferry supports netns only (bess is not implemented)",
        args.target_type
    );
    let (netns, implied_userns) = match args.netns_type.as_str() {
        "pid" => {
            anyhow::ensure!(
                target.bytes().all(|b| b.is_ascii_digit()) && !target.is_empty(),
                "{target:?} is not a PID (use --netns-type=path for a path)"
            );
            (
                format!("/proc/{target}/ns/net"),
                Some(PathBuf::from(format!("/proc/{target}/ns/user"))),
            )
        }
        "path" => (target.clone(), None),
        other => anyhow::bail!("--netns-type={other}: expected pid or path"),
    };
    let mac = match &args.macaddress {
        Some(m) => {
            anyhow::ensure!(args.configure, "--macaddress requires --configure (-c)");
            Some(
                ferry_net::config::parse_mac(m)
                    .ok_or_else(|| anyhow::anyhow!("macaddress: {m:?} is not a MAC address"))?,
            )
        }
        None => None,
    };
    let outbound4 = args.outbound_addr.as_deref().map(|a| outbound(a, false)).transpose()?;
    let outbound6 = args.outbound_addr6.as_deref().map(|a| outbound(a, true)).transpose()?;
    let (base, prefix) = parse_slirp_cidr(&args.cidr)?;
    let at = |n: u32| Ipv4Addr::from(u32::from(base) + n);
    // Like slirp4netns: join the target's user namespace (given, or the
    // PID's own when it differs from ours) before anything else, while
    // this process is still single-threaded.
    let userns = args.userns_path.clone().or(implied_userns.filter(|p| other_userns(p)));
    if let Some(path) = &userns {
        ferry_net::frontend::tap::join_user_namespace(path)?;
    }
    let ready = args.ready_fd.map(|fd| inherited(fd, "--ready-fd")).transpose()?;
    let exit = args.exit_fd.map(|fd| inherited(fd, "--exit-fd")).transpose()?;

    let mut net = NetArgs::for_vm(
        PathBuf::new(),
        DnsArgs {
            no_dns: args.disable_dns,
            ..DnsArgs::default()
        },
    );
    // slirp4netns installs a filter only with --enable-seccomp (below).
    net.seccomp = "none".into();
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
    net.slirp_api = args.api_socket.clone();
    // slirp4netns's forwards (add_hostfwd) show every client as the host
    // address 10.0.2.2; keep that for its clients.
    net.forward_source = ferry_net::config::ForwardSource::Gateway;
    net.tap_mac = mac;
    net.outbound4 = outbound4.and_then(|a| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    net.outbound6 = outbound6.and_then(|a| match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    });
    if args.enable_ipv6 {
        net.plan6 = Some(ferry_net::config::Ipv6Plan::slirp());
    } else {
        net.no_ipv6 = true;
    }
    if args.disable_host_loopback {
        // slirp4netns: connecting to the host address fails with
        // "Network is unreachable" rather than being refused.
        net.unreachable.push(IpAddr::V4(at(2)));
        if args.enable_ipv6 {
            net.unreachable
                .push(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)));
        }
    }
    let (sandbox, seccomp) = (args.enable_sandbox, args.enable_seccomp);

    let notify = exit.as_ref().map(|_| Arc::new(tokio::sync::Notify::new()));
    let exit_notify = notify.clone();
    super::net::run_until(
        net,
        move |_| {
            // Everything is open and bound: confine, then say ready.
            #[cfg(target_os = "linux")]
            confine(sandbox, seccomp)?;
            if let Some(mut file) = ready {
                file.write_all(b"1").context("writing to --ready-fd")?;
            }
            // The parent closes (or writes to) its end of --exit-fd to stop
            // us; watched from a thread started only now, since entering a
            // mount namespace needs a single-threaded process.
            if let (Some(mut file), Some(n)) = (exit, exit_notify) {
                std::thread::spawn(move || {
                    let mut byte = [0u8; 1];
                    let _ = file.read(&mut byte);
                    n.notify_one();
                });
            }
            Ok(())
        },
        notify,
    )
}

/// slirp4netns's `--enable-sandbox` (a mount namespace whose root holds
/// only empty `/etc` and `/run`; all capabilities but
/// CAP_NET_BIND_SERVICE dropped when running as root) and
/// `--enable-seccomp` (ferry's allow-list; other calls fail with EPERM).
#[cfg(target_os = "linux")]
fn confine(sandbox: bool, seccomp: bool) -> anyhow::Result<()> {
    if sandbox {
        ferry_confine::empty_root(&["etc", "run"]).context("--enable-sandbox")?;
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            ferry_confine::drop_caps(&[ferry_confine::Capability::CAP_NET_BIND_SERVICE])
                .context("--enable-sandbox: dropping capabilities")?;
        }
    }
    if seccomp {
        ferry_confine::seccomp::install(ferry_confine::seccomp::Mode::Errno, ferry_net::SYSCALLS)
            .context("--enable-seccomp")?;
    }
    Ok(())
}
