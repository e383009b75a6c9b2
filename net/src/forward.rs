//! Port forwards from host sockets into guests (`-p [ip:]host:guest[/udp]`).
//!
//! TCP: each accepted host connection becomes a TCP connection from the
//! gateway to the guest, spliced like an outbound flow. UDP: each host
//! client gets its own gateway port, so the guest's replies find their way
//! back. The guest sees the gateway's address as the source.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, ETHERNET_HEADER_LEN,
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::metrics::NetMetrics;
use crate::stack::Stack;
use crate::switch::BROADCAST;
use crate::wire::{self, Addrs};

/// System calls of port forwards and the API sockets added at run time
/// (the seccomp allow-list).
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[libc::c_long] = &[
    // --publish-auto reads the guest namespace's /proc/thread-self/net/*.
    libc::SYS_openat,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    // dial_guest: a socket pair per connection ferry opens to the guest.
    libc::SYS_socketpair,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// Which guest a forward goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestTarget {
    Ip(IpAddr),
    /// A DNS name registered with ferry (`web` or `web.test`).
    Name(String),
}

impl std::fmt::Display for GuestTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestTarget::Ip(ip) => write!(f, "{ip}"),
            GuestTarget::Name(n) => f.write_str(n),
        }
    }
}

impl GuestTarget {
    /// `HOST:PORT` as gvproxy writes it, IPv6 addresses in brackets.
    pub fn with_port(&self, port: u16) -> String {
        match self {
            GuestTarget::Ip(ip) => std::net::SocketAddr::new(*ip, port).to_string(),
            GuestTarget::Name(n) => format!("{n}:{port}"),
        }
    }
}

