//! The network's address plan and limits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// A MAC address (kept as plain bytes so the config stays independent of
/// smoltcp's types).
pub type Mac = [u8; 6];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A subnet that cannot hold a gateway, a host alias and guests.
    #[error("subnet {0}: expected an IPv4 CIDR with a prefix between 8 and 30, e.g. 10.0.2.0/24")]
    BadSubnet(String),
    /// An address outside the subnet or reserved.
    #[error("{what} {addr} is not a usable address in {subnet}")]
    OutsideSubnet {
        what: &'static str,
        addr: Ipv4Addr,
        subnet: String,
    },
    /// Two roles were given the same address.
    #[error("{a} and {b} are both {addr}; give each its own address")]
    Clash {
        a: &'static str,
        b: &'static str,
        addr: Ipv4Addr,
    },
    /// MTU out of range.
    #[error("MTU {0} is out of range: use 576..=65520")]
    BadMtu(u32),
    /// An IPv6 prefix ferry cannot serve with SLAAC.
    #[error("IPv6 subnet {0}: expected an IPv6 /64, e.g. fd66:6572:7279::/64 (SLAAC needs a /64)")]
    BadSubnet6(String),
    /// An IPv6 role outside the /64 or reserved.
    #[error("{what} {addr} is not a usable address in {subnet}")]
    OutsideSubnet6 {
        what: &'static str,
        addr: Ipv6Addr,
        subnet: String,
    },
    /// A malformed static DHCPv6 lease.
    #[error("static DHCPv6 lease {0:?}: expected MAC=IPv6 or DUID=IPv6, e.g. 5a:94:ef:e4:0c:ee=fd66:6572:7279::10")]
    BadLease6(String),
    /// A malformed static lease.
    #[error("static lease {0:?}: expected MAC=IP, e.g. 5a:94:ef:e4:0c:ee=10.0.2.2")]
    BadLease(String),
}

/// The network ferry serves: one subnet with a gateway (ferry itself), a host
/// alias that reaches the host's loopback, and DHCP-assigned guests.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// ferry's own address: router and DHCP server.
    pub gateway: Ipv4Addr,
    /// Where DNS is served (the gateway, or slirp4netns's .3).
    pub dns_addr: Ipv4Addr,
    /// Reaches the host's 127.0.0.1 (None: `--no-host-loopback`).
    pub host_alias: Option<Ipv4Addr>,
    /// The first address handed out by DHCP.
    pub first_guest: Ipv4Addr,
    pub gateway_mac: Mac,
    pub mtu: u32,
    pub static_leases: Vec<(Mac, Ipv4Addr)>,
    pub lease_time: Duration,
    /// DHCP domain search list (option 119) and domain name (option 15).
    pub search_domains: Vec<String>,
    pub max_tcp_flows: usize,
    pub max_udp_flows: usize,
    /// Most port forwards at once (`forward::MAX_FORWARDS` by default).
    pub max_forwards: usize,
    pub udp_idle_timeout: Duration,
    pub tcp_connect_timeout: Duration,
    /// Socket buffer size per TCP flow and direction.
    pub tcp_buffer: usize,
    /// The IPv6 side of the plan (None: `--no-ipv6`).
    pub v6: Option<Ipv6Plan>,
    /// Destinations answered with "network unreachable" (slirp4netns's
    /// host address under `--disable-host-loopback`).
    pub unreachable: Vec<IpAddr>,
    /// Local addresses outbound host sockets are bound to, per family
    /// (slirp4netns's `--outbound-addr` / `--outbound-addr6`).
    pub outbound4: Option<Ipv4Addr>,
    pub outbound6: Option<Ipv6Addr>,
    /// Who the guest sees as the source of a forwarded connection.
    pub forward_source: ForwardSource,
}

/// The source address a guest sees on a port forward's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardSource {
    /// The client itself: a client on the host's loopback as the host
    /// alias, any other as its own address and port (pasta's behaviour).
    #[default]
    Client,
    /// Always the gateway, from a port of ferry's choosing (slirp4netns's,
    /// gvproxy's and vpnkit's behaviour; `--forward-source=gateway`).
    Gateway,
}

