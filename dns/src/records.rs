//! The names ferry answers itself: local zones (default `test`) holding an
//! A and, once the guest uses IPv6, an AAAA record per registered guest,
//! and the built-in host names.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Who registered a name, so it can be removed when that guest goes away.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A DHCP client, by MAC address.
    Dhcp([u8; 6]),
    /// `ferry run --name`, the control API, or a command-line flag.
    Static(String),
}

/// A name's addresses: one per family. A name with only one of them
/// answers the other family's query with NODATA, not NXDOMAIN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameAddrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// Whether `v6` is the guest's stable (EUI-64) address, which later
    /// addresses (temporary, privacy) do not replace.
    pub v6_stable: bool,
}

impl NameAddrs {
    pub fn v4(ip: Ipv4Addr) -> NameAddrs {
        NameAddrs {
            v4: Some(ip),
            ..NameAddrs::default()
        }
    }
}

/// What the local data says about a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Local {
    /// The name exists with these addresses.
    Address(NameAddrs),
    /// The name is in a local zone but does not exist.
    NxDomain,
    /// The name is not ours: forward it.
    NotLocal,
}

#[derive(Debug)]
pub struct Records {
    /// Lower-case zone names without a trailing dot, e.g. "test".
    zones: Vec<String>,
    /// Lower-case FQDN without trailing dot → (address, owner).
    names: HashMap<String, (NameAddrs, Owner)>,
    builtins: HashMap<String, NameAddrs>,
}

/// Names that mean "the host", as Docker, Podman and friends spell them.
pub const HOST_NAMES: &[&str] = &[
    "host.container.internal",
    "host.containers.internal",
    "host.docker.internal",
];
pub const GATEWAY_NAME: &str = "gateway.containers.internal";
/// Zones of the built-in names: never forwarded upstream.
const BUILTIN_ZONES: &[&str] = &["container.internal", "containers.internal", "docker.internal"];

/// Names registered at most (every zone's copy counts): guests name
/// themselves through DHCP and DHCPv6, clients through the APIs; past this
/// a new name is refused with an error, an existing one can still change.
pub const MAX_NAMES: usize = 16384;

/// Normalises a name: lower case, no trailing dot.
pub fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A valid DNS label for a guest name.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

impl Records {
    pub fn new(zones: &[String], host: Option<Ipv4Addr>, gateway: Ipv4Addr) -> Records {
        let mut builtins = HashMap::new();
        if let Some(host) = host {
            for name in HOST_NAMES {
                builtins.insert(name.to_string(), NameAddrs::v4(host));
            }
        }
        builtins.insert(GATEWAY_NAME.to_string(), NameAddrs::v4(gateway));
        Records {
            zones: zones.iter().map(|z| normalise(z)).collect(),
            names: HashMap::new(),
            builtins,
        }
    }

    /// Gives the built-in names their IPv6 addresses (the host alias's and
    /// the gateway's).
    pub fn set_builtin_v6(&mut self, host: Option<Ipv6Addr>, gateway: Ipv6Addr) {
        if let Some(host) = host {
            for name in HOST_NAMES {
                self.builtins.entry(name.to_string()).or_default().v6 = Some(host);
            }
        }
        self.builtins.entry(GATEWAY_NAME.to_string()).or_default().v6 = Some(gateway);
    }

