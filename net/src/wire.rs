//! Frame building for the paths that bypass smoltcp's sockets (DHCP, UDP and
//! ICMP NAT, RSTs for refused connects). Everything writes into a buffer the
//! caller owns; nothing allocates.

//! IPv4 and IPv6 share every builder: the family of `Addrs` picks the IP
//! header, and the offsets below follow from it.

use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN,
    IPV4_HEADER_LEN, IPV6_HEADER_LEN,
};

use crate::config::Mac;

pub const UDP_HEADER_LEN: usize = 8;
/// Default TTL of frames ferry originates.
const TTL: u8 = 64;

/// Source and destination of one frame at L2 and L3.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    /// Both of one family; a mixed pair builds nothing.
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
}

impl Addrs {
    fn ip_header_len(&self) -> usize {
        ip_header_len(self.src_ip)
    }

    fn l3(&self) -> (IpAddress, IpAddress) {
        (self.src_ip.into(), self.dst_ip.into())
    }
}

/// The IP header length ferry writes for `family`'s address family.
pub fn ip_header_len(family: IpAddr) -> usize {
    match family {
        IpAddr::V4(_) => IPV4_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    }
}

/// The ICMP protocol of `family`'s address family.
pub fn icmp_protocol(family: IpAddr) -> IpProtocol {
    match family {
        IpAddr::V4(_) => IpProtocol::Icmp,
        IpAddr::V6(_) => IpProtocol::Icmpv6,
    }
}

fn eth_ip(buf: &mut [u8], a: &Addrs, protocol: IpProtocol, payload_len: usize) -> Option<usize> {
    let total = ETHERNET_HEADER_LEN + a.ip_header_len() + payload_len;
    let buf = buf.get_mut(..total)?;
    let mut frame = EthernetFrame::new_unchecked(&mut *buf);
    let ethertype = match a.src_ip {
        IpAddr::V4(_) => EthernetProtocol::Ipv4,
        IpAddr::V6(_) => EthernetProtocol::Ipv6,
    };
    EthernetRepr {
        src_addr: EthernetAddress(a.src_mac),
        dst_addr: EthernetAddress(a.dst_mac),
        ethertype,
    }
    .emit(&mut frame);
    match (a.src_ip, a.dst_ip) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            let ip = Ipv4Repr {
                src_addr,
                dst_addr,
                next_header: protocol,
                payload_len,
                hop_limit: TTL,
            };
            let mut packet = Ipv4Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]);
            ip.emit(&mut packet, &ChecksumCapabilities::default());
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            let ip = Ipv6Repr {
                src_addr,
                dst_addr,
                next_header: protocol,
                payload_len,
                // Neighbour discovery requires 255; nothing else minds it.
                hop_limit: if protocol == IpProtocol::Icmpv6 { 255 } else { TTL },
            };
            let mut packet = Ipv6Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]);
            ip.emit(&mut packet);
        }
        _ => return None,
    }
    Some(total)
}

/// Writes an Ethernet/IPv4/UDP frame; `None` if `buf` is too small.
pub fn udp_frame(buf: &mut [u8], a: &Addrs, src_port: u16, dst_port: u16, payload: &[u8]) -> Option<usize> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let total = eth_ip(buf, a, IpProtocol::Udp, udp_len)?;
    let mut udp = UdpPacket::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + a.ip_header_len()..total]);
    let (src, dst) = a.l3();
    UdpRepr { src_port, dst_port }.emit(
        &mut udp,
        &src,
        &dst,
        payload.len(),
        |out| out.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    Some(total)
}

/// Like `udp_frame`, but the payload is already in place at
/// `buf[udp_payload_offset(family)..][..payload_len]` (read there straight
/// from a host socket), so it is not copied.
pub fn udp_frame_in_place(
    buf: &mut [u8],
    a: &Addrs,
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> Option<usize> {
    let udp_len = UDP_HEADER_LEN + payload_len;
    let total = eth_ip(buf, a, IpProtocol::Udp, udp_len)?;
    let mut udp = UdpPacket::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + a.ip_header_len()..total]);
    udp.set_src_port(src_port);
    udp.set_dst_port(dst_port);
    udp.set_len(u16::try_from(udp_len).ok()?);
    let (src, dst) = a.l3();
    udp.fill_checksum(&src, &dst);
    Some(total)
}

