//! Segmentation offload at the wire level, shared by every front end:
//! where the headers of a TCP or UDP frame end, splitting a frame larger
//! than a port's MTU into MTU-sized ones (software GSO, as Linux's
//! `skb_segment` does before a driver that cannot), and raising the MSS a
//! guest announces so the stack sends it large segments.
//!
//! Why ferry's own code: smoltcp sends one segment per MSS and has no GSO,
//! and no maintained crate segments raw frames. The functions here only
//! read and write byte slices (bounds-checked; malformed input yields None
//! or false), so they are portable and fuzzed with the frames target.
//!
//! The scheme: the gateway's stack runs with a 64 KiB MTU, and a guest's
//! SYN that announces the largest MSS its MTU allows is rewritten to the
//! 64 KiB one, so the stack writes 64 KiB segments to it. A port whose
//! guest takes TCP segmentation offload (virtio-net GUEST_TSO4/6) gets
//! them whole with a GSO header; any other port gets them split here to
//! its MTU, which is what the guest would have received anyway.

use smoltcp::wire::ETHERNET_HEADER_LEN;

/// The largest IP packet ferry's stack builds (the IPv4 limit).
pub const BIG_MTU: usize = 65535;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Which large frames a port takes whole (with their segment size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    pub tso4: bool,
    pub tso6: bool,
}

impl Offloads {
    /// Whether a port with these offloads takes `layout`'s frame whole.
    pub fn takes(&self, layout: &Layout) -> bool {
        layout.tcp && if layout.v6 { self.tso6 } else { self.tso4 }
    }
}

/// Where the headers of an Ethernet frame carrying TCP or UDP end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub v6: bool,
    pub tcp: bool,
    /// Length of the IP header (IPv4 with options; IPv6 without extension
    /// headers, the only shape segmented).
    pub ip_len: usize,
    /// Offset of the transport header in the frame.
    pub l4: usize,
    /// Offset of the payload (all headers before it).
    pub payload: usize,
    /// End of the IP packet in the frame.
    pub end: usize,
}

