//! IPv6 neighbour discovery on the guest link (RFC 4861, 4862, 8106):
//! router advertisements for SLAAC with the MTU, RDNSS and DNSSL options,
//! neighbour advertisements for the gateway's addresses, and solicitations
//! to find a guest. The builders write ICMPv6 bodies into caller buffers;
//! `Stack` wraps them in frames. smoltcp's `NdiscRepr` has no RDNSS/DNSSL
//! options, so the messages are written here.

use std::net::{IpAddr, Ipv6Addr};

use crate::config::{Mac, GATEWAY_LINK_LOCAL};
use crate::metrics::NetMetrics;
use crate::stack::Stack;
use crate::wire::{self, Addrs, Writer};

pub const ROUTER_SOLICIT: u8 = 133;
pub const ROUTER_ADVERT: u8 = 134;
pub const NEIGHBOR_SOLICIT: u8 = 135;
pub const NEIGHBOR_ADVERT: u8 = 136;

const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_TARGET_LLADDR: u8 = 2;
const OPT_PREFIX: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;
const OPT_DNSSL: u8 = 31;

/// Router lifetime in RAs; advertisements are repeated well within it.
pub const ROUTER_LIFETIME: u16 = 1800;
const VALID_LIFETIME: u32 = 86400;
const PREFERRED_LIFETIME: u32 = 14400;
const DNS_LIFETIME: u32 = 1800;

pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The Ethernet address an IPv6 multicast group maps to (RFC 2464).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast group of `addr`.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// What a guest's neighbour-discovery message asks of the gateway.
#[derive(Debug, PartialEq, Eq)]
pub enum Ndisc {
    RouterSolicit { source_mac: Option<Mac> },
    NeighborSolicit { target: Ipv6Addr, source_mac: Option<Mac> },
    NeighborAdvert { target: Ipv6Addr, target_mac: Option<Mac> },
}

/// Parses an RS, NS or NA (checksum already verified). `None`: malformed
/// (bad code, short, zero-length option) or another message type.
pub fn parse(icmp: &[u8]) -> Option<Ndisc> {
    let (&kind, &code) = (icmp.first()?, icmp.get(1)?);
    if code != 0 {
        return None;
    }
    let (fixed, lladdr_opt) = match kind {
        ROUTER_SOLICIT => (8, OPT_SOURCE_LLADDR),
        NEIGHBOR_SOLICIT => (24, OPT_SOURCE_LLADDR),
        NEIGHBOR_ADVERT => (24, OPT_TARGET_LLADDR),
        _ => return None,
    };
    let mut opts = icmp.get(fixed..)?;
    let mut mac = None;
    while !opts.is_empty() {
        let len = usize::from(*opts.get(1)?) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == lladdr_opt && len == 8 {
            mac = Some(<Mac>::try_from(&opts[2..8]).ok()?);
        }
        opts = &opts[len..];
    }
    let target = || -> Option<Ipv6Addr> { Some(Ipv6Addr::from(<[u8; 16]>::try_from(icmp.get(8..24)?).ok()?)) };
    Some(match kind {
        ROUTER_SOLICIT => Ndisc::RouterSolicit { source_mac: mac },
        NEIGHBOR_SOLICIT => Ndisc::NeighborSolicit {
            target: target()?,
            source_mac: mac,
        },
        _ => Ndisc::NeighborAdvert {
            target: target()?,
            target_mac: mac,
        },
    })
}

/// What an RA announces.
pub struct Advert<'a> {
    pub router_mac: Mac,
    pub mtu: u32,
    pub prefix: Ipv6Addr,
    pub dns: Option<Ipv6Addr>,
    pub search: &'a [String],
    /// "Other configuration" flag: DHCPv6 has more (stateless DHCPv6).
    pub other_config: bool,
    /// "Managed" flag: addresses also come from DHCPv6 leases.
    pub managed: bool,
}

