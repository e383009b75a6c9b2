//! ferry's DNS: authoritative local zones (`<name>.test` for every guest),
//! the built-in host names (`host.container.internal` and friends), and a
//! caching forwarder for everything else. Message parsing and encoding is
//! hickory-proto's; the server is served by the net stack on the gateway
//! address and optionally on a host socket (`listener`).
#![deny(unsafe_code)]

mod batch;
pub mod cache;
pub mod forward;
pub mod listener;
pub mod metrics;
pub mod records;
pub mod server;
pub mod wire;

use std::net::{IpAddr, SocketAddr};

/// System calls of forwarding to upstream resolvers and the host listener
/// (the seccomp allow-list).
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_sendmmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
];

pub use records::{NameAddrs, Owner, Records};
pub use server::{DnsConfig, DnsServer, Step, Transport};

/// The nameservers of a resolv.conf, as upstreams on port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Parses `IP` or `IP:PORT` (`[v6]:PORT`) as an upstream.
pub fn parse_upstream(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_and_upstream_syntax() {
        let got = parse_resolv_conf("# c\nnameserver 192.0.2.53\nsearch x\nnameserver ::1\nnameserver bogus\n");
        assert_eq!(got, ["192.0.2.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
        assert_eq!(
            parse_upstream("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_upstream("127.0.0.1"), Some("127.0.0.1:53".parse().unwrap()));
        assert_eq!(parse_upstream("nope"), None);
    }
}
