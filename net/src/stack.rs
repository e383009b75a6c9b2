//! The gateway: owns the switch, the smoltcp interface and the NAT tables,
//! and dispatches every guest frame. Runs on one thread (a tokio
//! current-thread runtime with a `LocalSet`), shared as `Rc<RefCell<Stack>>`;
//! no borrow is ever held across an `.await`.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketSet};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress,
    IpCidr, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN,
};
use tokio::sync::Notify;

use crate::config::{Mac, NetConfig};
use crate::dhcp::{self, DhcpServer};
use crate::frontend::Frontend;
use crate::icmp::IcmpNat;
use crate::metrics::NetMetrics;
use crate::switch::{is_multicast, PortId, Switch, BROADCAST};
use crate::tcp::TcpNat;
use crate::udp::UdpNat;
use crate::wire::{self, Addrs};

pub type StackRef = Rc<RefCell<Stack>>;

/// Egress passes per poll: up to this many segments per socket at once.
const EGRESS_ROUNDS: usize = 64;

pub struct Stack {
    pub cfg: NetConfig,
    pub metrics: Arc<NetMetrics>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub switch: Switch,
    pub dhcp: DhcpServer,
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
        let mut switch = Switch::new(mtu, cfg.gateway_mac, metrics.clone());
        let epoch = std::time::Instant::now();
        let mut iface_cfg = IfaceConfig::new(HardwareAddress::Ip);
        iface_cfg.random_seed = u64::from(std::process::id()) ^ epoch.elapsed().as_nanos() as u64;
        let mut iface = Interface::new(iface_cfg, &mut switch, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.gateway), cfg.prefix));
        });
        // AnyIP plus a default route through our own address: smoltcp accepts
        // TCP for every destination, so a socket can stand in for any host.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(cfg.gateway);
        let icmp = IcmpNat::new();
        Rc::new_cyclic(|me| {
            RefCell::new(Stack {
                metrics,
                iface,
                sockets: SocketSet::new(Vec::new()),
                switch,
                dhcp: DhcpServer::new(),
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

    /// Lets smoltcp process what is pending and send what it has. One
    /// egress pass sends at most one segment per socket, so repeat (bounded)
    /// until the send windows are drained: otherwise host-to-guest transfers
    /// would be clocked by the guest's ACKs, one segment per ACK.
    pub fn poll(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.switch, &mut self.sockets);
        for _ in 0..EGRESS_ROUNDS {
            if self.iface.poll_egress(now, &mut self.switch, &mut self.sockets) == PollResult::None {
                break;
            }
        }
    }

    pub fn add_port(&mut self, port: Rc<dyn Frontend>) -> PortId {
        self.switch.add_port(port)
    }

    /// Where a guest-side destination really goes on the host: the host
    /// alias means the host's loopback; other subnet addresses, the gateway
    /// and loopback are not NATed.
    pub fn host_target(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if Some(dst) == self.cfg.host_alias {
            return Some(Ipv4Addr::LOCALHOST);
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
        Some(dst)
    }

    /// Sends a frame built in `scratch[..len]`.
    pub fn send_scratch(&mut self, len: usize) {
        self.switch.tx.send_frame(&self.scratch[..len], None);
    }

    /// Processes the frame a front end just read into `switch.rx.buf[..len]`.
    pub fn ingress(&mut self, port: PortId, len: usize) {
        NetMetrics::inc(&self.metrics.rx_frames);
        NetMetrics::add(&self.metrics.rx_bytes, len as u64);
        if len > self.switch.rx.buf.len() {
            NetMetrics::inc(&self.metrics.drop_oversized);
            return;
        }
        let buf = std::mem::take(&mut self.switch.rx.buf);
        if let Some(pcap) = &self.switch.tx.pcap {
            pcap.borrow_mut().record(&buf[..len]);
        }
        self.dispatch(port, &buf[..len]);
        self.switch.rx.buf = buf;
        // Hand smoltcp what dispatch queued for it (at most one packet).
        if self.switch.rx.pending.is_some() {
            let now = self.now();
            self.iface.poll_ingress_single(now, &mut self.switch, &mut self.sockets);
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
        self.switch.tx.mac_port.insert(src, port);
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
        self.learn(source_protocol_addr, src_mac);
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

    fn learn(&mut self, ip: Ipv4Addr, mac: Mac) {
        if self.cfg.contains(ip) && ip != self.cfg.gateway && ip != self.cfg.dns_addr && Some(ip) != self.cfg.host_alias
        {
            self.switch.tx.neighbors.insert(ip, mac);
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
        let total = usize::from(ip.total_len());
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if !src.is_unspecified() {
            self.learn(src, src_mac);
        }
        let header_len = usize::from(ip.header_len());
        let payload = &ip_bytes[header_len..total];
        let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
        match ip.next_header() {
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(payload) else {
                    NetMetrics::inc(&self.metrics.drop_malformed);
                    return;
                };
                // A zero UDP checksum means "none" over IPv4.
                if udp.checksum() != 0 && !udp.verify_checksum(&s, &d) {
                    NetMetrics::inc(&self.metrics.drop_bad_checksum);
                    return;
                }
                let udp_payload = &udp.payload()[..usize::from(udp.len()).saturating_sub(8).min(udp.payload().len())];
                if udp.dst_port() == dhcp::SERVER_PORT {
                    self.dhcp(src_mac, udp_payload);
                } else if dst == self.cfg.dns_addr && udp.dst_port() == crate::dns::PORT && self.dns.is_some() {
                    self.dns_udp(src_mac, (src, udp.src_port()), udp_payload);
                } else if dst == self.cfg.gateway && self.udp_forward_reply(udp.dst_port(), udp_payload) {
                    // A reply through a UDP port forward.
                } else {
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
                    self.tcp_syn(src_mac, frame, &ip_bytes[..total]);
                    return;
                }
                let start = ETHERNET_HEADER_LEN;
                self.switch.rx.pending = Some(start..start + total);
            }
            IpProtocol::Icmp => {
                if dst == self.cfg.gateway {
                    // Echo to the gateway is answered by the gateway itself.
                    let start = ETHERNET_HEADER_LEN;
                    if wire::checksum(payload) == 0 {
                        self.switch.rx.pending = Some(start..start + total);
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
            Some((Some(name), ip)) => self.dns_register_lease(src_mac, &name, ip),
            Some((None, _)) => {}
            None => self.dns_forget(src_mac),
        }
        let Some(reply) = reply else { return };
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: if reply.broadcast { BROADCAST } else { src_mac },
            src_ip: self.cfg.gateway,
            dst_ip: reply.dst_ip,
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
    pub fn send_unreachable(&mut self, guest_mac: Mac, from: Ipv4Addr, to: Ipv4Addr, code: u8, quote: &[u8]) {
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
