//! `ferry net`: the userspace network for a network namespace.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ferry_net::frontend::tap::{self, Tap, TapAddress, TapOptions};
use ferry_net::{NetConfig, NetMetrics, Stack};

const EXAMPLES: &str = "\
Examples:
  # a namespace with a tap configured like `slirp4netns --configure`
  unshare --net sleep infinity & ferry net --netns $! --configure
  # leave addressing to DHCP inside the namespace
  ferry net --netns /run/netns/box --tap eth0
  # then, inside the namespace: reach the host's 127.0.0.1:8080
  curl http://10.0.2.254:8080/

Address plan (defaults): subnet 10.0.2.0/24, gateway and DNS 10.0.2.1,
host alias 10.0.2.254 (the host's 127.0.0.1), first guest 10.0.2.2.
IPv6: prefix fd66:6572:7279::/64 announced for SLAAC, gateway and DNS
fd66:6572:7279::1 (also fe80::1), host alias fd66:6572:7279::fe (the
host's ::1); --no-ipv6 turns IPv6 off.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct NetArgs {
    /// Network namespace to serve: a PID or a path such as /proc/PID/ns/net or
    /// /run/netns/NAME. Repeat to put several namespaces on one network; with
    /// --configure the Nth gets the Nth guest address.
    #[arg(long, value_name = "PATH|PID", required_unless_present_any = ["listen_qemu", "listen_vfkit", "listen_vhost_user", "listen_vpnkit", "listen_bess", "listen_stdio"])]
    pub netns: Vec<String>,
    /// Accept QEMU `-netdev stream`/`-netdev socket` connections here
    /// (unix://PATH or tcp://127.0.0.1:PORT; repeatable). Each connection is a guest.
    #[arg(long = "listen-qemu", value_name = "ADDR")]
    pub listen_qemu: Vec<ferry_net::frontend::listen::ListenAddr>,
    /// Serve a vfkit / Virtualization.framework VM on this unix datagram
    /// socket (unixgram://PATH; repeatable): one frame per datagram.
    #[arg(long = "listen-vfkit", value_name = "ADDR", value_parser = parse_unixgram)]
    pub listen_vfkit: Vec<PathBuf>,
    /// Serve a QEMU `-netdev vhost-user` guest on this unix socket (repeatable;
    /// one guest per socket). QEMU needs shared guest memory:
    /// `-object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem`.
    #[arg(long = "listen-vhost-user", value_name = "PATH")]
    pub listen_vhost_user: Vec<PathBuf>,
    /// Serve hyperkit VMs with vpnkit's protocol here (unix://PATH or
    /// tcp://127.0.0.1:PORT; repeatable): its handshake, then frames with a
    /// 2-byte length.
    #[arg(long = "listen-vpnkit", value_name = "ADDR")]
    pub listen_vpnkit: Vec<ferry_net::frontend::listen::ListenAddr>,
    /// Serve BESS-style clients on this SOCK_SEQPACKET unix socket
    /// (unixpacket://PATH; repeatable): one frame per packet, a guest per connection.
    #[arg(long = "listen-bess", value_name = "ADDR", value_parser = parse_unixpacket)]
    pub listen_bess: Vec<PathBuf>,
    /// Serve one guest on standard input and output: frames with a 2-byte
    /// little-endian length (hyperkit's framing), for a hypervisor that runs
    /// ferry with pipes.
    #[arg(long = "listen-stdio")]
    pub listen_stdio: bool,
    /// vpnkit VM UUID → MAC (gvproxy's `vpnKitUUIDMacAddresses`); other
    /// UUIDs get a MAC derived from the UUID.
    #[arg(skip)]
    pub vpnkit_macs: Vec<(String, [u8; 6])>,
    /// The framing of gvproxy's `/connect` on the --api endpoint (None: not served).
    #[arg(skip)]
    pub api_connect: Option<ferry_net::frontend::stream::Framing>,
    /// `ferry run --publish-auto`: the unix socket guest-init's listener
    /// snapshots arrive on (through the VM's vsock), and the file the
    /// automatic forwards are recorded in for `ferry ps`.
    #[arg(skip)]
    pub publish_auto_socket: Option<PathBuf>,
    #[arg(skip)]
    pub publish_auto_record: Option<PathBuf>,
    /// The API on TCP addresses (gvproxy's `-listen tcp://`, `-services
    /// tcp://`); true where `/connect` is served.
    #[arg(skip)]
    pub api_tcp: Vec<(std::net::SocketAddr, bool)>,
    /// User namespace to join first, for an unprivileged ferry (a PID or a path).
    #[arg(long, value_name = "PATH|PID")]
    pub userns: Option<String>,
    /// Name of the tap device to create in the namespace.
    #[arg(long, default_value = "tap0", value_name = "NAME")]
    pub tap: String,
    /// Configure the tap's address, MTU and default route (else use DHCP inside).
    #[arg(long)]
    pub configure: bool,
    /// MTU of the guest link (576-65520).
    #[arg(long, default_value_t = 65520)]
    pub mtu: u32,
    /// Subnet of the guest network.
    #[arg(long, default_value = "10.0.2.0/24", value_name = "CIDR")]
    pub subnet: String,
    /// Gateway (and DHCP and DNS server) address [default: first address of the subnet].
    #[arg(long, value_name = "IP")]
    pub gateway: Option<Ipv4Addr>,
    /// Address that reaches the host's 127.0.0.1 [default: last usable address of the subnet].
    #[arg(long, value_name = "IP")]
    pub host_alias: Option<Ipv4Addr>,
    /// Do not let guests reach the host's loopback through the host alias.
    #[arg(long)]
    pub no_host_loopback: bool,
    /// IPv6 prefix of the guest network, announced for SLAAC (a /64).
    #[arg(long, default_value = "fd66:6572:7279::/64", value_name = "PREFIX/64")]
    pub subnet6: String,
    /// IPv6 gateway (and DNS) address [default: PREFIX::1].
    #[arg(long, value_name = "IPv6")]
    pub gateway6: Option<Ipv6Addr>,
    /// IPv6 address that reaches the host's ::1 [default: PREFIX::fe].
    #[arg(long = "host-alias6", value_name = "IPv6")]
    pub host_alias6: Option<Ipv6Addr>,
    /// No IPv6 on the guest link: no router advertisements, IPv6 frames dropped.
    #[arg(long = "no-ipv6", conflicts_with_all = ["gateway6", "host_alias6", "dhcp6_stateful", "dhcp6_leases"])]
    pub no_ipv6: bool,
    /// Lease IPv6 addresses with DHCPv6 as well as SLAAC (the RA's M flag;
    /// pool PREFIX::1:0 upwards); the client's FQDN option names it in DNS.
    #[arg(long = "dhcp6-stateful")]
    pub dhcp6_stateful: bool,
    /// Static DHCPv6 lease by MAC or DUID (repeatable; implies
    /// --dhcp6-stateful), e.g. 5a:94:ef:e4:0c:ee=fd66:6572:7279::10.
    #[arg(long = "dhcp6-lease", value_name = "MAC|DUID=IPv6")]
    pub dhcp6_leases: Vec<String>,
    /// The whole IPv6 plan, set by the slirp4netns front end (fd00::/64).
    #[arg(skip)]
    pub plan6: Option<ferry_net::config::Ipv6Plan>,
    /// What a system call outside ferry's allow-list gets once the network
    /// is up: kill (the process; the default, as passt and pasta), trap
    /// (reported by name, then the process ends), log (allowed, logged by
    /// the kernel's audit), errno (fails with EPERM) or none.
    #[arg(long, value_name = "MODE", default_value = "kill")]
    pub seccomp: String,
    /// More allow-list entries for code a mode adds (gvproxy's SSH forwarder).
    #[arg(skip)]
    pub extra_syscalls: Vec<&'static [libc::c_long]>,
    /// More control API endpoints (gvproxy's `-services`).
    #[arg(skip)]
    pub api_extra: Vec<PathBuf>,
    /// gvproxy's `-notification` socket: told "ready" and front-end events.
    #[arg(skip)]
    pub notification: Option<PathBuf>,
    /// Destinations answered "network unreachable" (set by the slirp4netns front end).
    #[arg(skip)]
    pub unreachable: Vec<std::net::IpAddr>,
    /// Outbound bind addresses (slirp4netns's --outbound-addr/--outbound-addr6).
    #[arg(skip)]
    pub outbound4: Option<Ipv4Addr>,
    #[arg(skip)]
    pub outbound6: Option<Ipv6Addr>,
    /// MAC address given to the tap by --configure (slirp4netns's --macaddress).
    #[arg(skip)]
    pub tap_mac: Option<[u8; 6]>,
    /// First guest address handed out by DHCP (and used by --configure) [default: gateway + 1].
    #[arg(long, value_name = "IP")]
    pub guest_ip: Option<Ipv4Addr>,
    /// The gateway's MAC address [default: 52:55:0a:00:02:01].
    #[arg(long = "gateway-mac", value_name = "MAC", value_parser = parse_mac)]
    pub gateway_mac: Option<[u8; 6]>,
    /// Static DHCP lease (repeatable).
    #[arg(long = "dhcp-lease", value_name = "MAC=IP")]
    pub dhcp_leases: Vec<String>,
    /// DNS search domain sent by DHCP (repeatable) [default: the DNS zones].
    #[arg(long = "search", value_name = "DOMAIN")]
    pub search: Vec<String>,
    #[command(flatten)]
    pub dns: DnsArgs,
    /// Forward a host port to a guest, Docker style (repeatable):
    /// [HOST_IP:]HOST_PORT[-END]:GUEST_PORT[-END][/tcp|/udp]; HOST_IP defaults to 127.0.0.1.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Who the guest sees as the source of forwarded connections: client
    /// (the client itself; a client on the host's loopback as the host
    /// alias) or gateway (always the gateway, as slirp4netns and gvproxy).
    #[arg(long = "forward-source", value_name = "client|gateway", default_value = "client", value_parser = parse_forward_source)]
    pub forward_source: ferry_net::config::ForwardSource,
    /// Guest the -p forwards go to: an IP or a registered name [default: the first guest address].
    #[arg(long = "publish-to", value_name = "GUEST")]
    pub publish_to: Option<String>,
    /// Forward every port a namespace listens on (TCP) or has bound (UDP),
    /// from the host's 127.0.0.1 and ::1, while it does (pasta's `-t auto`).
    /// A host port already taken is left alone and logged once.
    #[arg(long = "publish-auto")]
    pub publish_auto: bool,
    /// Only these ports for --publish-auto.
    #[arg(long = "publish-auto-range", value_name = "LO-HI", default_value = "1-65535", value_parser = parse_port_range)]
    pub publish_auto_range: std::ops::RangeInclusive<u16>,
    /// Capture every frame to and from the guests into FILE (pcap format).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Serve the control API (HTTP/1.1 + JSON) on this unix socket, mode 0600.
    #[arg(long, value_name = "PATH")]
    pub api: Option<PathBuf>,
    /// slirp4netns's API socket protocol on this path (set by the slirp4netns front end).
    #[arg(skip)]
    pub slirp_api: Option<PathBuf>,
    /// Where DNS is served [default: the gateway] (slirp4netns uses .3).
    #[arg(skip)]
    pub dns_addr: Option<Ipv4Addr>,
    /// Most TCP flows at once; new connections are refused beyond it.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub max_tcp_flows: usize,
    /// Most UDP flows at once; the least recently used flow is closed for
    /// a new one beyond it.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_udp_flows: usize,
    /// Keep DHCP leases, port forwards and DNS names added through the APIs
    /// in this file (JSON, rewritten within a second of a change), and
    /// restore them at start: a restarted daemon gives running guests their
    /// addresses, forwards and names back.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// Most port forwards at once, however added (command line, control
    /// API, gvproxy's or slirp4netns's API); more are refused with an error.
    #[arg(long, default_value_t = ferry_net::forward::MAX_FORWARDS, value_name = "N")]
    pub max_forwards: usize,
}

/// DNS served on the gateway.
#[derive(Clone, Debug, Default, Args)]
pub struct DnsArgs {
    /// Do not serve DNS on the gateway (port 53 is then closed).
    #[arg(long)]
    pub no_dns: bool,
    /// Local zone for guest names (repeatable) [default: test].
    #[arg(long = "dns-zone", value_name = "ZONE")]
    pub zones: Vec<String>,
    /// Upstream resolver, IP or IP:PORT (repeatable) [default: nameservers in /etc/resolv.conf].
    #[arg(long = "dns-upstream", value_name = "ADDR")]
    pub upstreams: Vec<String>,
    /// Also answer on this host address, e.g. 127.0.0.1:5353, for host tools.
    #[arg(long = "dns-listen", value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// A static name, NAME=IP (repeatable): NAME.<zone> resolves to IP,
    /// IPv4 (A) or IPv6 (AAAA); give the name twice for both.
    #[arg(long = "dns-record", value_name = "NAME=IP")]
    pub records: Vec<String>,
    /// Queries per second allowed per source address (0 = no limit).
    #[arg(long = "dns-rate-limit", value_name = "QPS", default_value_t = 2000)]
    pub rate_limit: u32,
}

impl DnsArgs {
    /// The DNS server for `cfg`, or None with --no-dns.
    pub fn server(&self, cfg: &NetConfig) -> anyhow::Result<Option<ferry_dns::DnsServer>> {
        if self.no_dns {
            return Ok(None);
        }
        let upstreams = if self.upstreams.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let found = ferry_dns::parse_resolv_conf(&text);
            if found.is_empty() {
                tracing::warn!("no nameserver in /etc/resolv.conf: names outside the local zones will get SERVFAIL (use --dns-upstream)");
            }
            found
        } else {
            self.upstreams
                .iter()
                .map(|u| {
                    ferry_dns::parse_upstream(u)
                        .with_context(|| format!("--dns-upstream {u:?}: expected IP or IP:PORT"))
                })
                .collect::<anyhow::Result<_>>()?
        };
        let zones = if self.zones.is_empty() {
            vec!["test".to_string()]
        } else {
            self.zones.clone()
        };
        let server = ferry_dns::DnsServer::new(ferry_dns::DnsConfig {
            zones,
            upstreams,
            host: cfg.host_alias,
            gateway: cfg.gateway,
            host6: cfg.v6.as_ref().and_then(|p| p.host_alias),
            gateway6: cfg.v6.as_ref().map(|p| p.gateway),
            rate_limit: self.rate_limit,
            ..ferry_dns::DnsConfig::default()
        });
        for record in &self.records {
            let (name, ip) = record
                .split_once('=')
                .and_then(|(n, ip)| Some((n, ip.parse::<std::net::IpAddr>().ok()?)))
                .with_context(|| {
                    format!("--dns-record {record:?}: expected NAME=IP (IPv4 or IPv6; give both for a dual-stack name)")
                })?;
            server
                .records()
                .register(name, ip, ferry_dns::Owner::Static("command line".into()))
                .map_err(|e| anyhow::anyhow!("--dns-record {record:?}: {e}"))?;
        }
        Ok(Some(server))
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    ferry_net::config::parse_mac(s).ok_or_else(|| format!("{s:?}: expected a MAC address like 5a:94:ef:e4:0c:dd"))
}

fn parse_forward_source(s: &str) -> Result<ferry_net::config::ForwardSource, String> {
    match s {
        "client" => Ok(ferry_net::config::ForwardSource::Client),
        "gateway" => Ok(ferry_net::config::ForwardSource::Gateway),
        _ => Err(format!("{s:?}: expected client or gateway")),
    }
}

fn parse_unixpacket(s: &str) -> Result<PathBuf, String> {
    match s.strip_prefix("unixpacket://") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(format!("{s:?}: expected unixpacket://PATH")),
    }
}