impl Layout {
    /// The largest payload a segment may carry on a link with this MTU.
    pub fn segment_size(&self, mtu: usize) -> usize {
        mtu.saturating_sub(self.payload - ETHERNET_HEADER_LEN)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Reads the headers of a TCP or UDP frame over IPv4 or IPv6.
pub fn layout(frame: &[u8]) -> Option<Layout> {
    let l3 = ETHERNET_HEADER_LEN;
    let (v6, proto, ip_len, end) = match be16(frame, 12)? {
        ETHERTYPE_IPV4 => {
            let ihl = usize::from(*frame.get(l3)? & 0x0f) * 4;
            let total = usize::from(be16(frame, l3 + 2)?);
            // Fragments are never segmented.
            if ihl < 20 || total < ihl || be16(frame, l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            (false, *frame.get(l3 + 9)?, ihl, l3 + total)
        }
        ETHERTYPE_IPV6 => (
            true,
            *frame.get(l3 + 6)?,
            40,
            l3 + 40 + usize::from(be16(frame, l3 + 4)?),
        ),
        _ => return None,
    };
    let l4 = l3 + ip_len;
    let payload = match proto {
        PROTO_TCP => l4 + usize::from(*frame.get(l4 + 12)? >> 4) * 4,
        PROTO_UDP => l4 + 8,
        _ => return None,
    };
    if end > frame.len() || payload > end || (proto == PROTO_TCP && payload < l4 + 20) {
        return None;
    }
    Some(Layout {
        v6,
        tcp: proto == PROTO_TCP,
        ip_len,
        l4,
        payload,
        end,
    })
}

/// The transport checksum of `frame[l4..end]` with its pseudo-header.
fn l4_checksum(frame: &[u8], l: &Layout) -> u16 {
    let l3 = ETHERNET_HEADER_LEN;
    let proto = if l.tcp { PROTO_TCP } else { PROTO_UDP };
    let seg = &frame[l.l4..l.end];
    let pseudo = if l.v6 {
        let src: [u8; 16] = frame[l3 + 8..l3 + 24].try_into().unwrap_or_default();
        let dst: [u8; 16] = frame[l3 + 24..l3 + 40].try_into().unwrap_or_default();
        crate::wire::pseudo_v6(&src, &dst, proto, seg.len())
    } else {
        let mut sum = 0u32;
        for at in (l3 + 12..l3 + 20).step_by(2) {
            sum += u32::from(be16(frame, at).unwrap_or(0));
        }
        sum + u32::from(proto) + seg.len() as u32
    };
    crate::wire::checksum_with(pseudo, seg)
}

/// Splits a TCP or UDP frame into frames carrying at most `size` payload
/// bytes each, with lengths, IPv4 ids, TCP sequence numbers and flags and
/// every checksum as if the sender had sent them one by one (UDP: one
/// datagram per piece, as UDP segmentation offload means). `emit` gets each
/// frame. False (nothing emitted) for a frame that cannot be segmented.
pub fn segment(frame: &[u8], size: usize, scratch: &mut Vec<u8>, mut emit: impl FnMut(&[u8])) -> bool {
    let Some(l) = layout(frame) else {
        return false;
    };
    if size == 0 {
        return false;
    }
    let l3 = ETHERNET_HEADER_LEN;
    let body = &frame[l.payload..l.end];
    let pieces = body.len().div_ceil(size).max(1);
    if pieces > 1024 {
        return false;
    }
    let seq0 = if l.tcp {
        u32::from_be_bytes(frame[l.l4 + 4..l.l4 + 8].try_into().unwrap_or_default())
    } else {
        0
    };
    let flags = if l.tcp { frame[l.l4 + 13] } else { 0 };
    let id0 = if l.v6 { 0 } else { be16(frame, l3 + 4).unwrap_or(0) };
    for i in 0..pieces {
        let chunk = &body[(i * size).min(body.len())..((i + 1) * size).min(body.len())];
        scratch.clear();
        scratch.extend_from_slice(&frame[..l.payload]);
        scratch.extend_from_slice(chunk);
        let end = scratch.len();
        let ip_total = end - l3;
        if l.v6 {
            put16(scratch, l3 + 4, (ip_total - 40) as u16);
        } else {
            put16(scratch, l3 + 2, ip_total as u16);
            put16(scratch, l3 + 4, id0.wrapping_add(i as u16));
            put16(scratch, l3 + 10, 0);
            let sum = crate::wire::checksum(&scratch[l3..l3 + l.ip_len]);
            put16(scratch, l3 + 10, sum);
        }
        let seg = Layout { end, ..l };
        if l.tcp {
            let seq = seq0.wrapping_add((i * size) as u32);
            scratch[l.l4 + 4..l.l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let mut f = flags;
            if i + 1 < pieces {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                f &= !TCP_CWR;
            }
            scratch[l.l4 + 13] = f;
            put16(scratch, l.l4 + 16, 0);
            let sum = l4_checksum(scratch, &seg);
            put16(scratch, l.l4 + 16, sum);
        } else {
            put16(scratch, l.l4 + 4, (end - l.l4) as u16);
            put16(scratch, l.l4 + 6, 0);
            let sum = match l4_checksum(scratch, &seg) {
                0 => 0xffff,
                s => s,
            };
            put16(scratch, l.l4 + 6, sum);
        }
        emit(scratch);
    }
    true
}

/// If `frame` is a TCP SYN announcing exactly the MSS a link of `mtu`
/// allows, raises it to what [`BIG_MTU`] allows and fixes the checksum
/// (RFC 1624). A guest that announces less (its own clamp) is left alone.
pub fn raise_syn_mss(frame: &mut [u8], mtu: usize) -> bool {
    let Some(l) = layout(frame) else {
        return false;
    };
    if !l.tcp || frame[l.l4 + 13] & TCP_SYN == 0 {
        return false;
    }
    let fixed = l.ip_len + 20;
    let (Some(ours), Some(big)) = (mtu.checked_sub(fixed), BIG_MTU.checked_sub(fixed)) else {
        return false;
    };
    let mut at = l.l4 + 20;
    while at < l.payload {
        match frame[at] {
            0 => return false,
            1 => at += 1,
            2 => {
                if frame.get(at + 1) != Some(&4) || at + 4 > l.payload {
                    return false;
                }
                let old = be16(frame, at + 2).unwrap_or(0);
                // Nothing to gain on links whose MTU is near 64 KiB already.
                if usize::from(old) != ours || 2 * ours > big {
                    return false;
                }
                let new = big as u16;
                put16(frame, at + 2, new);
                let csum = be16(frame, l.l4 + 16).unwrap_or(0);
                // HC' = ~(~HC + ~m + m')
                let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
                while sum > 0xffff {
                    sum = (sum & 0xffff) + (sum >> 16);
                }
                put16(frame, l.l4 + 16, !(sum as u16));
                return true;
            }
            _ => {
                let len = usize::from(*frame.get(at + 1).unwrap_or(&0));
                if len < 2 {
                    return false;
                }
                at += len;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
        Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SRC4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const DST4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x15);
    const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    fn tcp_frame(v6: bool, control: TcpControl, mss: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut tcp = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control,
            seq_number: TcpSeqNumber(0xffff_f000u32 as i32),
            ack_number: Some(TcpSeqNumber(7)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: mss,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        if control == TcpControl::Syn {
            tcp.ack_number = None;
        }
        let ip_len = if v6 { 40 } else { 20 };
        let mut f = vec![0u8; 14 + ip_len + tcp.buffer_len()];
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: if v6 {
                EthernetProtocol::Ipv6
            } else {
                EthernetProtocol::Ipv4
            },
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        let caps = ChecksumCapabilities::default();
        if v6 {
            let ip = Ipv6Repr {
                src_addr: SRC6,
                dst_addr: DST6,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut f[14..]));
            tcp.emit(
                &mut TcpPacket::new_unchecked(&mut f[54..]),
                &IpAddress::Ipv6(SRC6),
                &IpAddress::Ipv6(DST6),
                &caps,
            );
        } else {
            let ip = Ipv4Repr {
                src_addr: SRC4,
                dst_addr: DST4,
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            };
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]), &caps);
            tcp.emit(
                &mut TcpPacket::new_unchecked(&mut f[34..]),
                &IpAddress::Ipv4(SRC4),
                &IpAddress::Ipv4(DST4),
                &caps,
            );
        }
        f
    }

    fn parse_tcp(f: &[u8]) -> (u32, u8, Vec<u8>) {
        let (ip_len, src, dst) = if f[12] == 0x86 {
            let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
            assert_eq!(usize::from(ip.payload_len()) + 54, f.len());
            (40, IpAddress::Ipv6(SRC6), IpAddress::Ipv6(DST6))
        } else {
            let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
            assert!(ip.verify_checksum(), "IPv4 header checksum");
            assert_eq!(usize::from(ip.total_len()) + 14, f.len());
            (20, IpAddress::Ipv4(SRC4), IpAddress::Ipv4(DST4))
        };
        let tcp = TcpPacket::new_checked(&f[14 + ip_len..]).unwrap();
        assert!(tcp.verify_checksum(&src, &dst), "TCP checksum");
        (tcp.seq_number().0 as u32, f[14 + ip_len + 13], tcp.payload().to_vec())
    }

    #[test]
    fn tcp_segments_carry_the_bytes_in_order_with_valid_headers() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for v6 in [false, true] {
            let big = tcp_frame(v6, TcpControl::Fin, None, &payload);
            let l = layout(&big).unwrap();
            let size = l.segment_size(1500);
            assert_eq!(size, if v6 { 1440 } else { 1460 });
            let mut got = Vec::new();
            let mut frames = Vec::new();
            assert!(segment(&big, size, &mut Vec::new(), |f| frames.push(f.to_vec())));
            assert_eq!(frames.len(), payload.len().div_ceil(size));
            let mut seq = 0xffff_f000u32;
            for (i, f) in frames.iter().enumerate() {
                assert!(f.len() <= 14 + 1500);
                let (s, flags, p) = parse_tcp(f);
                assert_eq!(s, seq, "sequence numbers wrap and follow the bytes");
                assert_eq!(flags & TCP_FIN != 0, i + 1 == frames.len(), "FIN only on the last");
                seq = seq.wrapping_add(p.len() as u32);
                got.extend(p);
            }
            assert_eq!(got, payload);
        }
    }

    #[test]
    fn udp_segments_are_datagrams() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let repr = UdpRepr {
            src_port: 5000,
            dst_port: 53,
        };
        let mut f = vec![0u8; 14 + 20 + 8 + payload.len()];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let caps = ChecksumCapabilities::default();
        Ipv4Repr {
            src_addr: SRC4,
            dst_addr: DST4,
            next_header: IpProtocol::Udp,
            payload_len: 8 + payload.len(),
            hop_limit: 64,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]), &caps);
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut f[34..]),
            &IpAddress::Ipv4(SRC4),
            &IpAddress::Ipv4(DST4),
            payload.len(),
            |b| b.copy_from_slice(&payload),
            &caps,
        );
        let mut got = Vec::new();
        assert!(segment(&f, 1200, &mut Vec::new(), |s| {
            let ip = Ipv4Packet::new_checked(&s[14..]).unwrap();
            assert!(ip.verify_checksum());
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert!(udp.verify_checksum(&IpAddress::Ipv4(SRC4), &IpAddress::Ipv4(DST4)));
            assert_eq!(usize::from(udp.len()), 8 + udp.payload().len());
            got.push(udp.payload().to_vec());
        }));
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [1200, 1200, 600]);
        assert_eq!(got.concat(), payload);
    }

    fn mss_gap(v6: bool) -> usize {
        if v6 {
            60
        } else {
            40
        }
    }

    #[test]
    fn syn_mss_is_raised_only_when_it_is_the_links_own() {
        for (v6, mss) in [(false, 1460), (true, 1440)] {
            let mut syn = tcp_frame(v6, TcpControl::Syn, Some(mss), &[]);
            assert!(raise_syn_mss(&mut syn, 1500));
            let l = layout(&syn).unwrap();
            let (_, _, _) = parse_tcp(&syn); // checksum still valid
            let got = be16(&syn, l.l4 + 22).unwrap();
            assert_eq!(usize::from(got), BIG_MTU - l.ip_len - 20);
            let mut clamped = tcp_frame(v6, TcpControl::Syn, Some(1200), &[]);
            assert!(!raise_syn_mss(&mut clamped, 1500));
            let mut jumbo = tcp_frame(v6, TcpControl::Syn, Some((65520 - (mss_gap(v6))) as u16), &[]);
            assert!(!raise_syn_mss(&mut jumbo, 65520), "a 64 KiB link keeps its MSS");
            let mut data = tcp_frame(v6, TcpControl::None, None, b"x");
            assert!(!raise_syn_mss(&mut data, 1500));
        }
    }

    #[test]
    fn garbage_is_refused() {
        let mut scratch = Vec::new();
        for len in 0..80 {
            let mut f = vec![0xffu8; len];
            if len > 14 {
                f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                f[14] = 0x4f;
            }
            assert!(layout(&f).is_none() || len >= 74);
            let _ = segment(&f, 100, &mut scratch, |_| {});
            let _ = raise_syn_mss(&mut f, 1500);
        }
        let big = tcp_frame(false, TcpControl::None, None, &[1; 100]);
        assert!(!segment(&big, 0, &mut scratch, |_| {}));
        assert!(!segment(&big[..60], 10, &mut scratch, |_| {}), "truncated");
    }
}