/// Where a UDP payload starts in a frame built by `udp_frame_in_place`.
pub fn udp_payload_offset(family: IpAddr) -> usize {
    ETHERNET_HEADER_LEN + ip_header_len(family) + UDP_HEADER_LEN
}

/// Writes an ICMP (ICMPv6 for IPv6 addresses) message whose body the
/// closure fills after the Ethernet and IP headers; `icmp_len` is the full
/// ICMP length. The checksum (bytes 2..4) is computed here.
pub fn icmp_frame(buf: &mut [u8], a: &Addrs, icmp_len: usize, fill: impl FnOnce(&mut [u8])) -> Option<usize> {
    let total = eth_ip(buf, a, icmp_protocol(a.src_ip), icmp_len)?;
    let icmp = &mut buf[ETHERNET_HEADER_LEN + a.ip_header_len()..total];
    fill(icmp);
    icmp[2..4].fill(0);
    let sum = match (a.src_ip, a.dst_ip) {
        (IpAddr::V6(s), IpAddr::V6(d)) => checksum_with(pseudo_v6(&s.octets(), &d.octets(), 58, icmp.len()), icmp),
        _ => checksum(icmp),
    };
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

/// ICMP's and ICMPv6's destination unreachable, quoting the offending
/// packet: its IP header and 8 bytes for IPv4 (RFC 792), as much as keeps
/// the error within 1280 bytes for IPv6 (RFC 4443). `code` is ICMPv4's
/// (0 net, 1 host, 3 port) and is mapped to ICMPv6's (0 no route, 3
/// address, 4 port).
pub fn icmp_unreachable(buf: &mut [u8], a: &Addrs, code: u8, quoted: &[u8]) -> Option<usize> {
    let (kind, code, max) = match a.src_ip {
        IpAddr::V4(_) => (3, code, IPV4_HEADER_LEN + 8),
        IpAddr::V6(_) => (1, [0, 3, 3, 4][usize::from(code.min(3))], 1280 - IPV6_HEADER_LEN - 8),
    };
    let quoted = &quoted[..quoted.len().min(max)];
    icmp_frame(buf, a, 8 + quoted.len(), |icmp| {
        icmp[0] = kind;
        icmp[1] = code;
        icmp[2..8].fill(0);
        icmp[8..].copy_from_slice(quoted);
    })
}

/// The ones'-complement sum of the IPv6 pseudo-header (RFC 8200 8.1).
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: usize) -> u32 {
    let mut sum = sum16(0, src) + sum16(0, dst);
    sum += (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(next_header);
    sum
}

fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum of `data` on top of a partial sum.
pub fn checksum_with(initial: u32, data: &[u8]) -> u16 {
    let mut sum = sum16(0, data) as u64 + u64::from(initial);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    checksum_with(0, data)
}

/// Writes the RST+ACK that refuses a SYN (`seq` is the SYN's sequence number).
pub fn tcp_rst_for_syn(buf: &mut [u8], a: &Addrs, src_port: u16, dst_port: u16, seq: TcpSeqNumber) -> Option<usize> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(seq + 1),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let total = eth_ip(buf, a, IpProtocol::Tcp, repr.header_len())?;
    let mut tcp = TcpPacket::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + a.ip_header_len()..total]);
    let (src, dst) = a.l3();
    repr.emit(&mut tcp, &src, &dst, &ChecksumCapabilities::default());
    Some(total)
}

/// A bounds-checked cursor over an output buffer, for the messages built
/// byte by byte (router adverts, DHCPv6 replies): every write is `None`
/// rather than a panic when the buffer is too small.
pub(crate) struct Writer<'a> {
    pub out: &'a mut [u8],
    pub at: usize,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut [u8]) -> Writer<'a> {
        Writer { out, at: 0 }
    }

    pub fn put(&mut self, bytes: &[u8]) -> Option<()> {
        self.out.get_mut(self.at..self.at + bytes.len())?.copy_from_slice(bytes);
        self.at += bytes.len();
        Some(())
    }
}

