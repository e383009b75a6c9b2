//! UDP NAT: one connected host socket per guest flow, an idle timeout, a
//! bounded table, and ICMP port-unreachable back to the guest when the host
//! reports one (ECONNREFUSED on a connected socket).

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::config::Mac;
use crate::metrics::NetMetrics;
use crate::stack::Stack;
use crate::wire::{self, Addrs};

/// (guest address, guest port, remote address, remote port)
type FlowKey = (IpAddr, u16, IpAddr, u16);

/// System calls of the UDP and ICMP NAT (the seccomp allow-list).
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
];

struct UdpFlow {
    socket: Rc<UdpSocket>,
    guest_mac: Cell<Mac>,
    last_active: Cell<Instant>,
    /// Set when the table evicts the flow: its task closes the socket.
    evicted: tokio::sync::Notify,
}

#[derive(Default)]
pub struct UdpNat {
    flows: HashMap<FlowKey, Rc<UdpFlow>>,
    limit_logged: bool,
}

impl UdpNat {
    pub fn active(&self) -> usize {
        self.flows.len()
    }
}

/// Datagrams relayed per wake-up before yielding.
const BATCH: usize = 64;

fn open_socket(target: SocketAddr, outbound: Option<IpAddr>) -> io::Result<UdpSocket> {
    let bind: IpAddr = match (target.ip(), target.ip().is_loopback()) {
        _ if outbound.is_some() => outbound.unwrap_or(target.ip()),
        (IpAddr::V4(_), true) => Ipv4Addr::LOCALHOST.into(),
        (IpAddr::V4(_), false) => Ipv4Addr::UNSPECIFIED.into(),
        (IpAddr::V6(_), true) => Ipv6Addr::LOCALHOST.into(),
        (IpAddr::V6(_), false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = std::net::UdpSocket::bind((bind, 0))?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

impl Stack {
    pub fn udp_from_guest(
        &mut self,
        guest_mac: Mac,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        payload: &[u8],
        quote: &[u8],
    ) {
        let key: FlowKey = (src.0, src.1, dst.0, dst.1);
        if let Some(flow) = self.udp.flows.get(&key) {
            flow.last_active.set(Instant::now());
            flow.guest_mac.set(guest_mac);
            if send_now(&flow.socket, payload).is_err() {
                NetMetrics::inc(&self.metrics.drop_tx_failed);
            }
            return;
        }
        let Some(target) = self.host_target(dst.0) else {
            NetMetrics::inc(&self.metrics.drop_no_route);
            if self.cfg.is_gateway_addr(dst.0) {
                // Nothing listens on the gateway's UDP ports (yet): say so.
                self.send_unreachable(guest_mac, dst.0, src.0, 3, quote);
            }
            return;
        };
        if self.udp.flows.len() >= self.cfg.max_udp_flows {
            // Full: the least recently active flow makes room (UDP has no
            // connection to keep; a flood of new source ports must not shut
            // out new flows until the idle timeout).
            NetMetrics::inc(&self.metrics.drop_flow_limit);
            if !std::mem::replace(&mut self.udp.limit_logged, true) {
                tracing::warn!(
                    limit = self.cfg.max_udp_flows,
                    "UDP flow table full; closing the least recently used flows for new ones (raise --max-udp-flows)"
                );
            }
            let oldest = self
                .udp
                .flows
                .iter()
                .min_by_key(|(_, f)| f.last_active.get())
                .map(|(k, _)| *k);
            if let Some(flow) = oldest.and_then(|k| self.udp.flows.remove(&k)) {
                flow.evicted.notify_one();
            }
        }
        let socket = match open_socket(SocketAddr::new(target, dst.1), self.cfg.outbound_for(target)) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                tracing::debug!(flow = ?key, error = %e, "udp socket failed");
                NetMetrics::inc(&self.metrics.drop_no_route);
                return;
            }
        };
        if send_now(&socket, payload).is_err() {
            NetMetrics::inc(&self.metrics.drop_tx_failed);
        }
        let flow = Rc::new(UdpFlow {
            socket,
            guest_mac: Cell::new(guest_mac),
            last_active: Cell::new(Instant::now()),
            evicted: tokio::sync::Notify::new(),
        });
        self.udp.flows.insert(key, flow.clone());
        NetMetrics::inc(&self.metrics.udp_flows_opened);
        if key.0.is_ipv6() {
            NetMetrics::inc(&self.metrics.udp6_flows_opened);
        }
        let stack = self.me.clone();
        let idle = self.cfg.udp_idle_timeout;
        tokio::task::spawn_local(async move {
            loop {
                // ERROR too: an ICMP error from the host is a pending socket error,
                // not readable data, and must still wake us.
                let interest = tokio::io::Interest::READABLE | tokio::io::Interest::ERROR;
                let ready = tokio::select! {
                    r = tokio::time::timeout(idle, flow.socket.ready(interest)) => r,
                    // Evicted: the map no longer holds it; dropping our Rc closes the socket.
                    _ = flow.evicted.notified() => return,
                };
                let Some(stack) = stack.upgrade() else { return };
                let ready = match ready {
                    Err(_elapsed) if flow.last_active.get().elapsed() >= idle => {
                        stack.borrow_mut().udp.flows.remove(&key);
                        return;
                    }
                    Err(_elapsed) => continue,
                    Ok(Err(_)) => {
                        stack.borrow_mut().udp.flows.remove(&key);
                        return;
                    }
                    Ok(Ok(ready)) => ready,
                };
                let mut st = stack.borrow_mut();
                if ready.is_error() {
                    let error = flow.socket.take_error();
                    // take_error consumed it; clear tokio's cached readiness too.
                    let _ = flow.socket.try_io(tokio::io::Interest::ERROR, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                    if let Ok(Some(e)) = error {
                        st.udp_host_error(key, &flow, &e);
                    }
                }
                if ready.is_readable() {
                    st.udp_to_guest(key, &flow);
                }
            }
        });
    }

    fn udp_to_guest(&mut self, key: FlowKey, flow: &UdpFlow) {
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: flow.guest_mac.get(),
            src_ip: key.2,
            dst_ip: key.0,
        };
        let offset = wire::udp_payload_offset(key.0);
        for _ in 0..BATCH {
            match flow.socket.try_recv(&mut self.scratch[offset..]) {
                Ok(n) => {
                    flow.last_active.set(Instant::now());
                    if let Some(len) = wire::udp_frame_in_place(&mut self.scratch, &addrs, key.3, key.1, n) {
                        self.send_scratch(len);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => self.udp_host_error(key, flow, &e),
                Err(e) => {
                    tracing::debug!(flow = ?key, error = %e, "udp receive failed");
                    return;
                }
            }
        }
    }
}

impl Stack {
    /// The host's kernel reported an ICMP error for the flow: pass a port
    /// unreachable on to the guest.
    fn udp_host_error(&mut self, key: FlowKey, flow: &UdpFlow, e: &io::Error) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            tracing::debug!(flow = ?key, "host reports port unreachable");
            let (quote, len) = quote_udp(key);
            self.send_unreachable(flow.guest_mac.get(), key.2, key.0, 3, &quote[..len]);
        }
    }
}

/// Sends with a plain non-blocking syscall. tokio's `try_send` is gated on
/// readiness the reactor may not have reported yet for a new socket, which
/// would drop the first datagram of every flow.
fn send_now(socket: &UdpSocket, payload: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send(payload)
}

/// The IP and UDP headers of a datagram from the guest, as an ICMP error
/// quotes them: enough for the guest kernel to find the socket. Returns the
/// buffer and the quote's length (28 bytes for IPv4, 48 for IPv6).
fn quote_udp(key: FlowKey) -> ([u8; 48], usize) {
    let mut q = [0u8; 48];
    let ip_len = match (key.0, key.2) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            q[0] = 0x45;
            q[2..4].copy_from_slice(&28u16.to_be_bytes());
            q[8] = 64;
            q[9] = 17;
            q[12..16].copy_from_slice(&src.octets());
            q[16..20].copy_from_slice(&dst.octets());
            let sum = wire::checksum(&q[..20]);
            q[10..12].copy_from_slice(&sum.to_be_bytes());
            20
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            q[0] = 0x60;
            q[4..6].copy_from_slice(&8u16.to_be_bytes());
            q[6] = 17;
            q[7] = 64;
            q[8..24].copy_from_slice(&src.octets());
            q[24..40].copy_from_slice(&dst.octets());
            40
        }
        _ => return (q, 0),
    };
    q[ip_len..ip_len + 2].copy_from_slice(&key.1.to_be_bytes());
    q[ip_len + 2..ip_len + 4].copy_from_slice(&key.3.to_be_bytes());
    q[ip_len + 4..ip_len + 6].copy_from_slice(&8u16.to_be_bytes());
    (q, ip_len + 8)
}
