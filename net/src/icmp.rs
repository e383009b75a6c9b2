//! ICMP echo NAT through unprivileged ICMP ("ping") sockets. The gateway's
//! own address is answered by smoltcp; every other destination gets a real
//! echo from the host's kernel, or nothing: replies are never forged. When
//! `net.ipv4.ping_group_range` excludes us, that is logged once.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::config::Mac;
use crate::metrics::NetMetrics;
use crate::stack::Stack;
use crate::wire::{self, Addrs};

/// (guest address, remote address, guest's echo identifier)
type FlowKey = (IpAddr, IpAddr, u16);

const IDLE: Duration = Duration::from_secs(30);
const MAX_FLOWS: usize = 256;

struct EchoFlow {
    socket: AsyncFd<Socket>,
    guest_mac: std::cell::Cell<Mac>,
    last_active: std::cell::Cell<Instant>,
}

pub struct IcmpNat {
    flows: HashMap<FlowKey, Rc<EchoFlow>>,
    /// None until the first echo: whether ping sockets are permitted.
    permitted: Option<bool>,
}

impl IcmpNat {
    pub fn new() -> Self {
        IcmpNat {
            flows: HashMap::new(),
            permitted: None,
        }
    }
}

impl Default for IcmpNat {
    fn default() -> Self {
        IcmpNat::new()
    }
}

fn ping_socket(target: IpAddr) -> io::Result<Socket> {
    let (domain, protocol) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(protocol))?;
    socket.set_nonblocking(true)?;
    socket.connect(&SockAddr::from(SocketAddr::new(target, 0)))?;
    Ok(socket)
}

impl Stack {
    /// An ICMP or ICMPv6 message to somewhere beyond the gateway.
    pub fn icmp_from_guest(&mut self, guest_mac: Mac, src: IpAddr, dst: IpAddr, icmp: &[u8]) {
        // Only echo requests (ICMP type 8, ICMPv6 type 128; code 0) with a
        // valid checksum (ICMPv6's, with its pseudo-header, was checked by
        // the caller).
        let echo = if src.is_ipv6() { 128 } else { 8 };
        if icmp.len() < 8 || icmp[0] != echo || icmp[1] != 0 {
            NetMetrics::inc(&self.metrics.drop_unsupported);
            return;
        }
        if src.is_ipv4() && wire::checksum(icmp) != 0 {
            NetMetrics::inc(&self.metrics.drop_bad_checksum);
            return;
        }
        let Some(target) = self.host_target(dst) else {
            NetMetrics::inc(&self.metrics.drop_no_route);
            return;
        };
        if self.icmp.permitted == Some(false) {
            NetMetrics::inc(&self.metrics.drop_no_route);
            return;
        }
        let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
        let key = (src, dst, ident);
        let flow = match self.icmp.flows.get(&key) {
            Some(flow) => flow.clone(),
            None => match self.open_echo_flow(key, target, guest_mac) {
                Some(flow) => flow,
                None => return,
            },
        };
        flow.last_active.set(Instant::now());
        flow.guest_mac.set(guest_mac);
        // The kernel sets the identifier and checksum itself.
        if flow.socket.get_ref().send(icmp).is_ok() {
            NetMetrics::inc(&self.metrics.icmp_echo_relayed);
        } else {
            NetMetrics::inc(&self.metrics.drop_tx_failed);
        }
    }

    fn open_echo_flow(&mut self, key: FlowKey, target: IpAddr, guest_mac: Mac) -> Option<Rc<EchoFlow>> {
        if self.icmp.flows.len() >= MAX_FLOWS {
            NetMetrics::inc(&self.metrics.drop_flow_limit);
            return None;
        }
        let socket = match ping_socket(target) {
            Ok(s) => s,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                    self.icmp.permitted = Some(false);
                    let gid = crate::sys::effective_gid();
                    tracing::warn!(
                        "ICMP echo beyond the gateway is disabled: net.ipv4.ping_group_range does not include gid {gid}; \
                         allow it with `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"`"
                    );
                } else {
                    tracing::debug!(error = %e, "ping socket failed");
                }
                NetMetrics::inc(&self.metrics.drop_no_route);
                return None;
            }
        };
        self.icmp.permitted = Some(true);
        let socket = crate::sys::async_fd(socket).ok()?;
        let flow = Rc::new(EchoFlow {
            socket,
            guest_mac: std::cell::Cell::new(guest_mac),
            last_active: std::cell::Cell::new(Instant::now()),
        });
        self.icmp.flows.insert(key, flow.clone());
        let stack = self.me.clone();
        let task_flow = flow.clone();
        tokio::task::spawn_local(async move {
            let flow = task_flow;
            loop {
                let ready = tokio::time::timeout(IDLE, flow.socket.readable()).await;
                let Some(stack) = stack.upgrade() else { return };
                let mut guard = match ready {
                    Err(_) if flow.last_active.get().elapsed() >= IDLE => {
                        stack.borrow_mut().icmp.flows.remove(&key);
                        return;
                    }
                    Err(_) => continue,
                    Ok(Err(_)) => return,
                    Ok(Ok(guard)) => guard,
                };
                let mut st = stack.borrow_mut();
                let mut reply = [0u8; 2048];
                loop {
                    match guard.try_io(|s| {
                        let mut socket: &Socket = s.get_ref();
                        socket.read(&mut reply)
                    }) {
                        Ok(Ok(n)) => st.echo_reply_to_guest(key, &flow, &mut reply[..n]),
                        Ok(Err(_)) => break,
                        Err(_would_block) => break,
                    }
                }
            }
        });
        Some(flow)
    }

    fn echo_reply_to_guest(&mut self, key: FlowKey, flow: &EchoFlow, icmp: &mut [u8]) {
        let reply = if key.0.is_ipv6() { 129 } else { 0 };
        if icmp.len() < 8 || icmp[0] != reply {
            return;
        }
        // Restore the guest's identifier; icmp_frame fixes the checksum.
        icmp[4..6].copy_from_slice(&key.2.to_be_bytes());
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: flow.guest_mac.get(),
            src_ip: key.1,
            dst_ip: key.0,
        };
        if let Some(len) = wire::icmp_frame(&mut self.scratch, &addrs, icmp.len(), |out| out.copy_from_slice(icmp)) {
            self.send_scratch(len);
        }
    }
}