/// Writes a router advertisement into `out`; returns its length, or None
/// if `out` is too small. The checksum is left zero.
pub fn router_advert(out: &mut [u8], a: &Advert<'_>) -> Option<usize> {
    let mut w = Writer::new(out);
    let flags = (u8::from(a.managed) << 7) | (u8::from(a.other_config) << 6);
    w.put(&[ROUTER_ADVERT, 0, 0, 0, 64, flags])?;
    w.put(&ROUTER_LIFETIME.to_be_bytes())?;
    w.put(&[0; 8])?; // reachable time, retransmission timer: unspecified
    w.put(&[OPT_SOURCE_LLADDR, 1])?;
    w.put(&a.router_mac)?;
    w.put(&[OPT_MTU, 1, 0, 0])?;
    w.put(&a.mtu.to_be_bytes())?;
    w.put(&[OPT_PREFIX, 4, 64, 0xc0])?; // on-link, autonomous
    w.put(&VALID_LIFETIME.to_be_bytes())?;
    w.put(&PREFERRED_LIFETIME.to_be_bytes())?;
    w.put(&[0; 4])?;
    w.put(&a.prefix.octets())?;
    if let Some(dns) = a.dns {
        w.put(&[OPT_RDNSS, 3, 0, 0])?;
        w.put(&DNS_LIFETIME.to_be_bytes())?;
        w.put(&dns.octets())?;
    }
    let names: usize = a.search.iter().map(|d| wire::encoded_name_len(d)).sum();
    if names > 0 {
        let len = (8 + names).div_ceil(8) * 8;
        w.put(&[OPT_DNSSL, u8::try_from(len / 8).ok()?, 0, 0])?;
        w.put(&DNS_LIFETIME.to_be_bytes())?;
        let start = w.at;
        for d in a.search {
            wire::encode_name(&mut w, d)?;
        }
        w.put(&[0; 8][..len - 8 - (w.at - start)])?;
    }
    Some(w.at)
}

/// A neighbour advertisement for `target`, answering a solicitation
/// (`solicited`) or a duplicate-address probe.
pub fn neighbor_advert(out: &mut [u8], target: Ipv6Addr, mac: Mac, solicited: bool) -> Option<usize> {
    let mut w = Writer::new(out);
    // Router, (solicited), override.
    let flags = 0x80 | if solicited { 0x40 } else { 0 } | 0x20;
    w.put(&[NEIGHBOR_ADVERT, 0, 0, 0, flags, 0, 0, 0])?;
    w.put(&target.octets())?;
    w.put(&[OPT_TARGET_LLADDR, 1])?;
    w.put(&mac)?;
    Some(w.at)
}

/// A neighbour solicitation asking who has `target`.
pub fn neighbor_solicit(out: &mut [u8], target: Ipv6Addr, mac: Mac) -> Option<usize> {
    let mut w = Writer::new(out);
    w.put(&[NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0])?;
    w.put(&target.octets())?;
    w.put(&[OPT_SOURCE_LLADDR, 1])?;
    w.put(&mac)?;
    Some(w.at)
}

impl Stack {
    /// A guest's ICMPv6 message other than an echo request.
    pub(crate) fn ndisc(&mut self, src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, icmp: &[u8]) {
        if !matches!(icmp[0], ROUTER_SOLICIT | NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT) {
            // MLD reports, router adverts from guests, errors: not for us.
            return;
        }
        let Some(msg) = parse(icmp).filter(|_| hop_limit == 255) else {
            NetMetrics::inc(&self.metrics.drop_malformed);
            return;
        };
        let Some(plan) = self.cfg.v6.clone() else { return };
        match msg {
            Ndisc::RouterSolicit { .. } => {
                let to = if src.is_unspecified() { ALL_NODES } else { src };
                self.send_router_advert(src_mac, to);
            }
            Ndisc::NeighborSolicit { target, source_mac } => {
                if let Some(mac) = source_mac {
                    if !src.is_unspecified() {
                        self.learn(IpAddr::V6(src), mac);
                    }
                }
                if !plan.is_ours(target) {
                    return;
                }
                // A duplicate-address probe (from ::) is told to all nodes.
                let (to, to_mac, solicited) = if src.is_unspecified() {
                    (ALL_NODES, multicast_mac(ALL_NODES), false)
                } else {
                    (src, src_mac, true)
                };
                let mut body = [0u8; 32];
                if let Some(n) = neighbor_advert(&mut body, target, self.cfg.gateway_mac, solicited) {
                    self.send_icmp6(to_mac, target, to, &body[..n]);
                }
            }
            Ndisc::NeighborAdvert { target, target_mac } => {
                self.learn(IpAddr::V6(target), target_mac.unwrap_or(src_mac));
                let _ = dst;
            }
        }
    }

