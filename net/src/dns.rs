//! DNS on the gateway address: UDP and TCP port 53 inside the NAT, served
//! by ferry-dns. Nothing is bound on the host for this.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::task::Poll;
use std::time::Duration;

use crate::shards::FlowHandle;
use ferry_dns::{Owner, Step, Transport};
use smoltcp::socket::tcp;

use crate::config::Mac;
use crate::stack::{Stack, StackRef};
use crate::wire::{self, Addrs};

pub const PORT: u16 = 53;
/// A DNS-over-TCP client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

impl Stack {
    /// A UDP query to the gateway.
    pub fn dns_udp(&mut self, guest_mac: Mac, src: (IpAddr, u16), payload: &[u8]) {
        let Some(dns) = self.dns.clone() else { return };
        match dns.answer_now(payload, src.0, Transport::Udp) {
            Step::Reply(reply) => self.dns_reply(guest_mac, src, &reply),
            Step::Forward(pending) => {
                let stack = self.me.clone();
                tokio::task::spawn_local(async move {
                    let reply = dns.finish(pending).await;
                    if let Some(stack) = stack.upgrade() {
                        stack.borrow_mut().dns_reply(guest_mac, src, &reply);
                    }
                });
            }
            Step::Drop => {}
        }
    }

    fn dns_reply(&mut self, guest_mac: Mac, to: (IpAddr, u16), reply: &[u8]) {
        let Some(src_ip) = self.cfg.dns_addr_for(to.0) else {
            return;
        };
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: guest_mac,
            src_ip,
            dst_ip: to.0,
        };
        if let Some(len) = wire::udp_frame(&mut self.scratch, &addrs, PORT, to.1, reply) {
            self.send_scratch(len);
        }
    }

    /// Records a DHCP client's host name as `<name>.<zone>`.
    pub fn dns_register(&mut self, mac: Mac, hostname: &str, ip: IpAddr) {
        if let Some(dns) = &self.dns {
            let mut records = dns.records();
            if ip.is_ipv4() {
                records.unregister_owner(&Owner::Dhcp(mac));
            }
            match records.register(hostname, ip, Owner::Dhcp(mac)) {
                Ok(()) => tracing::debug!(name = hostname, %ip, "registered DHCP host name"),
                Err(e) => tracing::debug!(error = %e, "DHCP host name not registered"),
            }
        }
    }

    /// A guest (by MAC) has a new address: names of its IPv4 address get
    /// its IPv6 addresses in the prefix as AAAA. Names are found through the
    /// IPv4 address, so DHCP host names and names registered by `ferry run`,
    /// the API or `--dns-record` all gain it, whichever family the guest
    /// used first. A guest's EUI-64 (stable SLAAC) address wins.
    pub fn dns_link_families(&mut self, mac: Mac) {
        let Some(dns) = &self.dns else { return };
        let (mut v4s, mut v6s): (Vec<Ipv4Addr>, Vec<Ipv6Addr>) = (Vec::new(), Vec::new());
        for (ip, m) in self.switch.tx.neighbors.iter() {
            match ip {
                _ if *m != mac => {}
                IpAddr::V4(ip) => v4s.push(*ip),
                IpAddr::V6(ip) if !ip.is_unicast_link_local() => v6s.push(*ip),
                IpAddr::V6(_) => {}
            }
        }
        let mut records = dns.records();
        for v4 in v4s {
            for v6 in &v6s {
                records.set_v6_for(v4, *v6, eui64_iid(mac) == v6.octets()[8..]);
            }
        }
    }

    pub fn dns_forget(&mut self, mac: Mac) {
        if let Some(dns) = &self.dns {
            dns.records().unregister_owner(&Owner::Dhcp(mac));
        }
    }
}

/// The interface identifier SLAAC derives from a MAC (modified EUI-64).
fn eui64_iid(mac: Mac) -> [u8; 8] {
    [mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]
}

/// Serves one DNS-over-TCP connection on a smoltcp socket: 2-byte length,
/// message, answer, until the guest closes or idles.
pub async fn tcp_session(stack: &StackRef, handle: FlowHandle, src: IpAddr) {
    let Some(dns) = stack.borrow().dns.clone() else { return };
    let mut msg = Vec::new();
    loop {
        // Read one length-prefixed message.
        let read = tokio::time::timeout(
            TCP_IDLE,
            std::future::poll_fn(|cx| {
                let mut st = stack.borrow_mut();
                let socket = st.shards.socket(handle);
                while socket.can_recv() {
                    let want = if msg.len() < 2 {
                        2
                    } else {
                        2 + usize::from(u16::from_be_bytes([msg[0], msg[1]]))
                    };
                    if msg.len() >= want && msg.len() >= 2 {
                        break;
                    }
                    let _ = socket.recv(|buf| {
                        let n = buf.len().min(want - msg.len());
                        msg.extend_from_slice(&buf[..n]);
                        (n, ())
                    });
                }
                let complete = msg.len() >= 2 && msg.len() == 2 + usize::from(u16::from_be_bytes([msg[0], msg[1]]));
                if complete {
                    return Poll::Ready(true);
                }
                let handshaking = matches!(socket.state(), tcp::State::Listen | tcp::State::SynReceived);
                if !socket.may_recv() && !handshaking {
                    return Poll::Ready(false);
                }
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }),
        )
        .await;
        if !matches!(read, Ok(true)) {
            break;
        }
        let Some(reply) = dns.answer(&msg[2..], src, Transport::Tcp).await else {
            msg.clear();
            continue;
        };
        msg.clear();
        let Ok(len) = u16::try_from(reply.len()) else { break };
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        let mut sent = 0;
        let wrote = tokio::time::timeout(
            TCP_IDLE,
            std::future::poll_fn(|cx| {
                let mut st = stack.borrow_mut();
                let socket = st.shards.socket(handle);
                if !socket.may_send() {
                    return Poll::Ready(false);
                }
                if let Ok(n) = socket.send_slice(&out[sent..]) {
                    sent += n;
                }
                st.poll();
                if sent == out.len() {
                    return Poll::Ready(true);
                }
                st.shards.socket(handle).register_send_waker(cx.waker());
                Poll::Pending
            }),
        )
        .await;
        if !matches!(wrote, Ok(true)) {
            break;
        }
    }
    // Close and wait (bounded) for the FIN exchange.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| {
            let mut st = stack.borrow_mut();
            let socket = st.shards.socket(handle);
            socket.close();
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                return Poll::Ready(());
            }
            socket.register_send_waker(cx.waker());
            socket.register_recv_waker(cx.waker());
            st.poll();
            Poll::Pending
        }),
    )
    .await;
}