impl GuestTarget {
    /// An address (IPv6 with or without brackets) or a guest name.
    pub fn parse(s: &str) -> GuestTarget {
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        bare.parse()
            .map(GuestTarget::Ip)
            .unwrap_or_else(|_| GuestTarget::Name(s.to_ascii_lowercase()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardSpec {
    pub proto: Proto,
    pub host: SocketAddr,
    pub guest: GuestTarget,
    pub guest_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The publish syntax is wrong.
    #[error("port forward {0:?}: expected [HOST_IP:]HOST_PORT[-END]:GUEST_PORT[-END][/tcp|/udp]")]
    Syntax(String),
    /// The two sides of a range differ in length.
    #[error("port forward {0:?}: the host and guest port ranges must be the same length")]
    RangeMismatch(String),
    /// The host port cannot be bound.
    #[error("host port {addr}/{proto} is not available: {source} (choose another host port)")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: io::Error,
    },
    /// The same host port is already forwarded.
    #[error("host port {0}/{1} is already forwarded")]
    Exists(SocketAddr, &'static str),
    /// The forward table is full.
    #[error("ferry already holds {0} port forwards, its limit; remove some before adding more")]
    TooMany(usize),
}

fn port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

/// Parses Docker's `-p` syntax into one spec per port.
pub fn parse_publish(s: &str, guest: &GuestTarget) -> Result<Vec<ForwardSpec>, ForwardError> {
    let bad = || ForwardError::Syntax(s.to_string());
    let (ports, proto) = match s.rsplit_once('/') {
        Some((p, proto)) => (p, Proto::parse(proto).ok_or_else(bad)?),
        None => (s, Proto::Tcp),
    };
    let (host_ip, host_ports, guest_ports) = match ports.rsplitn(3, ':').collect::<Vec<_>>().as_slice() {
        [g, h] => (IpAddr::V4(Ipv4Addr::LOCALHOST), *h, *g),
        // IPv6 host addresses are bracketed, as in Docker: `[::1]:8080:80`.
        [g, h, ip] => {
            let addr = match ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
                Some(v6) => IpAddr::V6(v6.parse().map_err(|_| bad())?),
                None => IpAddr::V4(ip.parse().map_err(|_| bad())?),
            };
            (addr, *h, *g)
        }
        _ => return Err(bad()),
    };
    let (h0, h1) = port_range(host_ports).ok_or_else(bad)?;
    let (g0, g1) = port_range(guest_ports).ok_or_else(bad)?;
    if h1 - h0 != g1 - g0 {
        return Err(ForwardError::RangeMismatch(s.to_string()));
    }
    Ok((0..=h1 - h0)
        .map(|i| ForwardSpec {
            proto,
            host: SocketAddr::new(host_ip, h0 + i),
            guest: guest.clone(),
            guest_port: g0 + i,
        })
        .collect())
}

struct UdpBack {
    socket: Rc<UdpSocket>,
    client: SocketAddr,
    last: Cell<Instant>,
}

/// A forward in place: what it does, its task, and (TCP) a handle on its
/// listening socket so removal can refuse new connections at once.
struct ActiveForward {
    spec: ForwardSpec,
    task: tokio::task::AbortHandle,
    listener: Option<std::net::TcpListener>,
}

/// Forwards and their state, owned by the stack.
#[derive(Default)]
pub struct Forwards {
    active: HashMap<(Proto, SocketAddr), ActiveForward>,
    /// The source a guest sees for a host client → that client (UDP): the
    /// client's own address or the host alias, or the gateway and a port
    /// of ours.
    udp_back: HashMap<SocketAddr, UdpBack>,
    /// (forward, host client) → the source the guest sees (UDP).
    udp_ports: HashMap<(SocketAddr, SocketAddr), SocketAddr>,
    next_port: u16,
}

/// How long a forwarded connection waits for its guest to come up.
const GUEST_WAIT: Duration = Duration::from_secs(30);
const UDP_IDLE: Duration = Duration::from_secs(60);
const FIRST_EPHEMERAL: u16 = 49152;
const UDP_RCVBUF: usize = 4 << 20;
/// By default at most this many forwards (each holds a host socket; see
/// `NetConfig::max_forwards`), however they are added: command line, control API, gvproxy's or slirp4netns's API. A
/// client that can reach an API cannot exhaust the daemon's descriptors.
pub const MAX_FORWARDS: usize = 16384;

impl Stack {
    pub fn list_forwards(&self) -> Vec<ForwardSpec> {
        let mut all: Vec<ForwardSpec> = self.fwd.active.values().map(|a| a.spec.clone()).collect();
        all.sort_by_key(|s| (s.host, s.proto.as_str()));
        all
    }

    /// Binds the host socket now (so conflicts are reported to the caller)
    /// and starts forwarding.
    pub fn add_forward(&mut self, spec: ForwardSpec) -> Result<(), ForwardError> {
        let key = (spec.proto, spec.host);
        if self.fwd.active.contains_key(&key) {
            return Err(ForwardError::Exists(spec.host, spec.proto.as_str()));
        }
        let limit = self.cfg.max_forwards;
        if self.fwd.active.len() >= limit {
            self.metrics
                .forwards_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.first_in_a_minute("forwards") {
                tracing::warn!(limit, "port forward table full; refusing new forwards");
            }
            return Err(ForwardError::TooMany(limit));
        }
        let bind_err = |source| ForwardError::Bind {
            addr: spec.host,
            proto: spec.proto.as_str(),
            source,
        };
        let stack = self.me.clone();
        let mut listener = None;
        let task = match spec.proto {
            Proto::Tcp => {
                let l = std::net::TcpListener::bind(spec.host).map_err(bind_err)?;
                l.set_nonblocking(true).map_err(bind_err)?;
                listener = l.try_clone().ok();
                let l = TcpListener::from_std(l).map_err(bind_err)?;
                tokio::task::spawn_local(tcp_accept_loop(stack, l, spec.clone()))
            }
            Proto::Udp => {
                let s = std::net::UdpSocket::bind(spec.host).map_err(bind_err)?;
                s.set_nonblocking(true).map_err(bind_err)?;
                // Room for bursts while the loop is busy elsewhere.
                let _ = socket2::SockRef::from(&s).set_recv_buffer_size(UDP_RCVBUF);
                let s = Rc::new(UdpSocket::from_std(s).map_err(bind_err)?);
                tokio::task::spawn_local(udp_loop(stack, s, spec.clone()))
            }
        };
        tracing::info!(host = %spec.host, proto = spec.proto.as_str(), guest = %spec.guest, port = spec.guest_port, "forward added");
        self.fwd.active.insert(
            key,
            ActiveForward {
                spec,
                task: task.abort_handle(),
                listener,
            },
        );
        Ok(())
    }

    pub fn remove_forward(&mut self, proto: Proto, host: SocketAddr) -> bool {
        match self.fwd.active.remove(&(proto, host)) {
            Some(active) => {
                // The aborted task drops its listener only when the executor
                // next gets to it; shutting the socket down now means a
                // connection made right after the removal is refused.
                if let Some(l) = &active.listener {
                    let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
                }
                active.task.abort();
                self.fwd.udp_ports.retain(|(fwd, _), _| *fwd != host);
                true
            }
            None => false,
        }
    }

    /// The guest's address, if it is known now.
    fn resolve_guest(&self, target: &GuestTarget) -> Option<IpAddr> {
        match target {
            GuestTarget::Ip(ip) => Some(*ip),
            GuestTarget::Name(name) => {
                if let Some(lease) = self
                    .dhcp
                    .leases()
                    .find(|l| l.hostname.as_deref() == Some(name.as_str()))
                {
                    return Some(IpAddr::V4(lease.ip));
                }
                let dns = self.dns.as_ref()?;
                let records = dns.records();
                let full = if records.zone_of(name).is_some() {
                    name.clone()
                } else {
                    format!("{name}.{}", records.zones().first()?)
                };
                match records.lookup(&full) {
                    ferry_dns::records::Local::Address(a) => a.v4.map(IpAddr::V4).or(a.v6.map(IpAddr::V6)),
                    _ => None,
                }
            }
        }
    }

    /// Broadcasts an ARP request for `ip` so its owner tells us its MAC.
    fn arp_probe(&mut self, ip: Ipv4Addr) {
        let req = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(self.cfg.gateway_mac),
            source_protocol_addr: self.cfg.gateway,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: ip,
        };
        let len = ETHERNET_HEADER_LEN + req.buffer_len();
        let mut frame = EthernetFrame::new_unchecked(&mut self.scratch[..len]);
        frame.set_src_addr(EthernetAddress(self.cfg.gateway_mac));
        frame.set_dst_addr(EthernetAddress(BROADCAST));
        frame.set_ethertype(EthernetProtocol::Arp);
        req.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        self.send_scratch(len);
    }

    /// The guest's address once it and its MAC are known, probing by ARP
    /// or neighbour solicitation.
    fn reachable_guest(&mut self, target: &GuestTarget) -> Option<IpAddr> {
        let ip = self.resolve_guest(target)?;
        if self.switch.tx.neighbors.contains_key(&ip) {
            return Some(ip);
        }
        match ip {
            IpAddr::V4(ip) => self.arp_probe(ip),
            IpAddr::V6(ip) => self.ndp_probe(ip),
        }
        None
    }

    fn ephemeral_port(&mut self) -> u16 {
        for _ in 0..(u16::MAX - FIRST_EPHEMERAL) {
            self.fwd.next_port = self
                .fwd
                .next_port
                .max(FIRST_EPHEMERAL)
                .checked_add(1)
                .unwrap_or(FIRST_EPHEMERAL);
            let p = self.fwd.next_port;
            let taken = self
                .fwd
                .udp_back
                .keys()
                .any(|a| a.port() == p && self.cfg.is_gateway_addr(a.ip()));
            if !taken && !self.tcp_port_in_use(p) {
                return p;
            }
        }
        FIRST_EPHEMERAL
    }

    /// A datagram from a guest to the source of a UDP forward's client (its
    /// own address, the host alias or a gateway port): relay it to that
    /// client from the forward's socket. False if not ours.
    pub fn udp_forward_reply(&mut self, dst: SocketAddr, payload: &[u8]) -> bool {
        if self.fwd.udp_back.is_empty() {
            return false;
        }
        let Some(back) = self.fwd.udp_back.get(&dst) else {
            return false;
        };
        back.last.set(Instant::now());
        if socket2::SockRef::from(&*back.socket)
            .send_to(payload, &back.client.into())
            .is_err()
        {
            NetMetrics::inc(&self.metrics.drop_tx_failed);
        }
        true
    }

    fn udp_from_host(&mut self, spec: &ForwardSpec, socket: &Rc<UdpSocket>, client: SocketAddr, payload: &[u8]) {
        let Some(guest_ip) = self.reachable_guest(&spec.guest) else {
            NetMetrics::inc(&self.metrics.drop_no_neighbor);
            return;
        };
        let Some(&guest_mac) = self.switch.tx.neighbors.get(&guest_ip) else {
            return;
        };
        let seen = match self.fwd.udp_ports.get(&(spec.host, client)) {
            Some(s) => *s,
            None => {
                let now = Instant::now();
                self.fwd
                    .udp_back
                    .retain(|_, b| now.duration_since(b.last.get()) < UDP_IDLE);
                let live: std::collections::HashSet<SocketAddr> = self.fwd.udp_back.keys().copied().collect();
                self.fwd.udp_ports.retain(|_, s| live.contains(s));
                // As the guest should see the client, unless that source is
                // already another client's (then a gateway port).
                let own = self
                    .cfg
                    .forward_source_for(client.ip(), guest_ip)
                    .map(|ip| SocketAddr::new(ip, client.port()))
                    .filter(|s| s.port() != 0 && !self.fwd.udp_back.contains_key(s));
                let seen = match own {
                    Some(s) => s,
                    None => {
                        let Some(gw) = self.cfg.gateway_for(guest_ip) else {
                            return;
                        };
                        SocketAddr::new(gw, self.ephemeral_port())
                    }
                };
                self.fwd.udp_back.insert(
                    seen,
                    UdpBack {
                        socket: socket.clone(),
                        client,
                        last: Cell::new(now),
                    },
                );
                self.fwd.udp_ports.insert((spec.host, client), seen);
                seen
            }
        };
        if let Some(back) = self.fwd.udp_back.get(&seen) {
            back.last.set(Instant::now());
        }
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: guest_mac,
            src_ip: seen.ip(),
            dst_ip: guest_ip,
        };
        let port = seen.port();
        if let Some(len) = wire::udp_frame(&mut self.scratch, &addrs, port, spec.guest_port, payload) {
            self.send_scratch(len);
        }
    }
}

async fn tcp_accept_loop(stack: Weak<std::cell::RefCell<Stack>>, listener: TcpListener, spec: ForwardSpec) {
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        tokio::task::spawn_local(tcp_forward_conn(stack.clone(), conn, peer, spec.clone()));
    }
}

