//! Frame building for the paths that bypass smoltcp's sockets (DHCP, UDP and
//! ICMP NAT, RSTs for refused connects). Everything writes into a buffer the
//! caller owns; nothing allocates.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
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
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
}

fn eth_ip(buf: &mut [u8], a: &Addrs, protocol: IpProtocol, payload_len: usize) -> Option<usize> {
    let total = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + payload_len;
    let buf = buf.get_mut(..total)?;
    let mut frame = EthernetFrame::new_unchecked(&mut *buf);
    EthernetRepr {
        src_addr: EthernetAddress(a.src_mac),
        dst_addr: EthernetAddress(a.dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut frame);
    let ip = Ipv4Repr {
        src_addr: a.src_ip,
        dst_addr: a.dst_ip,
        next_header: protocol,
        payload_len,
        hop_limit: TTL,
    };
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]);
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    Some(total)
}

/// Writes an Ethernet/IPv4/UDP frame; `None` if `buf` is too small.
pub fn udp_frame(buf: &mut [u8], a: &Addrs, src_port: u16, dst_port: u16, payload: &[u8]) -> Option<usize> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let total = eth_ip(buf, a, IpProtocol::Udp, udp_len)?;
    let mut udp = UdpPacket::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..total]);
    UdpRepr { src_port, dst_port }.emit(
        &mut udp,
        &IpAddress::Ipv4(a.src_ip),
        &IpAddress::Ipv4(a.dst_ip),
        payload.len(),
        |out| out.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    Some(total)
}

/// Like `udp_frame`, but the payload is already in place at
/// `buf[UDP_PAYLOAD_OFFSET..][..payload_len]` (read there straight from a
/// host socket), so it is not copied.
pub fn udp_frame_in_place(
    buf: &mut [u8],
    a: &Addrs,
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> Option<usize> {
    let udp_len = UDP_HEADER_LEN + payload_len;
    let total = eth_ip(buf, a, IpProtocol::Udp, udp_len)?;
    let mut udp = UdpPacket::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..total]);
    udp.set_src_port(src_port);
    udp.set_dst_port(dst_port);
    udp.set_len(u16::try_from(udp_len).ok()?);
    udp.fill_checksum(&IpAddress::Ipv4(a.src_ip), &IpAddress::Ipv4(a.dst_ip));
    Some(total)
}

/// Where a UDP payload starts in a frame built by `udp_frame_in_place`.
pub const UDP_PAYLOAD_OFFSET: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;

/// Writes an ICMP message whose body the closure fills (after the
/// Ethernet and IP headers); `icmp_len` is the full ICMP length.
pub fn icmp_frame(buf: &mut [u8], a: &Addrs, icmp_len: usize, fill: impl FnOnce(&mut [u8])) -> Option<usize> {
    let total = eth_ip(buf, a, IpProtocol::Icmp, icmp_len)?;
    fill(&mut buf[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..total]);
    Some(total)
}

/// An ICMP destination-unreachable message quoting the offending datagram's
/// IP header and first 8 payload bytes (RFC 792). `code` 1 = host, 3 = port.
pub fn icmp_unreachable(buf: &mut [u8], a: &Addrs, code: u8, quoted: &[u8]) -> Option<usize> {
    let quoted = &quoted[..quoted.len().min(IPV4_HEADER_LEN + 8)];
    icmp_frame(buf, a, 8 + quoted.len(), |icmp| {
        icmp[0] = 3;
        icmp[1] = code;
        icmp[2..8].fill(0);
        icmp[8..].copy_from_slice(quoted);
        let sum = checksum(icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    })
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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
    let mut tcp = TcpPacket::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..total]);
    repr.emit(
        &mut tcp,
        &IpAddress::Ipv4(a.src_ip),
        &IpAddress::Ipv4(a.dst_ip),
        &ChecksumCapabilities::default(),
    );
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Icmpv4Packet, Ipv4Packet};

    const A: Addrs = Addrs {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: Ipv4Addr::new(10, 0, 2, 254),
        dst_ip: Ipv4Addr::new(10, 0, 2, 2),
    };

    #[test]
    fn udp_frames_have_valid_checksums() {
        let mut buf = [0u8; 128];
        let n = udp_frame(&mut buf, &A, 53, 4000, b"hello").unwrap();
        let ip = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&IpAddress::Ipv4(A.src_ip), &IpAddress::Ipv4(A.dst_ip)));
        assert_eq!(udp.payload(), b"hello");
        // The in-place variant produces the same bytes.
        let mut buf2 = [0u8; 128];
        buf2[UDP_PAYLOAD_OFFSET..UDP_PAYLOAD_OFFSET + 5].copy_from_slice(b"hello");
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
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(A.src_ip), &IpAddress::Ipv4(A.dst_ip)));
    }
}