fn parse_unixgram(s: &str) -> Result<PathBuf, String> {
    match s.strip_prefix("unixgram://") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(format!("{s:?}: expected unixgram://PATH")),
    }
}

pub(super) fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    match (lo.parse::<u16>(), hi.parse::<u16>()) {
        (Ok(lo), Ok(hi)) if lo >= 1 && lo <= hi => Ok(lo..=hi),
        _ => Err(format!("{s:?}: expected LO-HI, e.g. 8000-9000")),
    }
}

/// `--publish-auto` for one namespace: a thread that has joined it reads
/// the socket tables every 500 ms and sends the set of listeners when it
/// changes; the stack's task turns changes into forwards.
fn watch_listeners(
    netns: &std::path::Path,
    tx: tokio::sync::mpsc::UnboundedSender<std::collections::BTreeSet<ferry_net::listeners::Listener>>,
) -> anyhow::Result<()> {
    use ferry_net::forward::Proto;
    let ns = std::fs::File::open(netns).with_context(|| format!("--publish-auto: opening {}", netns.display()))?;
    // The thread enters the namespace before this returns: setns is not in
    // the seccomp allow-list installed once the network is up.
    let (entered_tx, entered) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("publish-auto".into()).spawn(move || {
        // SAFETY: setns(2) on a namespace descriptor we hold; it moves only
        // this thread, which does nothing else.
        let joined = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } == 0;
        let _ = entered_tx.send(joined.then_some(()).ok_or_else(std::io::Error::last_os_error));
        if !joined {
            return;
        }
        drop(ns);
        let mut last = None;
        loop {
            let mut now = std::collections::BTreeSet::new();
            for (table, proto) in [
                ("tcp", Proto::Tcp),
                ("tcp6", Proto::Tcp),
                ("udp", Proto::Udp),
                ("udp6", Proto::Udp),
            ] {
                if let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{table}")) {
                    now.extend(ferry_net::listeners::parse(&text, proto));
                }
            }
            if last.as_ref() != Some(&now) {
                if tx.send(now.clone()).is_err() {
                    return;
                }
                last = Some(now);
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    })?;
    entered
        .recv()
        .context("--publish-auto: the watcher thread ended")?
        .context("--publish-auto: entering the namespace")?;
    Ok(())
}

