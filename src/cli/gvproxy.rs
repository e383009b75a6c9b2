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
    disable_version_flag = true,
    after_help = "Go-style flags work too: -listen-qemu unix:///tmp/qemu.sock\nThis is ferry's gvproxy front end; see docs/compat.md."
)]
pub struct GvproxyArgs {
    /// print version information ("gvproxy version vX-ferry")
    #[arg(long)]
    pub version: bool,
    /// subnet address in CIDR format
    #[arg(long, default_value = "192.168.127.0/24", value_name = "CIDR")]
    pub subnet: String,
    /// gateway IP address [default: first usable address of the subnet]
    #[arg(long = "gatewayIP", value_name = "IP")]
    pub gateway_ip: Option<Ipv4Addr>,
    /// device (guest) IP address, leased to 5a:94:ef:e4:0c:ee [default: second usable address]
    #[arg(long = "deviceIP", value_name = "IP")]
    pub device_ip: Option<Ipv4Addr>,
    /// host IP address, reaching the host's loopback [default: last usable address]
    #[arg(long = "hostIP", value_name = "IP")]
    pub host_ip: Option<Ipv4Addr>,
    /// capture network traffic to a pcap file
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// the same HTTP API as -listen, on another endpoint (unix://PATH)
    #[arg(long, value_name = "URL")]
    pub services: Option<String>,
    /// socket to send network-ready and connection notifications to (unix://PATH)
    #[arg(long, value_name = "URL")]
    pub notification: Option<String>,
    /// permit access to the EC2 metadata service and Amazon Time Sync (169.254.169.254, 169.254.169.123)
    #[arg(long = "ec2-metadata-access")]
    pub ec2_metadata_access: bool,
    /// control endpoint (unix://PATH; repeatable)
    #[arg(long, value_name = "URL")]
    pub listen: Vec<String>,
    /// QEMU socket to listen on (unix://PATH or tcp://IP:PORT)
    #[arg(long = "listen-qemu", value_name = "URL")]
    pub listen_qemu: Vec<ListenAddr>,
    /// vfkit socket to listen on (unixgram://PATH)
    #[arg(long = "listen-vfkit", value_name = "URL")]
    pub listen_vfkit: Vec<String>,
    /// set the MTU [default: 1500]
    #[arg(long)]
    pub mtu: Option<u32>,
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
    /// forward a unix socket (PATH or unix://PATH) to the guest over SSH; repeatable, one -forward-dest, -forward-user and -forward-identity each
    #[arg(long = "forward-sock", value_name = "PATH")]
    pub forward_sock: Vec<String>,
    /// unix socket in the guest that -forward-sock connects to
    #[arg(long = "forward-dest", value_name = "PATH")]
    pub forward_dest: Vec<String>,
    /// SSH user for -forward-sock
    #[arg(long = "forward-user", value_name = "USER")]
    pub forward_user: Vec<String>,
    /// SSH private key (identity) for -forward-sock
    #[arg(long = "forward-identity", value_name = "PATH")]
    pub forward_identity: Vec<String>,
    /// use configuration file (gvproxy's YAML) with command line override
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// serve one VM on standard input/output (any value, e.g. "accept"): frames with a 2-byte length
    #[arg(long = "listen-stdio", value_name = "ANY")]
    pub listen_stdio: Option<String>,
    /// unixpacket socket for BESS-compatible applications (unixpacket://PATH)
    #[arg(long = "listen-bess", value_name = "URL")]
    pub listen_bess: Option<String>,
    /// vpnkit socket for hyperkit (unix://PATH or tcp://IP:PORT)
    #[arg(long = "listen-vpnkit", value_name = "URL")]
    pub listen_vpnkit: Option<ListenAddr>,
    /// (ferry) what a system call outside ferry's allow-list gets once the
    /// network is up: kill (the default, as ferry net), trap, log, errno or
    /// none (gvproxy installs no filter)
    #[arg(long, value_name = "MODE", default_value = "kill")]
    pub seccomp: String,
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
    if parsed.version {
        println!("gvproxy version v{}-ferry", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let (parsed, plan) = match settle(parsed) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gvproxy (ferry): error: {e:#}");
            return ExitCode::FAILURE;
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
        log_level: if parsed.debug {
            Some("debug".to_string())
        } else {
            plan.log_level.clone()
        },
        ..Default::default()
    };
    crate::logging::init_to(&opts, log_file);
    match serve(parsed, plan) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gvproxy (ferry): error: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the address plan adds to the flags: gvproxy's defaults without
/// `-config`, the file's `stack` section with it.
#[derive(Debug, Default)]
struct Plan {
    /// `MAC=IP` static leases; None = gvproxy's default lease for the device IP.
    leases: Option<Vec<String>>,
    /// TCP forwards host → guest; None = the `-ssh-port` forward.
    forwards: Option<Vec<(std::net::SocketAddr, std::net::SocketAddr)>>,
    dns: Vec<(String, String, std::net::IpAddr)>,
    search: Vec<String>,
    vpnkit_macs: Option<Vec<(String, [u8; 6])>>,
    gateway_mac: Option<[u8; 6]>,
    /// The file's stack section, for its NAT rules (which need the host IP).
    stack: Option<super::gvproxy_config::Stack>,
    log_level: Option<String>,
}

fn mac(what: &str, s: &str) -> anyhow::Result<[u8; 6]> {
    ferry_net::config::parse_mac(s).with_context(|| format!("{what}: {s:?} is not a MAC address"))
}

/// Folds `-config FILE` into the flags as gvproxy does (see
/// gvproxy_config.rs for which side wins).
fn settle(mut args: GvproxyArgs) -> anyhow::Result<(GvproxyArgs, Plan)> {
    let Some(path) = args.config.clone() else {
        return Ok((args, Plan::default()));
    };
    let c = super::gvproxy_config::load(&path)?;
    if args.listen.is_empty() {
        args.listen = c.listen.clone();
    }
    let cli_transport = !args.listen_qemu.is_empty()
        || !args.listen_vfkit.is_empty()
        || args.listen_vpnkit.is_some()
        || args.listen_bess.is_some()
        || args.listen_stdio.is_some();
    if !cli_transport {
        let i = &c.interfaces;
        if let Some(q) = &i.qemu {
            args.listen_qemu = vec![q.parse().map_err(|e: String| anyhow::anyhow!("interfaces.qemu: {e}"))?];
        }
        if let Some(v) = &i.vpnkit {
            args.listen_vpnkit = Some(
                v.parse()
                    .map_err(|e: String| anyhow::anyhow!("interfaces.vpnkit: {e}"))?,
            );
        }
        args.listen_vfkit.extend(i.vfkit.clone());
        args.listen_bess = i.bess.clone();
        args.listen_stdio = i.stdio.clone();
    }
    args.pid_file = args.pid_file.or(c.pid_file.map(PathBuf::from));
    args.log_file = args.log_file.or(c.log_file.map(PathBuf::from));
    args.services = args.services.or(c.services);
    args.notification = args.notification.or(c.notification);
    args.ec2_metadata_access |= c.ec2_metadata_access || c.stack.ec2_metadata_access;
    // The file's socket forwards first, then the command line's (gvproxy appends).
    for (list, items) in [
        (
            &mut args.forward_sock,
            c.forwards.iter().map(|f| f.socket.clone()).collect::<Vec<_>>(),
        ),
        (
            &mut args.forward_dest,
            c.forwards.iter().map(|f| f.dest.clone()).collect(),
        ),
        (
            &mut args.forward_user,
            c.forwards.iter().map(|f| f.user.clone()).collect(),
        ),
        (
            &mut args.forward_identity,
            c.forwards.iter().map(|f| f.identity.clone()).collect(),
        ),
    ] {
        list.splice(0..0, items);
    }
    let st = &c.stack;
    if let Some(v) = &st.subnet {
        args.subnet = v.clone();
    }
    args.gateway_ip = st.gateway_ip.or(args.gateway_ip);
    args.device_ip = st.device_ip.or(args.device_ip);
    args.host_ip = st.host_ip.or(args.host_ip);
    args.mtu = args.mtu.or(st.mtu);
    args.pcap = args.pcap.or(st.capture_file.as_ref().map(PathBuf::from));
    args.debug |= st.debug;
    if std::env::args().any(|a| a == "-ssh-port" || a == "--ssh-port") {
        tracing::warn!("-ssh-port is unavailable with a config file: add \"127.0.0.1:PORT: DEVICE_IP:22\" to stack.forwards instead");
    }
    let mut leases = Vec::new();
    for (ip, m) in &st.dhcp_static_leases {
        mac(&format!("stack.dhcpStaticLeases {ip}"), m)?;
        leases.push(format!("{m}={ip}"));
    }
    let vpnkit_macs = st
        .vpnkit_uuid_mac_addresses
        .iter()
        .map(|(uuid, m)| Ok((uuid.clone(), mac(&format!("stack.vpnKitUUIDMacAddresses {uuid}"), m)?)))
        .collect::<anyhow::Result<_>>()?;
    let plan = Plan {
        leases: Some(leases),
        forwards: Some(st.forward_pairs()?),
        dns: st.dns_records()?,
        search: st.dns_search_domains.clone(),
        vpnkit_macs: Some(vpnkit_macs),
        gateway_mac: st
            .gateway_mac_address
            .as_deref()
            .map(|m| mac("stack.gatewayMacAddress", m))
            .transpose()?,
        log_level: c.log_level.clone(),
        stack: None,
    };
    let plan = Plan {
        stack: Some(c.stack),
        ..plan
    };
    Ok((args, plan))
}

fn serve(args: GvproxyArgs, plan: Plan) -> anyhow::Result<ExitCode> {
    // gvproxy's own rules for the transports.
    anyhow::ensure!(
        args.listen_vpnkit.is_none() || args.listen_qemu.is_empty(),
        "cannot use qemu and vpnkit protocol at the same time"
    );
    anyhow::ensure!(
        args.listen_vpnkit.is_none() || args.listen_bess.is_none(),
        "cannot use bess and vpnkit protocol at the same time"
    );
    anyhow::ensure!(
        args.listen_qemu.is_empty() || args.listen_bess.is_none(),
        "cannot use qemu and bess protocol at the same time"
    );
    let forwards = socket_forwards(&args)?;
    anyhow::ensure!(
        !args.listen_qemu.is_empty()
            || !args.listen_vfkit.is_empty()
            || args.listen_vpnkit.is_some()
            || args.listen_bess.is_some()
            || args.listen_stdio.is_some(),
        "no VM front end: give -listen-qemu or -listen-vfkit (or -listen-vpnkit, -listen-bess, -listen-stdio)"
    );
    let mut api = None;
    let mut api_tcp = Vec::new();
    for l in &args.listen {
        match api_endpoint("listen", l)? {
            Endpoint::Unix(path) if api.is_none() => api = Some(path),
            Endpoint::Unix(_) => {
                anyhow::bail!("-listen: ferry serves one unix control endpoint (add tcp:// ones as needed)")
            }
            Endpoint::Tcp(addr) => api_tcp.push((addr, true)),
        }
    }
    // As Go's net.ParseCIDR: host bits are dropped; room for a gateway, a
    // device and a host is needed.
    let (subnet, prefix) = args
        .subnet
        .split_once('/')
        .and_then(|(ip, p)| Some((ip.parse::<Ipv4Addr>().ok()?, p.parse::<u32>().ok()?)))
        .filter(|(_, p)| (1..=29).contains(p))
        .map(|(ip, p)| (Ipv4Addr::from(u32::from(ip) & (u32::MAX << (32 - p))), p))
        .with_context(|| {
            format!(
                "-subnet {:?}: expected IPv4 CIDR with a prefix of 1-29, e.g. 192.168.127.0/24",
                args.subnet
            )
        })?;
    let base = u32::from(subnet);
    let last = base | (u32::MAX >> prefix);
    let gateway = args.gateway_ip.unwrap_or(Ipv4Addr::from(base + 1));
    let guest = args.device_ip.unwrap_or(Ipv4Addr::from(base + 2));
    let host = args.host_ip.unwrap_or(Ipv4Addr::from(last - 1));
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
    net.listen_vpnkit = args.listen_vpnkit.iter().cloned().collect();
    net.listen_bess = match &args.listen_bess {
        Some(b) => vec![b
            .strip_prefix("unixpacket://")
            .map(PathBuf::from)
            .context("bess listen address must be unixpacket:// address")?],
        None => Vec::new(),
    };
    net.listen_stdio = args.listen_stdio.is_some();
    // gvproxy's /connect speaks the main transport's stream framing
    // (hyperkit's by default); the datagram transports have none.
    net.api_connect = if !args.listen_qemu.is_empty() {
        Some(ferry_net::frontend::stream::Framing::Qemu)
    } else if args.listen_bess.is_some() || !args.listen_vfkit.is_empty() {
        None
    } else {
        Some(ferry_net::frontend::stream::Framing::Hyperkit)
    };
    net.subnet = format!("{subnet}/{prefix}");
    net.gateway = Some(gateway);
    net.host_alias = Some(host);
    net.guest_ip = Some(guest);
    net.dhcp_leases = plan
        .leases
        .unwrap_or_else(|| vec![format!("5a:94:ef:e4:0c:ee={guest}")]);
    // gvproxy's gateway MAC, and its vpnkit VM UUID → guest MAC.
    net.gateway_mac = Some(plan.gateway_mac.unwrap_or([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]));
    net.vpnkit_macs = plan.vpnkit_macs.unwrap_or_else(|| {
        vec![(
            ferry_net::frontend::vpnkit::DEFAULT_UUID.to_string(),
            ferry_net::frontend::vpnkit::DEFAULT_MAC,
        )]
    });
    net.search = plan.search.clone();
    net.pcap = args.pcap.clone();
    // gvproxy installs no seccomp filter; ferry confines its data path
    // (and the SSH forwarder on it) as it does in `ferry net`.
    net.seccomp = args.seccomp.clone();
    net.extra_syscalls.push(crate::sshfwd::SYSCALLS);
    let unix = |flag: &str, url: &str| {
        url.strip_prefix("unix://")
            .map(PathBuf::from)
            .with_context(|| format!("-{flag} {url:?}: only unix://PATH is supported"))
    };
    if let Some(s) = &args.services {
        match api_endpoint("services", s)? {
            Endpoint::Unix(path) => net.api_extra.push(path),
            Endpoint::Tcp(addr) => api_tcp.push((addr, false)),
        }
    }
    net.api_tcp = api_tcp;
    let notification = args
        .notification
        .as_deref()
        .map(|n| unix("notification", n))
        .transpose()?;
    net.notification = notification.clone();
    if !args.ec2_metadata_access {
        // gvproxy keeps guests away from the cloud's instance metadata
        // (credentials!) unless asked: answered "network unreachable".
        net.unreachable = vec![
            std::net::IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
            std::net::IpAddr::V4(Ipv4Addr::new(169, 254, 169, 123)),
        ];
    }
    net.mtu = args.mtu.unwrap_or(1500);
    net.api = api;
    let tcp_forwards = match plan.forwards {
        Some(f) => f,
        None if args.ssh_port > 0 => {
            let port = u16::try_from(args.ssh_port)
                .ok()
                .filter(|p| *p >= 1024)
                .context("ssh-port value must be between 1024 and 65535")?;
            vec![((Ipv4Addr::LOCALHOST, port).into(), (guest, 22).into())]
        }
        None if args.ssh_port == -1 => Vec::new(),
        None => anyhow::bail!("ssh-port value must be between 1024 and 65535"),
    };
    if let Some(st) = &plan.stack {
        net.no_host_loopback = !st.host_alias(host)?;
    }
    if let Some(path) = &args.pid_file {
        let mut f = std::fs::File::create(path).with_context(|| format!("creating -pid-file {}", path.display()))?;
        writeln!(f, "{}", std::process::id())?;
    }
    let pid_file = args.pid_file.clone();
    let device = ferry_net::forward::GuestTarget::Ip(guest.into());
    let forward_sockets: Vec<PathBuf> = forwards.iter().map(|(f, _)| f.socket.clone()).collect();
    let code = super::net::run_until(
        net,
        |running| {
            for (host_addr, guest_addr) in tcp_forwards {
                let spec = ferry_net::forward::ForwardSpec {
                    proto: ferry_net::forward::Proto::Tcp,
                    host: host_addr,
                    guest: ferry_net::forward::GuestTarget::Ip(guest_addr.ip()),
                    guest_port: guest_addr.port(),
                };
                running.stack.borrow_mut().add_forward(spec)?;
            }
            if let Some(dns) = running.stack.borrow().dns.as_ref() {
                for (zone, name, ip) in &plan.dns {
                    dns.records()
                        .register_in_zone(zone, name, *ip, ferry_dns::Owner::Static("-config".into()))
                        .map_err(|e| anyhow::anyhow!("stack.dns {name}.{zone}: {e}"))?;
                }
            }
            for (fwd, key) in forwards {
                crate::sshfwd::spawn(&running.stack, device.clone(), fwd, key)?;
            }
            if let Some(path) = &notification {
                send_notification(path, "ready");
            }
            Ok(())
        },
        None,
    );
    if let Some(path) = pid_file {
        let _ = std::fs::remove_file(path);
    }
    for path in forward_sockets {
        let _ = std::fs::remove_file(path);
    }
    code
}

enum Endpoint {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// An API endpoint as gvproxy takes it: unix://PATH or tcp://IP:PORT.
/// (vsock:// is for hypervisors whose guests reach the host over vsock
/// alone, Hyper-V and macOS; on Linux ferry's guests reach the API over the
/// network or a unix socket, so it is refused with that reason.)
fn api_endpoint(flag: &str, url: &str) -> anyhow::Result<Endpoint> {
    if let Some(path) = url.strip_prefix("unix://") {
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(addr) = url.strip_prefix("tcp://") {
        return addr
            .parse()
            .map(Endpoint::Tcp)
            .with_context(|| format!("-{flag} {url:?}: expected tcp://IP:PORT"));
    }
    if url.starts_with("vsock://") {
        anyhow::bail!("-{flag} {url:?}: vsock endpoints are not supported by ferry (its guests reach the API through the network); use unix:// or tcp://");
    }
    anyhow::bail!("-{flag} {url:?}: expected unix://PATH or tcp://IP:PORT")
}

/// The SSH socket forwards, checked as gvproxy checks them: the four flags
/// the same number of times, and every identity loadable.
fn socket_forwards(
    args: &GvproxyArgs,
) -> anyhow::Result<Vec<(crate::sshfwd::SocketForward, std::sync::Arc<russh::keys::PrivateKey>)>> {
    let n = args.forward_sock.len();
    anyhow::ensure!(
        args.forward_dest.len() == n && args.forward_user.len() == n && args.forward_identity.len() == n,
        "--forward-sock, --forward-dest, --forward-user, and --forward-identity must all be specified together, the same number of times, or not at all"
    );
    (0..n)
        .map(|i| {
            let sock = &args.forward_sock[i];
            let socket = match sock.split_once("://") {
                Some(("unix", path)) => PathBuf::from(path),
                Some((scheme, _)) => anyhow::bail!(
                    "-forward-sock {sock:?}: URI scheme not supported: {scheme} (use unix://PATH or a path)"
                ),
                None => PathBuf::from(sock),
            };
            let identity = PathBuf::from(&args.forward_identity[i]);
            let key = crate::sshfwd::load_identity(&identity)?;
            let fwd = crate::sshfwd::SocketForward {
                socket,
                dest: args.forward_dest[i].clone(),
                user: args.forward_user[i].clone(),
                identity,
            };
            Ok((fwd, key))
        })
        .collect()
}

/// One gvproxy notification: a connection to the socket carrying one JSON
/// object, `{"notification_type": "..."}`, as gvproxy's sender writes it.
/// Sent from a short-lived thread so a slow listener never stalls the
/// network; a listener that is not there is logged, not fatal.
fn send_notification(path: &std::path::Path, kind: &'static str) {
    let path = path.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("gvproxy-notify".into())
        .spawn(move || {
            let sent = std::os::unix::net::UnixStream::connect(&path).and_then(|mut s| {
                s.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
                s.write_all(format!("{{\"notification_type\":\"{kind}\"}}\n").as_bytes())
            });
            if let Err(e) = sent {
                tracing::warn!(socket = %path.display(), error = %e, "could not send the {kind} notification");
            }
        });
}

/// Front-end events as gvproxy notifications.
pub(super) fn notifier(path: PathBuf) -> std::rc::Rc<dyn Fn(ferry_net::stack::PortEvent)> {
    std::rc::Rc::new(move |event| {
        use ferry_net::stack::PortEvent;
        let kind = match event {
            PortEvent::Attached => "connection_established",
            PortEvent::Detached => "connection_closed",
            PortEvent::Failed => "hypervisor_error",
        };
        send_notification(&path, kind);
    })
}
