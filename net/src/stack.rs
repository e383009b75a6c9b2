//! The gateway: owns the switch, the smoltcp interface and the NAT tables,
//! and dispatches every guest frame. Runs on one thread (a tokio
//! current-thread local runtime), shared as `Rc<RefCell<Stack>>`;
//! no borrow is ever held across an `.await`.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use smoltcp::iface::{Config as IfaceConfig, Interface};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress,
    IpCidr, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN, IPV6_HEADER_LEN,
};
use tokio::sync::Notify;

use crate::config::{Mac, NetConfig, GATEWAY_LINK_LOCAL};
use crate::dhcp::{self, DhcpServer};
use crate::dhcp6;
use crate::frontend::Frontend;
use crate::icmp::IcmpNat;
use crate::metrics::NetMetrics;
use crate::switch::{is_multicast, PortId, Switch, BROADCAST};
use crate::tcp::TcpNat;
use crate::udp::UdpNat;
use crate::wire::{self, Addrs};

pub type StackRef = Rc<RefCell<Stack>>;

/// Where the parts of an IP packet (of either family) are: what the NAT
/// decides on. Offsets are from the start of the IP header.
#[derive(Clone, Copy, Debug)]
pub struct L3 {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol, after any IPv6 extension headers.
    pub proto: IpProtocol,
    /// IP header length, extension headers included.
    pub header_len: usize,
    /// IP packet length.
    pub total: usize,
}

/// A front end coming or going (gvproxy's `-notification` reports them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEvent {
    Attached,
    Detached,
    Failed,
}

pub struct Stack {
    /// Told when a front end attaches or detaches.
    pub port_events: Option<Rc<dyn Fn(PortEvent)>>,
    pub cfg: NetConfig,
    pub metrics: Arc<NetMetrics>,
    /// The gateway's TCP sockets and the interfaces that drive them.
    pub shards: crate::shards::Shards,
    /// The shard that takes the packet the switch holds as pending.
    pending_shard: usize,
    /// The TCP flow the last frame's segment went to, for
    /// [`Stack::tcp_write_through`].
    pub(crate) tcp_input: Option<crate::tcp::FlowKey>,
    pub switch: Switch,
    pub dhcp: DhcpServer,
    pub dhcp6: dhcp6::Dhcp6Server,
    /// When each full table last logged (see `table_full`).
    table_warned: std::collections::HashMap<&'static str, Option<smoltcp::time::Instant>>,
    pub tcp: TcpNat,
    pub udp: UdpNat,
    pub icmp: IcmpNat,
    pub fwd: crate::forward::Forwards,
    /// DNS on the gateway (None: port 53 is closed like any other).
    pub dns: Option<Arc<ferry_dns::DnsServer>>,
    /// Frames built outside smoltcp (DHCP, UDP, ICMP, RSTs) are built here.
    pub scratch: Vec<u8>,
    /// Wakes the timer task when a socket may need an earlier poll.
    pub timer: Rc<Notify>,
    pub me: Weak<RefCell<Stack>>,
    epoch: std::time::Instant,
}