/// Adds and removes the automatic forwards to `guest` as its listeners come
/// and go. Explicit forwards and taken host ports are never touched.
async fn publish_auto(
    stack: ferry_net::stack::StackRef,
    guest: std::net::IpAddr,
    range: std::ops::RangeInclusive<u16>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<std::collections::BTreeSet<ferry_net::listeners::Listener>>,
    record: Option<PathBuf>,
) {
    use ferry_net::forward::{ForwardSpec, GuestTarget};
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    let mut current: BTreeSet<ferry_net::listeners::Listener> = BTreeSet::new();
    let mut ours: BTreeSet<(ferry_net::forward::Proto, SocketAddr)> = BTreeSet::new();
    let mut told: BTreeSet<ferry_net::listeners::Listener> = BTreeSet::new();
    while let Some(seen) = rx.recv().await {
        let seen: BTreeSet<_> = seen.into_iter().filter(|(_, p)| range.contains(p)).collect();
        let mut st = stack.borrow_mut();
        for &(proto, port) in seen.difference(&current) {
            for host in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
                let host = SocketAddr::new(host, port);
                let spec = ForwardSpec {
                    proto,
                    host,
                    guest: GuestTarget::Ip(guest),
                    guest_port: port,
                };
                match st.add_forward(spec) {
                    Ok(()) => {
                        ours.insert((proto, host));
                        if host.is_ipv4() {
                            tracing::info!(
                                port,
                                proto = proto.as_str(),
                                "the guest listens: forwarded from the host's 127.0.0.1 and ::1"
                            );
                        }
                    }
                    Err(e) if host.is_ipv4() && told.insert((proto, port)) => {
                        tracing::warn!(
                            port,
                            proto = proto.as_str(),
                            "the guest listens but the host port is not free, so it is not forwarded: {e}"
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        for &(proto, port) in current.difference(&seen) {
            for host in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
                let host = SocketAddr::new(host, port);
                if ours.remove(&(proto, host)) {
                    st.remove_forward(proto, host);
                }
            }
            told.remove(&(proto, port));
        }
        current = seen;
        drop(st);
        if let Some(path) = &record {
            // For `ferry ps`: "7777/tcp, 53/udp, 8080/tcp (host port taken)".
            let list: Vec<String> = current
                .iter()
                .map(|&(proto, port)| {
                    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                    if ours.contains(&(proto, v4)) {
                        format!("{port}/{}", proto.as_str())
                    } else {
                        format!("{port}/{} (host port taken)", proto.as_str())
                    }
                })
                .collect();
            let _ = std::fs::write(path, list.join(", "));
        }
    }
}

/// `ferry run --publish-auto`: guest-init's listener snapshots
/// (NUL-terminated, [`ferry_net::listeners::parse_snapshot`]) arrive on
/// `path` through the VM's vsock; each becomes the set of forwards.
fn guest_listener_feed(
    path: &std::path::Path,
    tx: tokio::sync::mpsc::UnboundedSender<std::collections::BTreeSet<ferry_net::listeners::Listener>>,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("--publish-auto: listening on {}", path.display()))?;
    tokio::task::spawn_local(async move {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                let mut r = tokio::io::BufReader::new(conn);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    // One snapshot at most 1 MiB: a guest cannot make us hoard.
                    let mut limited = (&mut r).take(1 << 20);
                    match limited.read_until(0, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if buf.last() != Some(&0) => return,
                        Ok(_) => {}
                    }
                    let text = String::from_utf8_lossy(&buf[..buf.len() - 1]);
                    if tx.send(ferry_net::listeners::parse_snapshot(&text)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

fn ns_path(arg: &str, kind: &str) -> PathBuf {
    if arg.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{arg}/ns/{kind}"))
    } else {
        PathBuf::from(arg)
    }
}

impl NetArgs {
    pub fn config(&self) -> anyhow::Result<NetConfig> {
        let mut cfg = NetConfig::for_subnet(&self.subnet)?;
        cfg.mtu = self.mtu;
        if let Some(g) = self.gateway {
            cfg.gateway = g;
            if self.guest_ip.is_none() {
                cfg.first_guest = Ipv4Addr::from(u32::from(g).wrapping_add(1));
            }
        }
        if let Some(h) = self.host_alias {
            cfg.host_alias = Some(h);
        }
        if self.no_host_loopback {
            cfg.host_alias = None;
        }
        if let Some(ip) = self.guest_ip {
            cfg.first_guest = ip;
        }
        if let Some(mac) = self.gateway_mac {
            cfg.gateway_mac = mac;
        }
        if let Some(ip) = self.dns_addr {
            cfg.dns_addr = ip;
        }
        for lease in &self.dhcp_leases {
            cfg.static_leases.push(NetConfig::parse_lease(lease)?);
        }
        if !self.search.is_empty() {
            cfg.search_domains = self.search.clone();
        } else if !self.dns.zones.is_empty() {
            cfg.search_domains = self.dns.zones.clone();
        }
        cfg.max_tcp_flows = self.max_tcp_flows;
        cfg.max_udp_flows = self.max_udp_flows;
        cfg.max_forwards = self.max_forwards;
        cfg.v6 = if self.no_ipv6 {
            None
        } else if let Some(plan) = &self.plan6 {
            Some(plan.clone())
        } else {
            let mut plan =
                ferry_net::config::Ipv6Plan::for_prefix(ferry_net::config::Ipv6Plan::parse_prefix(&self.subnet6)?);
            if let Some(g) = self.gateway6 {
                plan.gateway = g;
                plan.dns_addr = g;
            }
            if let Some(h) = self.host_alias6 {
                plan.host_alias = Some(h);
            }
            Some(plan)
        };
        if let Some(plan) = &mut cfg.v6 {
            plan.stateful |= self.dhcp6_stateful;
            for lease in &self.dhcp6_leases {
                plan.static_leases
                    .push(ferry_net::config::Ipv6Plan::parse_lease(lease)?);
            }
        }
        if let (Some(plan), true) = (&mut cfg.v6, self.no_host_loopback) {
            plan.host_alias = None;
        }
        cfg.unreachable = self.unreachable.clone();
        cfg.outbound4 = self.outbound4;
        cfg.outbound6 = self.outbound6;
        cfg.forward_source = self.forward_source;
        cfg.validate()?;
        Ok(cfg)
    }
}

impl NetArgs {
    /// The network of one `ferry run` VM: defaults, QEMU stream on `sock`.
    pub fn for_vm(sock: PathBuf, dns: DnsArgs) -> NetArgs {
        NetArgs {
            netns: Vec::new(),
            listen_qemu: vec![ferry_net::frontend::listen::ListenAddr::Unix(sock)],
            listen_vfkit: Vec::new(),
            listen_vhost_user: Vec::new(),
            listen_vpnkit: Vec::new(),
            listen_bess: Vec::new(),
            listen_stdio: false,
            vpnkit_macs: Vec::new(),
            api_connect: None,
            api_tcp: Vec::new(),
            publish_auto_socket: None,
            publish_auto_record: None,
            userns: None,
            tap: "tap0".into(),
            configure: false,
            mtu: 65520,
            subnet: "10.0.2.0/24".into(),
            gateway: None,
            host_alias: None,
            no_host_loopback: false,
            subnet6: "fd66:6572:7279::/64".into(),
            gateway6: None,
            host_alias6: None,
            no_ipv6: false,
            dhcp6_stateful: false,
            dhcp6_leases: Vec::new(),
            plan6: None,
            unreachable: Vec::new(),
            api_extra: Vec::new(),
            notification: None,
            seccomp: "kill".into(),
            extra_syscalls: Vec::new(),
            outbound4: None,
            outbound6: None,
            tap_mac: None,
            guest_ip: None,
            gateway_mac: None,
            forward_source: ferry_net::config::ForwardSource::Client,
            dhcp_leases: Vec::new(),
            search: Vec::new(),
            dns,
            publish: Vec::new(),
            publish_to: None,
            publish_auto: false,
            publish_auto_range: 1..=65535,
            pcap: None,
            api: None,
            slirp_api: None,
            dns_addr: None,
            max_tcp_flows: 8192,
            max_udp_flows: 4096,
            max_forwards: ferry_net::forward::MAX_FORWARDS,
            state_file: None,
        }
    }
}

/// Serves `args` on a background thread for the life of the process;
/// returns once everything is bound, or the set-up error.
pub fn spawn_background(args: NetArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    raise_fd_limit(&cfg);
    tune_allocator();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ferry-net".into())
        .spawn(move || {
            let runtime = match local_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                match start(&args, cfg, false).await {
                    Ok(_running) => {
                        let _ = tx.send(Ok(()));
                        std::future::pending::<()>().await
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .context("starting the network thread")?;
    rx.recv().context("the network thread died during set-up")?
}

pub fn run(args: NetArgs) -> anyhow::Result<ExitCode> {
    run_until(args, |_| Ok(()), None)
}

/// Serves `args` until SIGINT/SIGTERM, `exit` is notified, or every
/// namespace is gone; `ready` runs once everything is bound.
/// Keeps glibc's malloc from moving large allocations onto the heap: each
/// TCP flow's socket buffers (512 KiB a direction) are one big zeroed
/// allocation; with glibc's default dynamic mmap threshold, after the first
/// ones are freed later ones come from the heap, where calloc must write
/// every page and freed space stays resident. Measured by bench/soak.sh: a
/// million short connections grew the daemon to 520 MB. With a fixed
/// threshold they stay mmap'd: zero pages until touched, returned at close.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) only changes allocator parameters; called before
    // any flow exists, on a documented option and value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Restores `path` into the stack, then rewrites it whenever what it
/// keeps changes (checked every second).
fn keep_state(stack: &ferry_net::stack::StackRef, path: &std::path::Path) -> anyhow::Result<()> {
    use ferry_net::state;
    let now = std::time::Instant::now();
    if let Some(saved) = state::load(path)? {
        let skipped = state::restore(&mut stack.borrow_mut(), &saved, now);
        for why in &skipped {
            tracing::warn!(file = %path.display(), "state not restored: {why}");
        }
        tracing::info!(file = %path.display(), "state restored");
    }
    let (stack, path) = (stack.clone(), path.to_path_buf());
    let mut last = state::snapshot(&stack.borrow(), now);
    state::save(&path, &last).with_context(|| format!("writing the state file {}", path.display()))?;
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut failed = false;
        loop {
            tick.tick().await;
            let now = std::time::Instant::now();
            let mut current = state::snapshot(&stack.borrow(), now);
            // Lease lifetimes count down every second: write for a change
            // in what is kept, not for the clock.
            if state::same_apart_from_time(&current, &last) {
                continue;
            }
            match state::save(&path, &current) {
                Ok(()) => failed = false,
                Err(e) if !failed => {
                    failed = true;
                    tracing::warn!(file = %path.display(), error = %e, "state file not written");
                }
                Err(_) => {}
            }
            std::mem::swap(&mut last, &mut current);
        }
    });
    Ok(())
}

pub fn run_until(
    args: NetArgs,
    ready: impl FnOnce(&Running) -> anyhow::Result<()>,
    exit: Option<Arc<tokio::sync::Notify>>,
) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    let seccomp = ferry_confine::seccomp::Mode::parse(&args.seccomp)
        .ok_or_else(|| anyhow::anyhow!("--seccomp {:?}: expected kill, trap, log, errno or none", args.seccomp))?;
    if let Some(userns) = &args.userns {
        tap::join_user_namespace(&ns_path(userns, "user"))?;
    }
    raise_fd_limit(&cfg);
    tune_allocator();
    let runtime = local_runtime().context("starting the runtime")?;
    runtime.block_on(async {
        let mut running = start(&args, cfg, true).await?;
        if let Some(path) = &args.state_file {
            keep_state(&running.stack, path)?;
        }
        ready(&running)?;
        // Everything is open and bound: from here on only the calls the
        // NAT, DNS and front ends make (lists beside their code).
        let lists: Vec<&[libc::c_long]> = ferry_net::SYSCALLS
            .iter()
            .chain(&args.extra_syscalls)
            .copied()
            .collect();
        ferry_confine::seccomp::install(seccomp, &lists).context("--seccomp")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // The wait for an exit runs as a task of its own, polled only when
        // one of its four events fires, not beside every packet.
        let waiting = tokio::task::spawn_local(async move {
            let exit_requested = async {
                match &exit {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = exit_requested => {}
                _ = running.all_namespaces_gone() => eprintln!("ferry: every namespace went away; exiting"),
            }
            running
        });
        let running = waiting.await.context("waiting for the signal to exit")?;
        running.log_counters();
        Ok(ExitCode::SUCCESS)
    })
}

/// The network's one thread: a current-thread runtime whose tasks may hold
/// `Rc`s (`spawn_local`). tokio's `LocalRuntime` rather than a `LocalSet`
/// on a runtime: a woken task goes straight to the scheduler's queue
/// instead of through the set's own queue and waker, which every packet
/// paid for (see docs/performance.md, round trips).
fn local_runtime() -> std::io::Result<tokio::runtime::LocalRuntime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(tokio::runtime::LocalOptions::default())
}

fn raise_fd_limit(cfg: &NetConfig) {
    match ferry_net::sys::raise_nofile_limit(None) {
        Ok(n) if (n as usize) < cfg.max_tcp_flows + cfg.max_udp_flows => tracing::warn!(
            limit = n,
            "the open-file limit is below the flow limits; connections may fail with EMFILE (raise `ulimit -n`)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// A network being served on the current thread's local runtime.
pub struct Running {
    /// The network, for clients ferry runs on it itself (gvproxy's SSH
    /// socket forwards).
    pub stack: ferry_net::stack::StackRef,
    metrics: Arc<NetMetrics>,
    dns: Option<Arc<ferry_dns::DnsServer>>,
    namespaces: tokio::task::JoinSet<()>,
    has_namespaces: bool,
}

impl Running {
    /// Resolves when every namespace port has closed (never, if there were none).
    pub async fn all_namespaces_gone(&mut self) {
        if !self.has_namespaces {
            std::future::pending::<()>().await;
        }
        while self.namespaces.join_next().await.is_some() {}
    }

    pub fn log_counters(&self) {
        let dns = self.dns.as_ref().map(|d| d.metrics.render()).unwrap_or_default();
        tracing::info!(counters = %self.metrics.render().replace('\n', " "), dns = %dns, "network stopped");
    }
}

/// Sets up the stack, DNS, taps and listeners; returns once all are bound.
pub async fn start(args: &NetArgs, cfg: NetConfig, announce: bool) -> anyhow::Result<Running> {
    let metrics = Arc::new(NetMetrics::default());
    let stack = Stack::new(cfg.clone(), metrics.clone());
    let dns = args.dns.server(&cfg)?.map(Arc::new);
    if let (Some(dns), Some(addr)) = (&dns, args.dns.listen) {
        let listener = ferry_dns::listener::bind(dns.clone(), addr).await?;
        tokio::task::spawn_local(listener);
    }
    stack.borrow_mut().dns = dns.clone();
    if let Some(path) = &args.pcap {
        stack.borrow_mut().switch.tx.pcap = Some(std::cell::RefCell::new(ferry_net::pcap::PcapWriter::create(path)?));
    }
    let target = match &args.publish_to {
        Some(g) => ferry_net::forward::GuestTarget::parse(g),
        None => ferry_net::forward::GuestTarget::Ip(cfg.first_guest.into()),
    };
    for publish in &args.publish {
        for spec in ferry_net::forward::parse_publish(publish, &target)? {
            stack.borrow_mut().add_forward(spec)?;
        }
    }
    // Bound before "ready" is announced, so clients never race it.
    if let Some(path) = &args.api {
        tokio::task::spawn_local(ferry_net::api::bind_with(stack.clone(), path, args.api_connect)?);
    }
    if let Some(path) = &args.slirp_api {
        tokio::task::spawn_local(ferry_net::api::slirp::bind(stack.clone(), path)?);
    }
    for (addr, connect) in &args.api_tcp {
        let connect = if *connect { args.api_connect } else { None };
        tokio::task::spawn_local(ferry_net::api::bind_tcp(stack.clone(), *addr, connect).await?);
    }
    for path in &args.api_extra {
        tokio::task::spawn_local(ferry_net::api::bind(stack.clone(), path)?);
    }
    if let Some(path) = &args.notification {
        stack.borrow_mut().port_events = Some(super::gvproxy::notifier(path.clone()));
    }
    // Announced once everything is bound, so "ready" means ready.
    let mut ready: Vec<(String, String)> = Vec::new();
    let mut namespaces = tokio::task::JoinSet::new();
    for (i, ns) in args.netns.iter().enumerate() {
        let netns = ns_path(ns, "net");
        let addr = Ipv4Addr::from(u32::from(cfg.first_guest) + u32::try_from(i).unwrap_or(0));
        let configure = args.configure.then_some(TapAddress {
            addr,
            prefix: cfg.prefix,
            gateway: cfg.gateway,
            mtu: cfg.mtu,
            ipv6: cfg.v6.is_some(),
            mac: args.tap_mac,
        });
        let tap = Tap::open(&TapOptions {
            netns: Some(netns.clone()),
            name: args.tap.clone(),
            configure,
        })
        .with_context(|| format!("creating tap {} in {}", args.tap, netns.display()))?;
        namespaces.spawn_local(ferry_net::run_port(stack.clone(), Rc::new(tap)));
        if args.publish_auto {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            watch_listeners(&netns, tx)?;
            tokio::task::spawn_local(publish_auto(
                stack.clone(),
                addr.into(),
                args.publish_auto_range.clone(),
                rx,
                None,
            ));
        }
        let guest = if args.configure {
            addr.to_string()
        } else {
            "by DHCP".to_string()
        };
        ready.push((format!("{} in {}", args.tap, netns.display()), guest));
    }
    // Let the namespace ports attach (and send their first router
    // advertisement) before "ready": a container started at once then
    // gets its IPv6 address without waiting for its next solicitation.
    tokio::task::yield_now().await;
    if let Some(path) = &args.publish_auto_socket {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        guest_listener_feed(path, tx)?;
        tokio::task::spawn_local(publish_auto(
            stack.clone(),
            cfg.first_guest.into(),
            args.publish_auto_range.clone(),
            rx,
            args.publish_auto_record.clone(),
        ));
    }
    for addr in &args.listen_qemu {
        let accept = ferry_net::frontend::listen::qemu_stream(stack.clone(), addr.clone()).await?;
        tokio::task::spawn_local(accept);
        ready.push((format!("QEMU stream on {addr}"), "by DHCP".to_string()));
    }
    for path in &args.listen_vfkit {
        let port = ferry_net::frontend::unixgram::Unixgram::bind(path)?;
        tokio::task::spawn_local(ferry_net::run_port(stack.clone(), port));
        ready.push((format!("vfkit on unixgram://{}", path.display()), "by DHCP".to_string()));
    }
    for addr in &args.listen_vpnkit {
        let mtu = u16::try_from(cfg.mtu).map_err(|_| {
            anyhow::anyhow!(
                "--listen-vpnkit: the MTU {} does not fit vpnkit's 16-bit frame length",
                cfg.mtu
            )
        })?;
        let kind = ferry_net::frontend::listen::StreamKind::Vpnkit {
            mtu,
            macs: args.vpnkit_macs.clone().into(),
        };
        let accept = ferry_net::frontend::listen::stream_listener(stack.clone(), addr.clone(), kind).await?;
        tokio::task::spawn_local(accept);
        ready.push((format!("vpnkit on {addr}"), "by DHCP".to_string()));
    }
    for path in &args.listen_bess {
        tokio::task::spawn_local(ferry_net::frontend::seqpacket::listen(stack.clone(), path)?);
        ready.push((
            format!("bess on unixpacket://{}", path.display()),
            "by DHCP".to_string(),
        ));
    }
    if args.listen_stdio {
        tokio::task::spawn_local(ferry_net::frontend::stdio::attach(&stack)?);
        ready.push(("standard input/output".to_string(), "by DHCP".to_string()));
    }
    for path in &args.listen_vhost_user {
        listen_vhost_user(&stack, path)?;
        ready.push((format!("vhost-user on {}", path.display()), "by DHCP".to_string()));
    }
    for (what, guest) in ready {
        if !announce {
            tracing::debug!("network ready: {what}");
            continue;
        }
        let v6 = match &cfg.v6 {
            Some(p) => format!(
                ", IPv6 {}/64 gateway {} host alias {}",
                p.prefix,
                p.gateway,
                p.host_alias.map_or("disabled".to_string(), |a| a.to_string())
            ),
            None => ", IPv6 off".to_string(),
        };
        eprintln!(
            "ferry: network ready: {what}, gateway {}, host alias {}, guest {guest}, MTU {}, DNS {}{v6}",
            cfg.gateway,
            cfg.host_alias.map_or("disabled".to_string(), |a| a.to_string()),
            cfg.mtu,
            if dns.is_some() { "on" } else { "off" }
        );
    }
    tokio::task::spawn_local(ferry_net::run_timers(stack.clone()));
    Ok(Running {
        stack,
        metrics,
        dns,
        has_namespaces: !args.netns.is_empty(),
        namespaces,
    })
}

#[cfg(target_os = "linux")]
fn listen_vhost_user(stack: &ferry_net::StackRef, path: &std::path::Path) -> anyhow::Result<()> {
    let accept = ferry_net::frontend::vhost_user::serve(stack.clone(), path)?;
    tokio::task::spawn_local(accept);
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn listen_vhost_user(_stack: &ferry_net::StackRef, path: &std::path::Path) -> anyhow::Result<()> {
    anyhow::bail!(
        "--listen-vhost-user {}: vhost-user needs Linux; use --listen-qemu or --listen-vfkit here",
        path.display()
    )
}
