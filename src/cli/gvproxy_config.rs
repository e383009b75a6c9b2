//! gvproxy's `-config FILE`: its YAML configuration (gvproxy's
//! `cmd/gvproxy/config.go` and `pkg/types/configuration.go`), read into
//! the same settings the command line gives. As gvproxy: with a file, the
//! defaults of the plain command line (static lease, `-ssh-port` forward,
//! DNS zones, vpnkit UUID) are not added; the file's `stack` settings win
//! over the address-plan flags, while the listen endpoints, transports,
//! pid and log files given on the command line win over the file's.
//! A key gvproxy does not know, or one ferry cannot honour (regexp DNS
//! records, NAT to other host addresses), is refused by name.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub listen: Vec<String>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub stack: Stack,
    #[serde(default)]
    pub interfaces: Interfaces,
    #[serde(default)]
    pub forwards: Vec<SocketForward>,
    pub pid_file: Option<String>,
    pub log_file: Option<String>,
    pub services: Option<String>,
    #[serde(default)]
    pub ec2_metadata_access: bool,
    pub notification: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    pub vpnkit: Option<String>,
    pub qemu: Option<String>,
    pub bess: Option<String>,
    pub stdio: Option<String>,
    pub vfkit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketForward {
    pub socket: String,
    pub dest: String,
    pub user: String,
    pub identity: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Stack {
    #[serde(default)]
    pub debug: bool,
    #[serde(rename = "capture-file")]
    pub capture_file: Option<String>,
    pub mtu: Option<u32>,
    pub subnet: Option<String>,
    #[serde(rename = "gatewayIP")]
    pub gateway_ip: Option<Ipv4Addr>,
    #[serde(rename = "deviceIP")]
    pub device_ip: Option<Ipv4Addr>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<Ipv4Addr>,
    pub gateway_mac_address: Option<String>,
    #[serde(default)]
    pub dns: Vec<Zone>,
    #[serde(default)]
    pub dns_search_domains: Vec<String>,
    #[serde(default)]
    pub forwards: BTreeMap<String, String>,
    #[serde(default)]
    pub nat: BTreeMap<Ipv4Addr, Ipv4Addr>,
    #[serde(default, rename = "gatewayVirtualIPs")]
    pub gateway_virtual_ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub dhcp_static_leases: BTreeMap<Ipv4Addr, String>,
    #[serde(default, rename = "vpnKitUUIDMacAddresses")]
    pub vpnkit_uuid_mac_addresses: BTreeMap<String, String>,
    #[serde(default)]
    pub ec2_metadata_access: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    #[serde(default)]
    pub records: Vec<Record>,
    #[serde(rename = "defaultIP")]
    pub default_ip: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub name: Option<String>,
    pub ip: Option<IpAddr>,
    pub regexp: Option<String>,
}

pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("failed to read config file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_yaml_ng::from_str(&text).with_context(|| format!("failed to parse configuration {}", path.display()))
}

impl Stack {
    /// The `dns` zones as (zone, name, address); regexp records and
    /// default addresses (gvproxy answers every name in the zone) are
    /// refused.
    pub fn dns_records(&self) -> anyhow::Result<Vec<(String, String, IpAddr)>> {
        let mut out = Vec::new();
        for zone in &self.dns {
            anyhow::ensure!(
                zone.default_ip.is_none(),
                "stack.dns zone {:?}: defaultIP (an answer for every name in the zone) is not supported by ferry",
                zone.name
            );
            for r in &zone.records {
                anyhow::ensure!(
                    r.regexp.is_none(),
                    "stack.dns zone {:?}: regexp records are not supported by ferry; list the names",
                    zone.name
                );
                let (Some(name), Some(ip)) = (&r.name, r.ip) else {
                    anyhow::bail!("stack.dns zone {:?}: a record needs name and ip", zone.name)
                };
                out.push((zone.name.trim_end_matches('.').to_string(), name.clone(), ip));
            }
        }
        Ok(out)
    }

    /// `forwards` (`"127.0.0.1:2222": "192.168.127.2:22"`) as address pairs.
    pub fn forward_pairs(&self) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
        self.forwards
            .iter()
            .map(|(host, guest)| {
                let h = host
                    .parse()
                    .with_context(|| format!("stack.forwards: {host:?} is not IP:PORT"))?;
                let g = guest
                    .parse()
                    .with_context(|| format!("stack.forwards: {guest:?} is not IP:PORT"))?;
                Ok((h, g))
            })
            .collect()
    }

    /// Whether the host IP stands for the host's loopback, from `nat` and
    /// `gatewayVirtualIPs` (gvproxy's defaults: yes). ferry's host alias is
    /// that one mapping; other NAT entries are refused.
    pub fn host_alias(&self, host_ip: Ipv4Addr) -> anyhow::Result<bool> {
        for (from, to) in &self.nat {
            anyhow::ensure!(
                *from == host_ip && to.is_loopback(),
                "stack.nat {from}: {to}: ferry translates only the host IP ({host_ip}) to the host's loopback"
            );
        }
        for ip in &self.gateway_virtual_ips {
            anyhow::ensure!(
                *ip == host_ip,
                "stack.gatewayVirtualIPs {ip}: ferry answers only for the host IP ({host_ip}) besides the gateway"
            );
        }
        Ok(self.nat.is_empty() || self.nat.contains_key(&host_ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gvproxy's own example file (cmd/gvproxy/config.yaml).
    const EXAMPLE: &str = r#"
log-level: info
stack:
    mtu: 1500
    subnet: 192.168.127.0/24
    gatewayIP: 192.168.127.1
    deviceIP: 192.168.127.2
    hostIP: 192.168.127.254
    gatewayMacAddress: 5a:94:ef:e4:0c:dd
    dns:
        - name: containers.internal.
          records:
            - name: gateway
              ip: 192.168.127.1
            - name: host
              ip: 192.168.127.254
    forwards:
        127.0.0.1:2222: 192.168.127.2:22
    nat:
        192.168.127.254: 127.0.0.1
    gatewayVirtualIPs:
        - 192.168.127.254
    dhcpStaticLeases:
        192.168.127.2: 5a:94:ef:e4:0c:ee
    vpnKitUUIDMacAddresses:
        c3d68012-0208-11ea-9fd7-f2189899ab08: 5a:94:ef:e4:0c:ee
"#;

    #[test]
    fn reads_gvproxys_example() {
        let c: Config = serde_yaml_ng::from_str(EXAMPLE).unwrap();
        assert_eq!(c.stack.mtu, Some(1500));
        assert_eq!(c.stack.host_ip, Some(Ipv4Addr::new(192, 168, 127, 254)));
        let dns = c.stack.dns_records().unwrap();
        assert_eq!(
            dns[1],
            (
                "containers.internal".into(),
                "host".into(),
                "192.168.127.254".parse().unwrap()
            )
        );
        assert_eq!(
            c.stack.forward_pairs().unwrap(),
            [("127.0.0.1:2222".parse().unwrap(), "192.168.127.2:22".parse().unwrap())]
        );
        assert!(c.stack.host_alias(Ipv4Addr::new(192, 168, 127, 254)).unwrap());
        assert_eq!(c.stack.dhcp_static_leases.len(), 1);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let e = serde_yaml_ng::from_str::<Config>("stack:\n  mtuu: 1500\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `mtuu`"), "{e}");
        let c: Config = serde_yaml_ng::from_str("stack:\n  nat:\n    192.168.127.254: 10.0.0.5\n").unwrap();
        assert!(c.stack.host_alias(Ipv4Addr::new(192, 168, 127, 254)).is_err());
        let c: Config =
            serde_yaml_ng::from_str("stack:\n  dns:\n    - name: x.\n      records:\n        - regexp: .*\n").unwrap();
        assert!(c.stack.dns_records().unwrap_err().to_string().contains("regexp"));
    }
}