/// IPv6 on the guest link: one /64 announced for SLAAC, the gateway (also
/// reachable as `fe80::1`), DNS, and a host alias reaching the host's `::1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Plan {
    /// The /64 prefix (low 64 bits zero).
    pub prefix: Ipv6Addr,
    pub gateway: Ipv6Addr,
    pub dns_addr: Ipv6Addr,
    /// Reaches the host's `::1` (None: `--no-host-loopback`).
    pub host_alias: Option<Ipv6Addr>,
    /// Lease addresses with DHCPv6 too (RA "managed" flag), beside SLAAC.
    pub stateful: bool,
    /// Fixed DHCPv6 addresses by MAC or DUID (imply `stateful`).
    pub static_leases: Vec<(crate::dhcp6::LeaseKey, Ipv6Addr)>,
}

/// The gateway's link-local address: the router address in every RA.
pub const GATEWAY_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

impl Default for Ipv6Plan {
    fn default() -> Self {
        // A ULA prefix spelling "ferry" (66 65 72 72 79).
        Ipv6Plan::for_prefix(Ipv6Addr::new(0xfd66, 0x6572, 0x7279, 0, 0, 0, 0, 0))
    }
}

impl Ipv6Plan {
    /// The default roles in a /64: gateway ::1, host alias ::fe (as .254).
    pub fn for_prefix(prefix: Ipv6Addr) -> Ipv6Plan {
        let at = |n: u16| {
            let mut s = prefix.segments();
            s[7] = n;
            Ipv6Addr::from(s)
        };
        Ipv6Plan {
            prefix,
            gateway: at(1),
            dns_addr: at(1),
            host_alias: Some(at(0xfe)),
            stateful: false,
            static_leases: Vec::new(),
        }
    }