    /// Adds `v6` to every name whose IPv4 address is `v4` (a guest's SLAAC
    /// address learnt from its traffic). A stable address replaces any; an
    /// unstable one only fills a name that has none.
    pub fn set_v6_for(&mut self, v4: Ipv4Addr, v6: Ipv6Addr, stable: bool) {
        for (addrs, _) in self.names.values_mut() {
            if addrs.v4 == Some(v4) && (stable || addrs.v6.is_none()) {
                addrs.v6 = Some(v6);
                addrs.v6_stable = stable;
            }
        }
    }

    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The local zone `name` falls in, if any.
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        let name = normalise(name);
        self.zone_of_normalised(&name)
    }

    fn zone_of_normalised(&self, name: &str) -> Option<&str> {
        let within = |z: &str| {
            name == z
                || (name.len() > z.len() && name.ends_with(z) && name.as_bytes()[name.len() - z.len() - 1] == b'.')
        };
        self.zones
            .iter()
            .map(String::as_str)
            .chain(BUILTIN_ZONES.iter().copied())
            .find(|z| within(z))
    }

    /// Registers `label` in every local zone (`web` → `web.test`), replacing
    /// an earlier registration of the same name. An IPv4 address replaces
    /// the name (keeping a learnt IPv6 address when the IPv4 one is the
    /// same: a renewed lease); an IPv6 one (a DHCPv6 lease) is added to the
    /// same owner's name, as its stable address.
    pub fn register(&mut self, label: &str, addr: impl Into<IpAddr>, owner: Owner) -> Result<(), String> {
        let label = normalise(label);
        if !label.split('.').all(valid_label) {
            return Err(format!("{label:?} is not a valid DNS name"));
        }
        let addr = addr.into();
        for zone in &self.zones {
            let key = format!("{label}.{zone}");
            let old = self.names.get(&key);
            let addrs = match (addr, old) {
                (IpAddr::V4(v4), Some((old, _))) if old.v4 == Some(v4) => *old,
                // The same owner naming both families (`--dns-record` twice).
                (IpAddr::V4(v4), Some((old, o))) if *o == owner && old.v4.is_none() => {
                    NameAddrs { v4: Some(v4), ..*old }
                }
                (IpAddr::V4(v4), _) => NameAddrs::v4(v4),
                (IpAddr::V6(v6), old) => NameAddrs {
                    v6: Some(v6),
                    v6_stable: true,
                    ..old.filter(|(_, o)| *o == owner).map(|(a, _)| *a).unwrap_or_default()
                },
            };
            if !self.names.contains_key(&key) && self.names.len() >= MAX_NAMES {
                return Err(format!("{MAX_NAMES} names are registered already; remove some first"));
            }
            self.names.insert(key, (addrs, owner.clone()));
        }
        Ok(())
    }

    /// Registers one name in one zone (gvproxy's `/services/dns/add`): the
    /// zone becomes local (its other names answer NXDOMAIN) if it was not.
    pub fn register_in_zone(&mut self, zone: &str, label: &str, addr: IpAddr, owner: Owner) -> Result<(), String> {
        let zone = normalise(zone);
        let label = normalise(label);
        if zone.is_empty() || !zone.split('.').all(valid_label) {
            return Err(format!("zone {zone:?} is not a valid DNS name"));
        }
        if !label.split('.').all(valid_label) {
            return Err(format!("{label:?} is not a valid DNS name"));
        }
        if !self.zones.contains(&zone) {
            self.zones.push(zone.clone());
        }
        let key = format!("{label}.{zone}");
        let mut addrs = self.names.get(&key).map(|(a, _)| *a).unwrap_or_default();
        match addr {
            IpAddr::V4(v4) => addrs.v4 = Some(v4),
            IpAddr::V6(v6) => {
                addrs.v6 = Some(v6);
                addrs.v6_stable = true;
            }
        }
        if !self.names.contains_key(&key) && self.names.len() >= MAX_NAMES {
            return Err(format!("{MAX_NAMES} names are registered already; remove some first"));
        }
        self.names.insert(key, (addrs, owner));
        Ok(())
    }

    /// The built-in names (host and gateway aliases) with their addresses.
    pub fn builtins(&self) -> Vec<(String, NameAddrs)> {
        let mut all: Vec<_> = self.builtins.iter().map(|(n, a)| (n.clone(), *a)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes every name `owner` registered; returns how many.
    pub fn unregister_owner(&mut self, owner: &Owner) -> usize {
        let before = self.names.len();
        self.names.retain(|_, (_, o)| o != owner);
        before - self.names.len()
    }

    /// Removes one label from every zone.
    pub fn unregister(&mut self, label: &str) -> usize {
        let label = normalise(label);
        let before = self.names.len();
        let zones = self.zones.clone();
        for zone in zones {
            self.names.remove(&format!("{label}.{zone}"));
        }
        before - self.names.len()
    }

    pub fn lookup(&self, name: &str) -> Local {
        self.lookup_normalised(&normalise(name))
    }

    /// `lookup` for a name already lower-case and without a trailing dot.
    pub fn lookup_normalised(&self, key: &str) -> Local {
        if let Some(addr) = self.builtins.get(key) {
            return Local::Address(*addr);
        }
        if let Some((addr, _)) = self.names.get(key) {
            return Local::Address(*addr);
        }
        if self.zone_of_normalised(key).is_some() {
            return Local::NxDomain;
        }
        Local::NotLocal
    }

    /// Names registered by `owner`-kind Static owners (API, flags), with
    /// their addresses and owner, for ferry net's state file.
    pub fn static_entries(&self) -> Vec<(String, NameAddrs, String)> {
        let mut all: Vec<_> = self
            .names
            .iter()
            .filter_map(|(n, (a, o))| match o {
                Owner::Static(who) => Some((n.clone(), *a, who.clone())),
                Owner::Dhcp(_) => None,
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Puts back a name as [`Records::static_entries`] gave it (the state
    /// file after a restart). A name already there is left alone.
    pub fn restore(&mut self, name: &str, addrs: NameAddrs, owner: Owner) -> Result<(), String> {
        let name = normalise(name);
        if !name.split('.').all(valid_label) {
            return Err(format!("{name:?} is not a valid DNS name"));
        }
        if self.names.contains_key(&name) {
            return Ok(());
        }
        if self.names.len() >= MAX_NAMES {
            return Err(format!("{MAX_NAMES} names are registered already"));
        }
        self.names.insert(name, (addrs, owner));
        Ok(())
    }

    /// Every registered (name, addresses), sorted, for the control API.
    pub fn list(&self) -> Vec<(String, NameAddrs)> {
        let mut all: Vec<_> = self.names.iter().map(|(n, (a, _))| (n.clone(), *a)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_name_table_is_bounded() {
        let mut r = Records::new(&["test".to_string()], None, Ipv4Addr::new(10, 0, 2, 1));
        for i in 0..MAX_NAMES {
            r.register(&format!("n{i}"), Ipv4Addr::new(10, 0, 2, 9), Owner::Static("t".into()))
                .unwrap();
        }
        let err = r.register("one-more", Ipv4Addr::new(10, 0, 2, 9), Owner::Static("t".into()));
        assert!(err.unwrap_err().contains("registered already"));
        // An existing name can still change; removing makes room.
        r.register("n1", Ipv4Addr::new(10, 0, 2, 10), Owner::Static("t".into()))
            .unwrap();
        assert_eq!(r.unregister("n2"), 1);
        r.register("one-more", Ipv4Addr::new(10, 0, 2, 9), Owner::Static("t".into()))
            .unwrap();
    }

    use super::*;

    fn records() -> Records {
        Records::new(
            &["test".into(), "Lab.".into()],
            Some(Ipv4Addr::new(10, 0, 2, 254)),
            Ipv4Addr::new(10, 0, 2, 1),
        )
    }

    #[test]
    fn registered_names_live_in_every_zone_until_their_owner_leaves() {
        let mut r = records();
        let owner = Owner::Dhcp([2, 0, 0, 0, 0, 1]);
        r.register("Web", Ipv4Addr::new(10, 0, 2, 5), owner.clone()).unwrap();
        assert_eq!(
            r.lookup("web.test."),
            Local::Address(NameAddrs::v4(Ipv4Addr::new(10, 0, 2, 5)))
        );
        assert_eq!(
            r.lookup("WEB.lab"),
            Local::Address(NameAddrs::v4(Ipv4Addr::new(10, 0, 2, 5)))
        );
        assert_eq!(r.lookup("db.test"), Local::NxDomain);
        assert_eq!(r.lookup("test"), Local::NxDomain);
        assert_eq!(r.lookup("example.com"), Local::NotLocal);
        // An IPv6 address learnt for the guest joins its names; a renewed
        // lease keeps it; a temporary address does not replace a stable one.
        let stable: Ipv6Addr = "fd00::ff:fe00:1".parse().unwrap();
        r.set_v6_for(Ipv4Addr::new(10, 0, 2, 5), stable, true);
        r.set_v6_for(Ipv4Addr::new(10, 0, 2, 5), "fd00::1234".parse().unwrap(), false);
        r.register("web", Ipv4Addr::new(10, 0, 2, 5), owner.clone()).unwrap();
        let Local::Address(a) = r.lookup("web.test") else {
            panic!()
        };
        assert_eq!(a.v6, Some(stable));
        assert_eq!(r.unregister_owner(&owner), 2);
        assert_eq!(r.lookup("web.test"), Local::NxDomain);
        assert!(r
            .register("bad name", Ipv4Addr::LOCALHOST, Owner::Static("x".into()))
            .is_err());
        assert!(r
            .register("-x", Ipv4Addr::LOCALHOST, Owner::Static("x".into()))
            .is_err());
    }

    #[test]
    fn builtin_host_names() {
        let r = records();
        assert_eq!(
            r.lookup("host.docker.internal"),
            Local::Address(NameAddrs::v4(Ipv4Addr::new(10, 0, 2, 254)))
        );
        assert_eq!(
            r.lookup("gateway.containers.internal."),
            Local::Address(NameAddrs::v4(Ipv4Addr::new(10, 0, 2, 1)))
        );
        assert_eq!(r.lookup("other.container.internal"), Local::NxDomain);
        let mut r = records();
        r.set_builtin_v6(Some("fd00::2".parse().unwrap()), "fd00::1".parse().unwrap());
        let Local::Address(host) = r.lookup("host.container.internal") else {
            panic!()
        };
        assert_eq!(host.v6, Some("fd00::2".parse().unwrap()));
        assert_eq!(host.v4, Some(Ipv4Addr::new(10, 0, 2, 254)));
        let no_loopback = Records::new(&["test".into()], None, Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(no_loopback.lookup("host.container.internal"), Local::NxDomain);
    }
}
