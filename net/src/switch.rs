//! The guest-facing L2: front-end ports, MAC learning, the guests' ARP
//! entries, and the smoltcp `Device` through which the gateway's IP stack
//! sends and receives. smoltcp runs with `Medium::Ip`; Ethernet framing and
//! ARP are ours, so the switch decides who answers for which address.

use std::net::IpAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, ETHERNET_HEADER_LEN,
};

use crate::bounded::BoundedMap;
use crate::config::Mac;
use crate::frontend::Frontend;
use crate::metrics::NetMetrics;
use crate::resend::{ResendFilter, Segment};

pub type PortId = usize;

pub const BROADCAST: Mac = [0xff; 6];

/// Guest MACs the switch remembers: far more than the guests one ferry
/// serves; a guest inventing source MACs only evicts its own inventions.
pub const MAX_MACS: usize = 1024;
/// Guest addresses (IPv4, SLAAC, temporary and link-local IPv6 per guest).
pub const MAX_NEIGHBORS: usize = 4096;

pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 == 1
}

/// The receive side: one frame at a time, read in place by a front end.
pub struct RxSlot {
    pub buf: Vec<u8>,
    /// The IP packet inside `buf` that smoltcp should take next.
    pub pending: Option<Range<usize>>,
}

/// The transmit side: ports and where each guest is.
pub struct TxSide {
    pub ports: Vec<Option<Rc<dyn Frontend>>>,
    /// Where each guest MAC is (at most [`MAX_MACS`]).
    pub mac_port: BoundedMap<Mac, PortId>,
    /// Guests' addresses of both families (ARP and neighbour discovery;
    /// at most [`MAX_NEIGHBORS`]).
    pub neighbors: BoundedMap<IpAddr, Mac>,
    pub gateway_mac: Mac,
    buf: Vec<u8>,
    /// The guests' MTU: larger TCP segments are split to it for ports
    /// whose guests do not take them whole.
    mtu: usize,
    segments: std::cell::RefCell<Vec<u8>>,
    pub metrics: Arc<NetMetrics>,
    /// Capture of every frame in and out (`--pcap`).
    pub pcap: Option<std::cell::RefCell<crate::pcap::PcapWriter>>,
    /// Holds back the stack's spurious resends (see [`crate::resend`]).
    pub resend: ResendFilter,
}

impl TxSide {
    /// Sends a whole frame to the port that owns its destination MAC, or to
    /// every port but `except` for broadcast and multicast.
    pub fn send_frame(&self, frame: &[u8], except: Option<PortId>) {
        let Some(dst) = frame.get(..6).and_then(|d| <Mac>::try_from(d).ok()) else {
            return;
        };
        if is_multicast(&dst) {
            for (id, port) in self.ports.iter().enumerate() {
                if Some(id) != except {
                    if let Some(port) = port {
                        self.send_to(port, frame);
                    }
                }
            }
            return;
        }
        match self
            .mac_port
            .get(&dst)
            .and_then(|id| self.ports.get(*id))
            .and_then(Option::as_ref)
        {
            Some(port) => self.send_to(port, frame),
            None => NetMetrics::inc(&self.metrics.drop_no_neighbor),
        }
    }

    fn send_to(&self, port: &Rc<dyn Frontend>, frame: &[u8]) {
        if frame.len() > ETHERNET_HEADER_LEN + self.mtu {
            self.send_large(port, frame);
            return;
        }
        if let Some(pcap) = &self.pcap {
            pcap.borrow_mut().record(frame);
        }
        self.count(port.send(frame), frame.len());
    }

    /// A TCP segment larger than the MTU (the stack's, or a guest's TSO
    /// frame for another guest): whole to a guest that takes it, else split.
    fn send_large(&self, port: &Rc<dyn Frontend>, frame: &[u8]) {
        let Some(layout) = crate::gso::layout(frame).filter(|l| l.tcp) else {
            NetMetrics::inc(&self.metrics.drop_oversized);
            return;
        };
        let size = layout.segment_size(self.mtu);
        if port.offloads().takes(&layout) {
            if let Some(pcap) = &self.pcap {
                pcap.borrow_mut().record(frame);
            }
            self.count(port.send_gso(frame, size), frame.len());
            return;
        }
        let Ok(mut scratch) = self.segments.try_borrow_mut() else {
            return;
        };
        let split = crate::gso::segment(frame, size, &mut scratch, |piece| {
            if let Some(pcap) = &self.pcap {
                pcap.borrow_mut().record(piece);
            }
            self.count(port.send(piece), piece.len());
        });
        if !split {
            NetMetrics::inc(&self.metrics.drop_oversized);
        }
    }

    fn count(&self, sent: std::io::Result<()>, len: usize) {
        match sent {
            Ok(()) => {
                NetMetrics::inc(&self.metrics.tx_frames);
                NetMetrics::add(&self.metrics.tx_bytes, len as u64);
            }
            Err(_) => NetMetrics::inc(&self.metrics.drop_tx_failed),
        }
    }