    /// Sends an RA to `to` (a guest, or all nodes).
    pub fn send_router_advert(&mut self, to_mac: Mac, to: Ipv6Addr) {
        let Some(plan) = &self.cfg.v6 else { return };
        let dns = self.dns.is_some().then_some(plan.dns_addr);
        let advert = Advert {
            router_mac: self.cfg.gateway_mac,
            mtu: self.cfg.mtu,
            prefix: plan.prefix,
            dns,
            search: &self.cfg.search_domains,
            other_config: dns.is_some(),
            managed: plan.stateful || !plan.static_leases.is_empty(),
        };
        let mut body = [0u8; 512];
        if let Some(n) = router_advert(&mut body, &advert) {
            self.send_icmp6(to_mac, GATEWAY_LINK_LOCAL, to, &body[..n]);
        }
    }

    /// Asks the link who has `target` (a forward to a guest's IPv6 address).
    pub(crate) fn ndp_probe(&mut self, target: Ipv6Addr) {
        let Some(plan) = &self.cfg.v6 else { return };
        let from = if target.is_unicast_link_local() {
            GATEWAY_LINK_LOCAL
        } else {
            plan.gateway
        };
        let group = solicited_node(target);
        let mut body = [0u8; 32];
        if let Some(n) = neighbor_solicit(&mut body, target, self.cfg.gateway_mac) {
            self.send_icmp6(multicast_mac(group), from, group, &body[..n]);
        }
    }

