//! ferry as `gvproxy`: gvproxy's command line (Go-style `-flag value` or
//! `-flag=value`) and its default address plan: 192.168.127.0/24, gateway
//! and DNS .1, host .254, and the guest .2 by static lease for
//! 5a:94:ef:e4:0c:ee.

use std::ffi::OsString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferry_net::frontend::listen::ListenAddr;

use super::net::{DnsArgs, NetArgs};

/// ferry running as gvproxy: user-mode networking for VMs (QEMU, vfkit).
#[derive(Debug, Parser)]
#[command(
    name = "gvproxy",
    version,
    after_help = "Go-style flags work too: -listen-qemu unix:///tmp/qemu.sock\nThis is ferry's gvproxy front end; see docs/compat.md."
)]
pub struct GvproxyArgs {
    /// control endpoint (unix://PATH; repeatable)
    #[arg(long, value_name = "URL")]
    pub listen: Vec<String>,
    /// QEMU socket to listen on (unix://PATH or tcp://IP:PORT)
    #[arg(long = "listen-qemu", value_name = "URL")]
    pub listen_qemu: Vec<ListenAddr>,
    /// vfkit socket to listen on (unixgram://PATH)
    #[arg(long = "listen-vfkit", value_name = "URL")]
    pub listen_vfkit: Vec<String>,
    /// set the MTU
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// port to access the guest by SSH (127.0.0.1:PORT -> guest:22); -1 disables
    #[arg(long = "ssh-port", default_value_t = 2222, allow_negative_numbers = true)]
    pub ssh_port: i32,
    /// generate a PID file in the given path
    #[arg(long = "pid-file", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// output log messages (logrus Info level) to a file path
    #[arg(long = "log-file", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// print debug info
    #[arg(long)]
    pub debug: bool,
    /// forward a unix socket to the guest over SSH (not supported yet: refused)
    #[arg(long = "forward-sock", value_name = "PATH")]
    pub forward_sock: Vec<String>,
    /// destination of --forward-sock in the guest
    #[arg(long = "forward-dest", value_name = "PATH")]
    pub forward_dest: Vec<String>,
    /// SSH user for --forward-sock
    #[arg(long = "forward-user", value_name = "USER")]
    pub forward_user: Vec<String>,
    /// SSH identity for --forward-sock
    #[arg(long = "forward-identity", value_name = "PATH")]
    pub forward_identity: Vec<String>,
    /// unsupported front ends, refused with a clear error
    #[arg(long = "listen-stdio", hide = true)]
    pub listen_stdio: Option<String>,
    #[arg(long = "listen-bess", hide = true)]
    pub listen_bess: Option<String>,
    #[arg(long = "listen-vpnkit", hide = true)]
    pub listen_vpnkit: Option<String>,
}

/// Go's flag package takes `-name` as well as `--name`.
fn normalise(args: &[OsString]) -> Vec<OsString> {
    std::iter::once(OsString::from("gvproxy"))
        .chain(args.iter().map(|a| match a.to_str() {
            Some(s)
                if s.starts_with('-')
                    && !s.starts_with("--")
                    && s.len() > 2
                    && !s[1..].starts_with(|c: char| c.is_ascii_digit()) =>
            {
                OsString::from(format!("-{s}"))
            }
            _ => a.clone(),
        }))
        .collect()
}

pub fn run(args: &[OsString]) -> ExitCode {
    let parsed = match GvproxyArgs::try_parse_from(normalise(args)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1));
        }
    };
    let log_file = match &parsed.log_file {
        Some(p) => match std::fs::OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("gvproxy (ferry): error: opening -log-file {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let opts = crate::logging::LogOptions {
        log_level: parsed.debug.then(|| "debug".to_string()),
        ..Default::default()
    };
    crate::logging::init_to(&opts, log_file);
    match serve(parsed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gvproxy (ferry): error: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: GvproxyArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.listen_stdio.is_none() && args.listen_bess.is_none() && args.listen_vpnkit.is_none(),
        "-listen-stdio, -listen-bess and -listen-vpnkit are not supported by ferry; use -listen-qemu or -listen-vfkit"
    );
    anyhow::ensure!(
        args.forward_sock.is_empty() && args.forward_dest.is_empty(),
        "-forward-sock/-forward-dest (unix sockets over SSH) are not supported by ferry yet; forward over TCP with -ssh-port and `ssh -L` instead"
    );
    anyhow::ensure!(
        !args.listen_qemu.is_empty() || !args.listen_vfkit.is_empty(),
        "no VM front end: give -listen-qemu or -listen-vfkit"
    );
    let mut api = None;
    for l in &args.listen {
        match l.strip_prefix("unix://") {
            Some(path) if api.is_none() => api = Some(PathBuf::from(path)),
            Some(_) => anyhow::bail!("-listen: ferry serves one control endpoint"),
            None => anyhow::bail!("-listen {l:?}: only unix:// control endpoints are supported"),
        }
    }
    let guest = Ipv4Addr::new(192, 168, 127, 2);
    let mut net = NetArgs::for_vm(PathBuf::new(), DnsArgs::default());
    net.listen_qemu = args.listen_qemu.clone();
    net.listen_vfkit = args
        .listen_vfkit
        .iter()
        .map(|v| {
            v.strip_prefix("unixgram://")
                .map(PathBuf::from)
                .with_context(|| format!("-listen-vfkit {v:?}: expected unixgram://PATH"))
        })
        .collect::<anyhow::Result<_>>()?;
    net.subnet = "192.168.127.0/24".into();
    net.gateway = Some(Ipv4Addr::new(192, 168, 127, 1));
    net.host_alias = Some(Ipv4Addr::new(192, 168, 127, 254));
    net.guest_ip = Some(guest);
    net.dhcp_leases = vec![format!("5a:94:ef:e4:0c:ee={guest}")];
    net.mtu = args.mtu;
    net.api = api;
    if args.ssh_port > 0 {
        net.publish = vec![format!("127.0.0.1:{}:22", args.ssh_port)];
    }
    if let Some(path) = &args.pid_file {
        let mut f = std::fs::File::create(path).with_context(|| format!("creating -pid-file {}", path.display()))?;
        writeln!(f, "{}", std::process::id())?;
    }
    let pid_file = args.pid_file.clone();
    let code = super::net::run_until(net, |_| Ok(()), None);
    if let Some(path) = pid_file {
        let _ = std::fs::remove_file(path);
    }
    code
}