    /// Frames the IP packet smoltcp wrote at `buf[14..14+len]` at `now` for
    /// the guest that owns its destination address.
    fn send_ip(&mut self, len: usize, now: Instant) {
        let packet = &self.buf[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + len];
        let (src, dst, ethertype, tcp) = match packet.first().map(|b| b >> 4) {
            Some(4) => match Ipv4Packet::new_checked(packet) {
                Ok(p) => (
                    IpAddr::V4(p.src_addr()),
                    IpAddr::V4(p.dst_addr()),
                    EthernetProtocol::Ipv4,
                    (p.next_header() == IpProtocol::Tcp).then(|| p.payload()),
                ),
                Err(_) => return,
            },
            Some(6) => match Ipv6Packet::new_checked(packet) {
                Ok(p) => (
                    IpAddr::V6(p.src_addr()),
                    IpAddr::V6(p.dst_addr()),
                    EthernetProtocol::Ipv6,
                    (p.next_header() == IpProtocol::Tcp).then(|| p.payload()),
                ),
                Err(_) => return,
            },
            _ => return,
        };
        if let Some(((sport, dport), seg)) = tcp.and_then(Segment::parse) {
            if !self.resend.to_guest((dst, dport, src, sport), &seg, now) {
                NetMetrics::inc(&self.metrics.tcp_resends_held);
                return;
            }
        }
        let Some(dst_mac) = self.neighbors.get(&dst).copied() else {
            NetMetrics::inc(&self.metrics.drop_no_neighbor);
            return;
        };
        let mut frame = EthernetFrame::new_unchecked(&mut self.buf[..ETHERNET_HEADER_LEN]);
        frame.set_dst_addr(EthernetAddress(dst_mac));
        frame.set_src_addr(EthernetAddress(self.gateway_mac));
        frame.set_ethertype(ethertype);
        let buf = std::mem::take(&mut self.buf);
        self.send_frame(&buf[..ETHERNET_HEADER_LEN + len], None);
        self.buf = buf;
    }
}

/// The switch: both halves plus the MTU. Both halves' buffers hold 64 KiB
/// packets whatever the MTU: the gateway's stack sends TCP segments that
/// large (split per port on the way out, see [`crate::gso`]) and guests
/// with segmentation offload send them.
pub struct Switch {
    pub rx: RxSlot,
    pub tx: TxSide,
    pub mtu: usize,
}

impl Switch {
    pub fn new(mtu: usize, gateway_mac: Mac, max_tcp_flows: usize, metrics: Arc<NetMetrics>) -> Switch {
        Switch {
            rx: RxSlot {
                buf: vec![0; ETHERNET_HEADER_LEN + crate::gso::BIG_MTU.max(mtu)],
                pending: None,
            },
            tx: TxSide {
                ports: Vec::new(),
                mac_port: BoundedMap::new(MAX_MACS),
                neighbors: BoundedMap::new(MAX_NEIGHBORS),
                gateway_mac,
                buf: vec![0; ETHERNET_HEADER_LEN + crate::gso::BIG_MTU.max(mtu)],
                mtu,
                segments: std::cell::RefCell::new(Vec::new()),
                metrics,
                pcap: None,
                resend: ResendFilter::new(max_tcp_flows),
            },
            mtu,
        }
    }

    pub fn add_port(&mut self, port: Rc<dyn Frontend>) -> PortId {
        if let Some(free) = self.tx.ports.iter().position(Option::is_none) {
            self.tx.ports[free] = Some(port);
            return free;
        }
        self.tx.ports.push(Some(port));
        self.tx.ports.len() - 1
    }

    /// Detaches a port and forgets the guests behind it; returns their MACs.
    pub fn remove_port(&mut self, id: PortId) -> Vec<Mac> {
        if let Some(slot) = self.tx.ports.get_mut(id) {
            *slot = None;
        }
        let gone: Vec<Mac> = self
            .tx
            .mac_port
            .iter()
            .filter(|(_, p)| **p == id)
            .map(|(m, _)| *m)
            .collect();
        for mac in &gone {
            self.tx.mac_port.remove(mac);
            self.tx.neighbors.retain(|_, m| m != mac);
        }
        gone
    }
}

pub struct RxToken<'a>(&'a [u8]);
pub struct TxToken<'a>(&'a mut TxSide, Instant);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(self.0.buf.len() - ETHERNET_HEADER_LEN);
        let r = f(&mut self.0.buf[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + len]);
        self.0.send_ip(len, self.1);
        r
    }
}

impl phy::Device for Switch {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let range = self.rx.pending.take()?;
        let packet = self.rx.buf.get(range)?;
        Some((RxToken(packet), TxToken(&mut self.tx, now)))
    }

    fn transmit(&mut self, now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx, now))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        // The stack's segments may be as large as IP allows; guests see
        // their MTU (see `TxSide::send_large`).
        caps.max_transmission_unit = crate::gso::BIG_MTU.max(self.mtu);
        // Ingress checksums are verified before packets reach smoltcp.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}