    fn send_icmp6(&mut self, to_mac: Mac, from: Ipv6Addr, to: Ipv6Addr, body: &[u8]) {
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: to_mac,
            src_ip: IpAddr::V6(from),
            dst_ip: IpAddr::V6(to),
        };
        if let Some(len) = wire::icmp_frame(&mut self.scratch, &addrs, body.len(), |out| out.copy_from_slice(body)) {
            self.send_scratch(len);
            NetMetrics::inc(&self.metrics.ndp_replies);
        }
    }

    /// A DHCPv6 message from a guest.
    pub(crate) fn dhcp6(&mut self, src_mac: Mac, src: Ipv6Addr, src_port: u16, msg: &[u8]) {
        let Some(plan) = &self.cfg.v6 else { return };
        let stateful = plan.stateful || !plan.static_leases.is_empty();
        let mut reserved = vec![plan.gateway, plan.dns_addr];
        reserved.extend(plan.host_alias);
        let info = crate::dhcp6::Info {
            server_mac: self.cfg.gateway_mac,
            dns: self.dns.is_some().then_some(plan.dns_addr),
            search: &self.cfg.search_domains,
            stateful: stateful.then_some(plan.prefix),
            static_leases: &plan.static_leases,
            reserved: &reserved,
            lease_time: self.cfg.lease_time,
        };
        let mut body = [0u8; 1024];
        let now = std::time::Instant::now();
        let outcome = match self.dhcp6.handle(msg, &info, src_mac, now, &mut body) {
            Ok(o) => o,
            Err(_) => {
                NetMetrics::inc(&self.metrics.drop_malformed);
                return;
            }
        };
        // Keep DNS in step with the lease table.
        if let Some((mac, addr, Some(name))) = &outcome.bound {
            self.dns_register(*mac, name, IpAddr::V6(*addr));
        }
        if let Some((mac, _)) = outcome.released {
            self.dns_forget(mac);
        }
        let Some(n) = outcome.len else { return };
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: src_mac,
            src_ip: IpAddr::V6(GATEWAY_LINK_LOCAL),
            dst_ip: IpAddr::V6(src),
        };
        if let Some(len) = wire::udp_frame(
            &mut self.scratch,
            &addrs,
            crate::dhcp6::SERVER_PORT,
            src_port,
            &body[..n],
        ) {
            self.send_scratch(len);
            NetMetrics::inc(&self.metrics.dhcp6_replies);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Icmpv6Packet, Icmpv6Repr, NdiscPrefixInfoFlags, NdiscRepr};

    fn checksummed(body: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
        let sum = crate::wire::checksum_with(
            crate::wire::pseudo_v6(&src.octets(), &dst.octets(), 58, body.len()),
            body,
        );
        body[2..4].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn router_advert_parses_with_smoltcp() {
        let mut buf = [0u8; 256];
        let search = ["test".to_string(), "example.org".to_string()];
        let a = Advert {
            router_mac: [0x52, 0x55, 10, 0, 2, 1],
            mtu: 65520,
            prefix: "fd00::".parse().unwrap(),
            dns: Some("fd00::3".parse().unwrap()),
            search: &search,
            other_config: true,
            managed: false,
        };
        let n = router_advert(&mut buf, &a).unwrap();
        assert_eq!(n % 8, 0);
        let (src, dst) = (crate::config::GATEWAY_LINK_LOCAL, ALL_NODES);
        checksummed(&mut buf[..n], src, dst);
        let p = Icmpv6Packet::new_checked(&buf[..n]).unwrap();
        let repr = Icmpv6Repr::parse(&src, &dst, &p, &Default::default()).unwrap();
        let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            router_lifetime,
            lladdr,
            mtu,
            prefix_info,
            ..
        }) = repr
        else {
            panic!("not an RA: {repr:?}");
        };
        assert_eq!(router_lifetime.secs(), 1800);
        assert_eq!(mtu, Some(65520));
        assert!(lladdr.is_some());
        let pi = prefix_info.unwrap();
        assert_eq!(pi.prefix_len, 64);
        assert!(pi
            .flags
            .contains(NdiscPrefixInfoFlags::ADDRCONF | NdiscPrefixInfoFlags::ON_LINK));
        // RDNSS then DNSSL with both names.
        let opts = &buf[16 + 8 + 8 + 32..n];
        assert_eq!((opts[0], opts[1]), (25, 3));
        assert_eq!(&opts[8..24], &"fd00::3".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(opts[24], 31);
        assert_eq!(&opts[32..38], b"\x04test\x00");
        assert!(router_advert(&mut [0u8; 40], &a).is_none());
    }

    #[test]
    fn solicitations_round_trip() {
        let mut buf = [0u8; 64];
        let target: Ipv6Addr = "fd00::100".parse().unwrap();
        let mac = [2, 0, 0, 0, 0, 9];
        let n = neighbor_solicit(&mut buf, target, mac).unwrap();
        assert_eq!(
            parse(&buf[..n]),
            Some(Ndisc::NeighborSolicit {
                target,
                source_mac: Some(mac)
            })
        );
        let n = neighbor_advert(&mut buf, target, mac, true).unwrap();
        assert_eq!(
            parse(&buf[..n]),
            Some(Ndisc::NeighborAdvert {
                target,
                target_mac: Some(mac)
            })
        );
        assert_eq!(
            parse(&[133, 0, 0, 0, 0, 0, 0, 0]),
            Some(Ndisc::RouterSolicit { source_mac: None })
        );
        // Zero-length option, truncated option, short message, bad code.
        assert_eq!(parse(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(parse(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0]), None);
        assert_eq!(parse(&[135, 0, 0, 0]), None);
        assert_eq!(parse(&[133, 1, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(solicited_node(target), "ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
    }
}