/// Length of `name` in DNS wire format (labels cut to 63 bytes), 0 for
/// the empty name.
pub(crate) fn encoded_name_len(name: &str) -> usize {
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        return 0;
    }
    name.split('.').map(|l| 1 + l.len().min(63)).sum::<usize>() + 1
}

/// Writes `name` in DNS wire format (RA DNSSL, DHCPv6 domain lists).
pub(crate) fn encode_name(w: &mut Writer<'_>, name: &str) -> Option<()> {
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        return Some(());
    }
    for label in name.split('.') {
        let label = &label.as_bytes()[..label.len().min(63)];
        w.put(&[label.len() as u8])?;
        w.put(label)?;
    }
    w.put(&[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, Ipv4Packet};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: Addrs = Addrs {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 254)),
        dst_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)),
    };
    const A6: Addrs = Addrs {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
        dst_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100)),
    };

    #[test]
    fn ipv6_frames_share_the_builders() {
        let (s, d) = A6.l3();
        let mut buf = [0u8; 256];
        let n = udp_frame(&mut buf, &A6, 53, 4000, b"hello").unwrap();
        assert_eq!(&buf[12..14], &[0x86, 0xdd]);
        let ip = Ipv6Packet::new_checked(&buf[14..n]).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&s, &d));
        let mut buf2 = [0u8; 256];
        let off = udp_payload_offset(A6.src_ip);
        buf2[off..off + 5].copy_from_slice(b"hello");
        let n2 = udp_frame_in_place(&mut buf2, &A6, 53, 4000, 5).unwrap();
        assert_eq!(&buf[..n], &buf2[..n2]);
        let n = icmp_unreachable(&mut buf, &A6, 3, &[0x60; 100]).unwrap();
        let ip = Ipv6Packet::new_checked(&buf[14..n]).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
        assert_eq!((ip.payload()[0], ip.payload()[1]), (1, 4));
        let n = tcp_rst_for_syn(&mut buf, &A6, 80, 5555, TcpSeqNumber(7)).unwrap();
        let ip = Ipv6Packet::new_checked(&buf[14..n]).unwrap();
        assert!(TcpPacket::new_checked(ip.payload()).unwrap().verify_checksum(&s, &d));
        // A mixed pair builds nothing rather than a broken frame.
        let mixed = Addrs { dst_ip: A.dst_ip, ..A6 };
        assert!(udp_frame(&mut buf, &mixed, 1, 2, b"x").is_none());
    }

    #[test]
    fn udp_frames_have_valid_checksums() {
        let mut buf = [0u8; 128];
        let n = udp_frame(&mut buf, &A, 53, 4000, b"hello").unwrap();
        let ip = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        let (s, d) = A.l3();
        assert!(udp.verify_checksum(&s, &d));
        assert_eq!(udp.payload(), b"hello");
        // The in-place variant produces the same bytes.
        let mut buf2 = [0u8; 128];
        let off = udp_payload_offset(A.src_ip);
        buf2[off..off + 5].copy_from_slice(b"hello");
        let n2 = udp_frame_in_place(&mut buf2, &A, 53, 4000, 5).unwrap();
        assert_eq!(&buf[..n], &buf2[..n2]);
        assert!(udp_frame(&mut [0u8; 20], &A, 1, 2, b"x").is_none());
    }

    #[test]
    fn unreachable_quotes_and_checksums() {
        let mut buf = [0u8; 128];
        let quoted = [0x45u8; 40];
        let n = icmp_unreachable(&mut buf, &A, 3, &quoted).unwrap();
        let ip = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(ip.payload().len(), 8 + 28);
    }

    #[test]
    fn rst_acks_the_syn() {
        let mut buf = [0u8; 128];
        let n = tcp_rst_for_syn(&mut buf, &A, 80, 5555, TcpSeqNumber(1000)).unwrap();
        let ip = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.rst() && tcp.ack());
        assert_eq!(tcp.ack_number(), TcpSeqNumber(1001));
        let (s, d) = A.l3();
        assert!(tcp.verify_checksum(&s, &d));
    }
}