    /// slirp4netns's plan: fd00::/64, host (and gateway) fd00::2, DNS fd00::3.
    pub fn slirp() -> Ipv6Plan {
        let p = Ipv6Plan::for_prefix(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0));
        let at = |n| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n);
        Ipv6Plan {
            gateway: at(2),
            dns_addr: at(3),
            host_alias: Some(at(2)),
            ..p
        }
    }

    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        addr.segments()[..4] == self.prefix.segments()[..4]
    }

    /// Whether `addr` is one the gateway answers for (NDP, ICMP echo).
    pub fn is_ours(&self, addr: Ipv6Addr) -> bool {
        addr == self.gateway || addr == self.dns_addr || Some(addr) == self.host_alias || addr == GATEWAY_LINK_LOCAL
    }

    /// Parses `PREFIX/64`.
    pub fn parse_prefix(s: &str) -> Result<Ipv6Addr, ConfigError> {
        let bad = || ConfigError::BadSubnet6(s.to_string());
        let (ip, len) = s.split_once('/').unwrap_or((s, "64"));
        let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
        if len != "64" || ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() {
            return Err(bad());
        }
        let mut seg = ip.segments();
        seg[4..].fill(0);
        Ok(Ipv6Addr::from(seg))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let subnet = format!("{}/64", self.prefix);
        let mut roles = vec![("IPv6 gateway", self.gateway), ("IPv6 DNS address", self.dns_addr)];
        if let Some(a) = self.host_alias {
            roles.push(("IPv6 host alias", a));
        }
        roles.extend(self.static_leases.iter().map(|(_, a)| ("static DHCPv6 lease", *a)));
        for (what, addr) in roles {
            if !self.contains(addr) || addr == self.prefix {
                return Err(ConfigError::OutsideSubnet6 { what, addr, subnet });
            }
        }
        Ok(())
    }

    /// Parses a static DHCPv6 lease, `MAC=IPv6` or `DUID=IPv6` (the DUID in
    /// hex bytes with colons, as `dhclient -6` and dnsmasq print it).
    pub fn parse_lease(s: &str) -> Result<(crate::dhcp6::LeaseKey, Ipv6Addr), ConfigError> {
        let bad = || ConfigError::BadLease6(s.to_string());
        let (who, ip) = s.rsplit_once('=').ok_or_else(bad)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
        let bytes = who
            .split(':')
            .map(|b| (b.len() == 2).then(|| u8::from_str_radix(b, 16).ok()).flatten())
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        let key = match bytes.len() {
            6 => crate::dhcp6::LeaseKey::Mac(bytes.try_into().map_err(|_| bad())?),
            n if (3..=130).contains(&n) => crate::dhcp6::LeaseKey::Duid(bytes),
            _ => return Err(bad()),
        };
        Ok((key, ip))
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            subnet: Ipv4Addr::new(10, 0, 2, 0),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 1),
            dns_addr: Ipv4Addr::new(10, 0, 2, 1),
            host_alias: Some(Ipv4Addr::new(10, 0, 2, 254)),
            first_guest: Ipv4Addr::new(10, 0, 2, 2),
            gateway_mac: [0x52, 0x55, 0x0a, 0x00, 0x02, 0x01],
            mtu: 65520,
            static_leases: Vec::new(),
            lease_time: Duration::from_secs(3600),
            search_domains: vec!["test".into()],
            max_tcp_flows: 8192,
            max_udp_flows: 4096,
            max_forwards: crate::forward::MAX_FORWARDS,
            udp_idle_timeout: Duration::from_secs(60),
            tcp_connect_timeout: Duration::from_secs(10),
            tcp_buffer: 512 * 1024,
            v6: Some(Ipv6Plan::default()),
            unreachable: Vec::new(),
            outbound4: None,
            outbound6: None,
            forward_source: ForwardSource::Client,
        }
    }
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || ConfigError::BadSubnet(s.to_string());
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&prefix) {
        return Err(bad());
    }
    Ok((Ipv4Addr::from(u32::from(ip) & mask(prefix)), prefix))
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl NetConfig {
    /// A plan for `subnet` with the default roles: gateway .1, first guest
    /// .2, host alias the last usable address (.254 in a /24).
    pub fn for_subnet(cidr: &str) -> Result<NetConfig, ConfigError> {
        let (subnet, prefix) = parse_cidr(cidr)?;
        let base = u32::from(subnet);
        let broadcast = base | !mask(prefix);
        Ok(NetConfig {
            subnet,
            prefix,
            gateway: Ipv4Addr::from(base + 1),
            dns_addr: Ipv4Addr::from(base + 1),
            first_guest: Ipv4Addr::from(base + 2),
            host_alias: Some(Ipv4Addr::from(broadcast - 1)),
            ..NetConfig::default()
        })
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.subnet)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) | !mask(self.prefix))
    }

    /// A usable host address of the subnet (not network, not broadcast).
    fn usable(&self, addr: Ipv4Addr) -> bool {
        self.contains(addr) && addr != self.subnet && addr != self.broadcast()
    }

    /// Whether `addr` is one of the gateway's own addresses (either family).
    pub fn is_gateway_addr(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => a == self.gateway,
            IpAddr::V6(a) => self
                .v6
                .as_ref()
                .is_some_and(|p| a == p.gateway || a == GATEWAY_LINK_LOCAL),
        }
    }

    /// The local address to bind a host socket to before reaching `target`.
    pub fn outbound_for(&self, target: IpAddr) -> Option<IpAddr> {
        match target {
            IpAddr::V4(_) => self.outbound4.map(IpAddr::V4),
            IpAddr::V6(_) => self.outbound6.map(IpAddr::V6),
        }
    }

    /// Where DNS is served for a client of `family`'s address family.
    pub fn dns_addr_for(&self, family: IpAddr) -> Option<IpAddr> {
        match family {
            IpAddr::V4(_) => Some(IpAddr::V4(self.dns_addr)),
            IpAddr::V6(_) => self.v6.as_ref().map(|p| IpAddr::V6(p.dns_addr)),
        }
    }

    /// The address a forwarded connection from host-side `client` shows to
    /// `guest` as its source, with [`ForwardSource::Client`]: a loopback
    /// client as the host alias of the guest's family (the address the
    /// guest reaches the host by), any other client as itself. None (use
    /// the gateway) when the families differ, when there is no host alias,
    /// or when the client's address belongs to the guest's own link (the
    /// guest would answer it directly, not through ferry).
    pub fn forward_source_for(&self, client: IpAddr, guest: IpAddr) -> Option<IpAddr> {
        if self.forward_source == ForwardSource::Gateway {
            return None;
        }
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        match (client, guest) {
            (IpAddr::V4(c), IpAddr::V4(_)) if c.is_loopback() => self.host_alias.map(IpAddr::V4),
            (IpAddr::V6(c), IpAddr::V6(_)) if c.is_loopback() => {
                self.v6.as_ref().and_then(|p| p.host_alias).map(IpAddr::V6)
            }
            (IpAddr::V4(c), IpAddr::V4(_)) => {
                (!self.contains(c) && !c.is_unspecified() && !c.is_broadcast() && !c.is_multicast()).then_some(client)
            }
            (IpAddr::V6(c), IpAddr::V6(_)) => {
                let on_link = self.v6.as_ref().is_some_and(|p| p.contains(c)) || (c.segments()[0] & 0xffc0) == 0xfe80;
                (!on_link && !c.is_unspecified() && !c.is_multicast()).then_some(client)
            }
            _ => None,
        }
    }

    /// The gateway address a port forward speaks from to a guest address.
    pub fn gateway_for(&self, guest: IpAddr) -> Option<IpAddr> {
        match guest {
            IpAddr::V4(_) => Some(IpAddr::V4(self.gateway)),
            IpAddr::V6(_) => self.v6.as_ref().map(|p| IpAddr::V6(p.gateway)),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(v6) = &self.v6 {
            v6.validate()?;
        }
        if !(576..=65520).contains(&self.mtu) {
            return Err(ConfigError::BadMtu(self.mtu));
        }
        let subnet = format!("{}/{}", self.subnet, self.prefix);
        let mut roles = vec![("gateway", self.gateway), ("first guest", self.first_guest)];
        if let Some(alias) = self.host_alias {
            roles.push(("host alias", alias));
        }
        for (what, addr) in &roles {
            if !self.usable(*addr) {
                return Err(ConfigError::OutsideSubnet {
                    what,
                    addr: *addr,
                    subnet,
                });
            }
        }
        for (i, (a, x)) in roles.iter().enumerate() {
            for (b, y) in &roles[i + 1..] {
                // slirp4netns's plan reaches the host through the gateway itself.
                let gateway_is_host = *a == "gateway" && *b == "host alias";
                if x == y && !gateway_is_host {
                    return Err(ConfigError::Clash { a, b, addr: *x });
                }
            }
        }
        for (_, ip) in &self.static_leases {
            if !self.usable(*ip) || roles[..1].iter().any(|(_, r)| r == ip) || Some(*ip) == self.host_alias {
                return Err(ConfigError::OutsideSubnet {
                    what: "static lease",
                    addr: *ip,
                    subnet,
                });
            }
        }
        Ok(())
    }

    /// Parses `MAC=IP`.
    pub fn parse_lease(s: &str) -> Result<(Mac, Ipv4Addr), ConfigError> {
        let bad = || ConfigError::BadLease(s.to_string());
        let (mac, ip) = s.split_once('=').ok_or_else(bad)?;
        Ok((parse_mac(mac).ok_or_else(bad)?, ip.parse().map_err(|_| bad())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_sources() {
        let c = NetConfig::default();
        let guest4: IpAddr = "10.0.2.15".parse().unwrap();
        let guest6: IpAddr = "fd66:6572:7279::15".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            c.forward_source_for(ip("127.0.0.1"), guest4),
            c.host_alias.map(IpAddr::V4)
        );
        assert_eq!(
            c.forward_source_for(ip("::ffff:127.0.0.1"), guest4),
            c.host_alias.map(IpAddr::V4)
        );
        assert_eq!(
            c.forward_source_for(ip("::1"), guest6),
            c.v6.as_ref().and_then(|p| p.host_alias).map(IpAddr::V6)
        );
        assert_eq!(
            c.forward_source_for(ip("192.168.1.50"), guest4),
            Some(ip("192.168.1.50"))
        );
        assert_eq!(c.forward_source_for(ip("2001:db8::5"), guest6), Some(ip("2001:db8::5")));
        // On the guest's own link, or the other family: the gateway.
        assert_eq!(c.forward_source_for(ip("10.0.2.77"), guest4), None);
        assert_eq!(c.forward_source_for(ip("fe80::1234"), guest6), None);
        assert_eq!(c.forward_source_for(ip("192.168.1.50"), guest6), None);
        let off = NetConfig {
            forward_source: ForwardSource::Gateway,
            ..NetConfig::default()
        };
        assert_eq!(off.forward_source_for(ip("192.168.1.50"), guest4), None);
        let no_alias = NetConfig {
            host_alias: None,
            ..NetConfig::default()
        };
        assert_eq!(no_alias.forward_source_for(ip("127.0.0.1"), guest4), None);
    }

    #[test]
    fn default_plan_is_valid() {
        NetConfig::default().validate().unwrap();
        let c = NetConfig::for_subnet("192.168.127.0/24").unwrap();
        assert_eq!(c.gateway, Ipv4Addr::new(192, 168, 127, 1));
        assert_eq!(c.host_alias, Some(Ipv4Addr::new(192, 168, 127, 254)));
        assert_eq!(c.first_guest, Ipv4Addr::new(192, 168, 127, 2));
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_plans() {
        assert!(NetConfig::for_subnet("10.0.0.0").is_err());
        assert!(NetConfig::for_subnet("10.0.0.0/31").is_err());
        let c = NetConfig {
            gateway: Ipv4Addr::new(10, 9, 9, 9),
            ..NetConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::OutsideSubnet { .. })));
        let c = NetConfig {
            host_alias: Some(Ipv4Addr::new(10, 0, 2, 2)),
            ..NetConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Clash { .. })));
        // slirp4netns's plan: the gateway is also the way to the host.
        let c = NetConfig {
            host_alias: Some(Ipv4Addr::new(10, 0, 2, 1)),
            ..NetConfig::default()
        };
        c.validate().unwrap();
        let c = NetConfig {
            mtu: 70000,
            ..NetConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::BadMtu(70000)));
        assert!(NetConfig::parse_lease("5a:94:ef:e4:0c:ee=10.0.2.9").is_ok());
        assert!(NetConfig::parse_lease("5a:94:ef:e4:0c=10.0.2.9").is_err());
    }

    #[test]
    fn ipv6_plans() {
        let d = Ipv6Plan::default();
        assert_eq!(d.gateway, "fd66:6572:7279::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(d.host_alias, Some("fd66:6572:7279::fe".parse().unwrap()));
        d.validate().unwrap();
        let s = Ipv6Plan::slirp();
        assert_eq!(
            (s.gateway, s.dns_addr),
            ("fd00::2".parse().unwrap(), "fd00::3".parse().unwrap())
        );
        s.validate().unwrap();
        assert!(s.is_ours(GATEWAY_LINK_LOCAL) && !s.is_ours("fd00::100".parse().unwrap()));
        assert_eq!(
            Ipv6Plan::parse_prefix("fd01:2::7/64").unwrap(),
            "fd01:2::".parse::<Ipv6Addr>().unwrap()
        );
        for bad in ["fd01::/48", "10.0.0.0/64", "::1/64", "ff02::/64"] {
            assert!(Ipv6Plan::parse_prefix(bad).is_err(), "{bad}");
        }
        let outside = Ipv6Plan {
            gateway: "fd99::1".parse().unwrap(),
            ..Ipv6Plan::default()
        };
        assert!(matches!(outside.validate(), Err(ConfigError::OutsideSubnet6 { .. })));
    }
}