impl Stack {
    pub fn new(cfg: NetConfig, metrics: Arc<NetMetrics>) -> StackRef {
        let mtu = usize::try_from(cfg.mtu).unwrap_or(1500);
        let mut switch = Switch::new(mtu, cfg.gateway_mac, cfg.max_tcp_flows, metrics.clone());
        let epoch = std::time::Instant::now();
        let seed = u64::from(std::process::id()) ^ epoch.elapsed().as_nanos() as u64;
        let mut made = 0u64;
        let shards = crate::shards::Shards::new(crate::shards::Shards::count_for(cfg.max_tcp_flows), || {
            let mut iface_cfg = IfaceConfig::new(HardwareAddress::Ip);
            made += 1;
            iface_cfg.random_seed = seed.wrapping_add(made.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut iface = Interface::new(iface_cfg, &mut switch, smoltcp::time::Instant::ZERO);
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.gateway), cfg.prefix));
                if let Some(v6) = &cfg.v6 {
                    let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(v6.gateway), 64));
                }
            });
            // AnyIP plus a default route through our own address: smoltcp
            // accepts TCP for every destination, so a socket can stand in
            // for any host.
            iface.set_any_ip(true);
            let _ = iface.routes_mut().add_default_ipv4_route(cfg.gateway);
            if let Some(v6) = &cfg.v6 {
                let _ = iface.routes_mut().add_default_ipv6_route(v6.gateway);
            }
            iface
        });
        let icmp = IcmpNat::new();
        Rc::new_cyclic(|me| {
            RefCell::new(Stack {
                metrics,
                shards,
                pending_shard: 0,
                tcp_input: None,
                switch,
                dhcp: DhcpServer::new(),
                dhcp6: dhcp6::Dhcp6Server::new(),
                port_events: None,
                table_warned: std::collections::HashMap::new(),
                tcp: TcpNat::default(),
                udp: UdpNat::default(),
                icmp,
                dns: None,
                fwd: crate::forward::Forwards::default(),
                scratch: vec![0; ETHERNET_HEADER_LEN + mtu],
                timer: Rc::new(Notify::new()),
                me: me.clone(),
                epoch,
                cfg,
            })
        })
    }

    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX))
    }

    /// Lets smoltcp process what is pending and send what it has, in the
    /// shards that were touched or whose timers are due.
    pub fn poll(&mut self) {
        let now = self.now();
        self.shards.poll(now, &mut self.switch);
    }

    pub fn add_port(&mut self, port: Rc<dyn Frontend>) -> PortId {
        self.switch.add_port(port)
    }

    /// Where a guest-side destination really goes on the host: the host
    /// alias means the host's loopback (`127.0.0.1` or `::1`); the guest
    /// link, the gateway's own addresses, loopback, multicast and IPv4-mapped
    /// IPv6 addresses are not NATed.
    pub fn host_target(&self, dst: IpAddr) -> Option<IpAddr> {
        match dst {
            IpAddr::V4(dst) => {
                if Some(dst) == self.cfg.host_alias {
                    return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
                }
                if dst == self.cfg.gateway
                    || self.cfg.contains(dst)
                    || dst.is_loopback()
                    || dst.is_broadcast()
                    || dst.is_multicast()
                    || dst.is_unspecified()
                {
                    return None;
                }
                Some(IpAddr::V4(dst))
            }
            IpAddr::V6(dst) => {
                let plan = self.cfg.v6.as_ref()?;
                if Some(dst) == plan.host_alias {
                    return Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
                }
                if plan.is_ours(dst)
                    || plan.contains(dst)
                    || dst.is_loopback()
                    || dst.is_multicast()
                    || dst.is_unspecified()
                    || dst.is_unicast_link_local()
                    || dst.to_ipv4_mapped().is_some()
                {
                    return None;
                }
                Some(IpAddr::V6(dst))
            }
        }
    }

    /// Sends a frame built in `scratch[..len]`.
    pub fn send_scratch(&mut self, len: usize) {
        self.switch.tx.send_frame(&self.scratch[..len], None);
    }

    /// Processes the frame a front end just read into `switch.rx.buf[..len]`.
    pub fn ingress(&mut self, port: PortId, len: usize) {
        self.tcp_input = None;
        NetMetrics::inc(&self.metrics.rx_frames);
        NetMetrics::add(&self.metrics.rx_bytes, len as u64);
        if len > self.switch.rx.buf.len() {
            NetMetrics::inc(&self.metrics.drop_oversized);
            return;
        }
        let mut buf = std::mem::take(&mut self.switch.rx.buf);
        if let Some(pcap) = &self.switch.tx.pcap {
            pcap.borrow_mut().record(&buf[..len]);
        }
        if buf.get(..6) == Some(&self.cfg.gateway_mac[..]) {
            // A SYN to the gateway's stack announcing the guest's link MSS
            // is told 64 KiB, so the stack sends large segments; the switch
            // cuts them back to the guest's MTU (crate::gso).
            crate::gso::raise_syn_mss(&mut buf[..len], self.switch.mtu);
        }
        self.dispatch(port, &buf[..len]);
        self.switch.rx.buf = buf;
        // Hand smoltcp what dispatch queued for it (at most one packet).
        if self.switch.rx.pending.is_some() {
            let now = self.now();
            self.shards.ingress(self.pending_shard, now, &mut self.switch);
            self.switch.rx.pending = None;
        }
    }

    fn dispatch(&mut self, port: PortId, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        };
        let src: Mac = eth.src_addr().0;
        let dst: Mac = eth.dst_addr().0;
        if is_multicast(&src) || src == self.cfg.gateway_mac {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        }
        let evicted = self.switch.tx.mac_port.evictions;
        self.switch.tx.mac_port.insert(src, port);
        if self.switch.tx.mac_port.evictions != evicted {
            NetMetrics::inc(&self.metrics.mac_table_evictions);
            self.table_full("MAC table", crate::switch::MAX_MACS);
        }
        if dst != self.cfg.gateway_mac {
            if is_multicast(&dst) {
                // Other guests see broadcasts too (ARP between guests).
                self.switch.tx.send_frame(frame, Some(port));
            } else {
                if self.switch.tx.mac_port.contains_key(&dst) {
                    NetMetrics::inc(&self.metrics.switched_frames);
                }
                self.switch.tx.send_frame(frame, Some(port));
                return;
            }
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp(src, eth.payload()),
            EthernetProtocol::Ipv4 => self.ipv4(src, frame),
            EthernetProtocol::Ipv6 if self.cfg.v6.is_some() => self.ipv6(src, frame),
            _ => NetMetrics::inc(&self.metrics.drop_unsupported),
        }
    }

    /// Answers ARP for the gateway and the host alias; learns senders.
    fn arp(&mut self, src_mac: Mac, payload: &[u8]) {
        let Ok(packet) = ArpPacket::new_checked(payload) else {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        };
        if source_hardware_addr.0 != src_mac {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        }
        self.learn(IpAddr::V4(source_protocol_addr), src_mac);
        let ours = target_protocol_addr == self.cfg.gateway
            || target_protocol_addr == self.cfg.dns_addr
            || Some(target_protocol_addr) == self.cfg.host_alias;
        if operation != ArpOperation::Request || !ours {
            return;
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(self.cfg.gateway_mac),
            source_protocol_addr: target_protocol_addr,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let len = ETHERNET_HEADER_LEN + reply.buffer_len();
        let mut frame = EthernetFrame::new_unchecked(&mut self.scratch[..len]);
        frame.set_src_addr(EthernetAddress(self.cfg.gateway_mac));
        frame.set_dst_addr(source_hardware_addr);
        frame.set_ethertype(EthernetProtocol::Arp);
        reply.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        self.send_scratch(len);
    }

    /// One log line per table per minute while a guest keeps it full.
    fn table_full(&mut self, table: &'static str, cap: usize) {
        if self.first_in_a_minute(table) {
            tracing::warn!(table, cap, "table full: a guest is sending from more MACs or addresses than ferry keeps; the least recently seen entries make room (see the *_evictions counters)");
        }
    }

    /// Whether a warning about `what` has not been logged in the last
    /// minute (and it is now).
    pub(crate) fn first_in_a_minute(&mut self, what: &'static str) -> bool {
        let now = self.now();
        let last = self.table_warned.entry(what).or_insert(None);
        let due = last.is_none_or(|t| now - t >= smoltcp::time::Duration::from_secs(60));
        if due {
            *last = Some(now);
        }
        due
    }

    /// Remembers which MAC owns a guest address (either family). A guest's
    /// first address in the IPv6 prefix also becomes the AAAA of its names.
    pub(crate) fn learn(&mut self, ip: IpAddr, mac: Mac) {
        let guest = match ip {
            IpAddr::V4(ip) => {
                self.cfg.contains(ip)
                    && ip != self.cfg.gateway
                    && ip != self.cfg.dns_addr
                    && Some(ip) != self.cfg.host_alias
            }
            IpAddr::V6(ip) => self
                .cfg
                .v6
                .as_ref()
                .is_some_and(|p| !p.is_ours(ip) && (p.contains(ip) || ip.is_unicast_link_local())),
        };
        if !guest {
            return;
        }
        let evicted = self.switch.tx.neighbors.evictions;
        let previous = self.switch.tx.neighbors.insert(ip, mac);
        if self.switch.tx.neighbors.evictions != evicted {
            NetMetrics::inc(&self.metrics.neighbor_evictions);
            self.table_full("neighbour table", crate::switch::MAX_NEIGHBORS);
        }
        if previous != Some(mac) && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
            self.dns_link_families(mac);
        }
    }

    fn ipv4(&mut self, src_mac: Mac, frame: &[u8]) {
        let ip_bytes = &frame[ETHERNET_HEADER_LEN..];
        let Ok(ip) = Ipv4Packet::new_checked(ip_bytes) else {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        };
        if !ip.verify_checksum() {
            NetMetrics::inc(&self.metrics.drop_bad_checksum);
            return;
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            NetMetrics::inc(&self.metrics.drop_unsupported);
            return;
        }
        NetMetrics::inc(&self.metrics.rx_ipv4);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if !src.is_unspecified() {
            self.learn(IpAddr::V4(src), src_mac);
        }
        let l3 = L3 {
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            proto: ip.next_header(),
            header_len: usize::from(ip.header_len()),
            total: usize::from(ip.total_len()),
        };
        self.transport(src_mac, frame, l3);
    }

    fn ipv6(&mut self, src_mac: Mac, frame: &[u8]) {
        let ip_bytes = &frame[ETHERNET_HEADER_LEN..];
        let Ok(ip) = Ipv6Packet::new_checked(ip_bytes) else {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        };
        NetMetrics::inc(&self.metrics.rx_ipv6);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if src.is_multicast() {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        }
        let total = IPV6_HEADER_LEN + usize::from(ip.payload_len());
        // Walk the extension headers to the transport header. Hop-by-hop
        // (MLD reports carry one) and destination options are skipped;
        // fragments and routing headers are not supported.
        let (mut next, mut at) = (ip.next_header(), IPV6_HEADER_LEN);
        loop {
            match next {
                IpProtocol::HopByHop | IpProtocol::Ipv6Opts => {
                    let Some(&[nh, len]) = ip_bytes.get(at..at + 2).and_then(|h| <&[u8; 2]>::try_from(h).ok()) else {
                        NetMetrics::inc(&self.metrics.drop_malformed);
                        return;
                    };
                    next = IpProtocol::from(nh);
                    at += 8 + 8 * usize::from(len);
                    if at > total {
                        NetMetrics::inc(&self.metrics.drop_malformed);
                        return;
                    }
                }
                IpProtocol::Ipv6Frag | IpProtocol::Ipv6Route => {
                    NetMetrics::inc(&self.metrics.drop_unsupported);
                    return;
                }
                _ => break,
            }
        }
        if !src.is_unspecified() {
            self.learn(IpAddr::V6(src), src_mac);
        }
        let l3 = L3 {
            src: IpAddr::V6(src),
            dst: IpAddr::V6(dst),
            proto: next,
            header_len: at,
            total,
        };
        if next == IpProtocol::Icmpv6 {
            let payload = &ip_bytes[at..total];
            let sum = wire::checksum_with(
                wire::pseudo_v6(&src.octets(), &dst.octets(), 58, payload.len()),
                payload,
            );
            if payload.len() < 4 || sum != 0 {
                NetMetrics::inc(&self.metrics.drop_bad_checksum);
                return;
            }
            if payload[0] != 128 {
                // Not an echo request: neighbour discovery, MLD, errors.
                self.ndisc(src_mac, src, dst, ip.hop_limit(), payload);
                return;
            }
            if at != IPV6_HEADER_LEN && self.cfg.is_gateway_addr(l3.dst) {
                // smoltcp answers echo itself; keep its input simple.
                NetMetrics::inc(&self.metrics.drop_unsupported);
                return;
            }
        }
        self.transport(src_mac, frame, l3);
    }

    /// UDP, TCP and ICMP echo of either family.
    fn transport(&mut self, src_mac: Mac, frame: &[u8], l3: L3) {
        let ip_bytes = &frame[ETHERNET_HEADER_LEN..];
        let L3 {
            src,
            dst,
            proto,
            header_len,
            total,
        } = l3;
        let payload = &ip_bytes[header_len..total];
        let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
        match proto {
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(payload) else {
                    NetMetrics::inc(&self.metrics.drop_malformed);
                    return;
                };
                // A zero UDP checksum means "none" over IPv4; IPv6 requires one.
                if (udp.checksum() != 0 || src.is_ipv6()) && !udp.verify_checksum(&s, &d) {
                    NetMetrics::inc(&self.metrics.drop_bad_checksum);
                    return;
                }
                let udp_payload = &udp.payload()[..usize::from(udp.len()).saturating_sub(8).min(udp.payload().len())];
                let dns = self.cfg.dns_addr_for(dst) == Some(dst) && self.dns.is_some();
                match (src, udp.dst_port()) {
                    (IpAddr::V4(_), dhcp::SERVER_PORT) => self.dhcp(src_mac, udp_payload),
                    (IpAddr::V6(from), dhcp6::SERVER_PORT) => self.dhcp6(src_mac, from, udp.src_port(), udp_payload),
                    (_, crate::dns::PORT) if dns => self.dns_udp(src_mac, (src, udp.src_port()), udp_payload),
                    (_, port) if self.udp_forward_reply(std::net::SocketAddr::new(dst, port), udp_payload) => {
                        // A reply through a UDP port forward.
                    }
                    _ => {
                        let quote = &ip_bytes[..(header_len + 8).min(total)];
                        self.udp_from_guest(
                            src_mac,
                            (src, udp.src_port()),
                            (dst, udp.dst_port()),
                            udp_payload,
                            quote,
                        );
                    }
                }
            }
            IpProtocol::Tcp => {
                let Ok(tcp) = TcpPacket::new_checked(payload) else {
                    NetMetrics::inc(&self.metrics.drop_malformed);
                    return;
                };
                if !tcp.verify_checksum(&s, &d) {
                    NetMetrics::inc(&self.metrics.drop_bad_checksum);
                    return;
                }
                if tcp.syn() && !tcp.ack() && !self.tcp_flow_exists(src, tcp.src_port(), dst, tcp.dst_port()) {
                    self.tcp_syn(src_mac, frame, l3);
                    return;
                }
                let key = (src, tcp.src_port(), dst, tcp.dst_port());
                if let Some((_, seg)) = crate::resend::Segment::of(&tcp) {
                    let now = self.now();
                    self.switch.tx.resend.from_guest(key, &seg, now);
                }
                let start = ETHERNET_HEADER_LEN;
                self.switch.rx.pending = Some(start..start + total);
                self.pending_shard = self.shards.shard_of(&key);
                self.tcp_input = Some(key);
            }
            IpProtocol::Icmp | IpProtocol::Icmpv6 => {
                if self.is_own_echo_target(dst) {
                    // Echo to the gateway is answered by the gateway itself.
                    let start = ETHERNET_HEADER_LEN;
                    if src.is_ipv6() || wire::checksum(payload) == 0 {
                        self.switch.rx.pending = Some(start..start + total);
                        self.pending_shard = 0;
                    } else {
                        NetMetrics::inc(&self.metrics.drop_bad_checksum);
                    }
                } else {
                    self.icmp_from_guest(src_mac, src, dst, payload);
                }
            }
            _ => NetMetrics::inc(&self.metrics.drop_unsupported),
        }
    }

    /// Addresses whose echo requests the gateway answers itself.
    fn is_own_echo_target(&self, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(d) => d == self.cfg.gateway,
            IpAddr::V6(d) => self.cfg.v6.as_ref().is_some_and(|p| {
                d == p.gateway || d == GATEWAY_LINK_LOCAL || (d == p.dns_addr && p.dns_addr != p.gateway)
            }),
        }
    }

    fn dhcp(&mut self, src_mac: Mac, payload: &[u8]) {
        let Ok(req) = dhcp::parse(payload) else {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        };
        if req.chaddr != src_mac {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        }
        let mut body = [0u8; 576];
        let now = std::time::Instant::now();
        let reply = self.dhcp.handle(&self.cfg, &req, now, &mut body);
        // Keep DNS in step with the lease table.
        match self.dhcp.lease(&src_mac).map(|l| (l.hostname.clone(), l.ip)) {
            Some((Some(name), ip)) => self.dns_register(src_mac, &name, IpAddr::V4(ip)),
            Some((None, _)) => {}
            None => self.dns_forget(src_mac),
        }
        let Some(reply) = reply else { return };
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: if reply.broadcast { BROADCAST } else { src_mac },
            src_ip: IpAddr::V4(self.cfg.gateway),
            dst_ip: IpAddr::V4(reply.dst_ip),
        };
        if reply.broadcast {
            // Broadcast replies go only to the asking guest's port.
            let Some(len) = wire::udp_frame(
                &mut self.scratch,
                &addrs,
                dhcp::SERVER_PORT,
                dhcp::CLIENT_PORT,
                &body[..reply.len],
            ) else {
                return;
            };
            if let Some(port) = self
                .switch
                .tx
                .mac_port
                .get(&src_mac)
                .and_then(|p| self.switch.tx.ports.get(*p))
                .cloned()
                .flatten()
            {
                if port.send(&self.scratch[..len]).is_ok() {
                    NetMetrics::inc(&self.metrics.tx_frames);
                }
            }
        } else if let Some(len) = wire::udp_frame(
            &mut self.scratch,
            &addrs,
            dhcp::SERVER_PORT,
            dhcp::CLIENT_PORT,
            &body[..reply.len],
        ) {
            self.send_scratch(len);
        }
        NetMetrics::inc(&self.metrics.dhcp_replies);
    }

    /// Sends an ICMP destination-unreachable to a guest, quoting its packet.
    /// ICMP codes are ICMPv4's; `wire` maps them for IPv6.
    pub fn send_unreachable(&mut self, guest_mac: Mac, from: IpAddr, to: IpAddr, code: u8, quote: &[u8]) {
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: guest_mac,
            src_ip: from,
            dst_ip: to,
        };
        if let Some(len) = wire::icmp_unreachable(&mut self.scratch, &addrs, code, quote) {
            self.send_scratch(len);
        }
    }
}