async fn tcp_forward_conn(
    stack: Weak<std::cell::RefCell<Stack>>,
    conn: TcpStream,
    peer: SocketAddr,
    spec: ForwardSpec,
) {
    if !connect_and_splice(stack, conn, Some(peer), &spec.guest, spec.guest_port, GUEST_WAIT).await {
        tracing::warn!(guest = %spec.guest, host = %spec.host, "forwarded connection dropped: the guest did not come up");
    }
}

/// Waits (up to `wait`) for the guest to be reachable, opens a TCP
/// connection to its `port` from the gateway and splices `host` to it.
/// False if the guest never came up.
async fn connect_and_splice(
    stack: Weak<std::cell::RefCell<Stack>>,
    host: impl crate::tcp::HostStream + 'static,
    client: Option<SocketAddr>,
    guest: &GuestTarget,
    port: u16,
    wait: Duration,
) -> bool {
    let deadline = Instant::now() + wait;
    let guest_ip = loop {
        let Some(stack) = stack.upgrade() else { return true };
        if let Some(ip) = stack.borrow_mut().reachable_guest(guest) {
            break ip;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(stack) = stack.upgrade() else { return true };
    let Some((key, handle)) = stack.borrow_mut().tcp_connect_to_guest(guest_ip, port, client) else {
        return true;
    };
    crate::tcp::splice(&stack, key, handle, host).await;
    stack.borrow_mut().tcp_release(key, handle);
    true
}

/// A TCP connection from the gateway to the guest's `port`, for ferry's own
/// clients (the SSH socket forwards of gvproxy mode) rather than a host
/// listener: the returned socket is one end of a pair whose other end is
/// spliced to the guest. A guest that refuses, resets or does not come up
/// within `wait` shows as end-of-file on the returned socket, as a refused
/// connection would. Must be called on the stack's thread.
pub fn dial_guest(
    stack: &crate::stack::StackRef,
    guest: GuestTarget,
    port: u16,
    wait: Duration,
) -> io::Result<tokio::net::UnixStream> {
    let (ours, theirs) = tokio::net::UnixStream::pair()?;
    let stack = Rc::downgrade(stack);
    tokio::task::spawn_local(async move {
        if !connect_and_splice(stack, theirs, None, &guest, port, wait).await {
            tracing::debug!(%guest, port, "dial to the guest: the guest did not come up");
        }
    });
    Ok(ours)
}

async fn udp_loop(stack: Weak<std::cell::RefCell<Stack>>, socket: Rc<UdpSocket>, spec: ForwardSpec) {
    let mut buf = vec![0u8; 65535];
    loop {
        if socket.readable().await.is_err() {
            continue;
        }
        let Some(stack) = stack.upgrade() else { return };
        let mut st = stack.borrow_mut();
        // Drain what is queued: one wake-up per burst, not per datagram.
        while let Ok((n, client)) = socket.try_recv_from(&mut buf) {
            st.udp_from_host(&spec, &socket, client, &buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_publish_syntax() {
        let g = GuestTarget::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)));
        let one = parse_publish("8080:80", &g).unwrap();
        assert_eq!(
            one,
            [ForwardSpec {
                proto: Proto::Tcp,
                host: "127.0.0.1:8080".parse().unwrap(),
                guest: g.clone(),
                guest_port: 80
            }]
        );
        let udp = parse_publish("0.0.0.0:5353:53/udp", &g).unwrap();
        assert_eq!(
            (udp[0].proto, udp[0].host),
            (Proto::Udp, "0.0.0.0:5353".parse().unwrap())
        );
        let range = parse_publish("8000-8002:9000-9002", &g).unwrap();
        assert_eq!(
            range.iter().map(|s| (s.host.port(), s.guest_port)).collect::<Vec<_>>(),
            [(8000, 9000), (8001, 9001), (8002, 9002)]
        );
        let v6 = parse_publish("[::1]:8080:80", &g).unwrap();
        assert_eq!(v6[0].host, "[::1]:8080".parse().unwrap());
        let any6 = parse_publish("[::]:8080:80/udp", &g).unwrap();
        assert_eq!(
            (any6[0].proto, any6[0].host),
            (Proto::Udp, "[::]:8080".parse().unwrap())
        );
        assert_eq!(
            GuestTarget::parse("fd00::100"),
            GuestTarget::Ip("fd00::100".parse().unwrap())
        );
        for bad in [
            "80",
            "a:80",
            "::1:8080:80",
            "8080:80/sctp",
            "0:80",
            "1.2.3:80:80",
            "9-8:9-8",
        ] {
            assert!(parse_publish(bad, &g).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_publish("8000-8001:80", &g),
            Err(ForwardError::RangeMismatch(_))
        ));
        assert_eq!(GuestTarget::parse("Web"), GuestTarget::Name("web".into()));
    }
}
