//! DHCPv4, DHCPv6 and NDP messages from a guest, parsed and answered.
#![no_main]

use std::time::{Duration, Instant};

use ferry_net::config::NetConfig;
use ferry_net::dhcp::{self, DhcpServer};
use ferry_net::dhcp6::{Dhcp6Server, Info};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = NetConfig::default();
    let now = Instant::now();
    let mut out = [0u8; 1500];
    if let Ok(req) = dhcp::parse(data) {
        let _ = DhcpServer::new().handle(&cfg, &req, now, &mut out);
    }
    let info = Info {
        server_mac: cfg.gateway_mac,
        dns: None,
        search: &[],
        stateful: cfg.v6.as_ref().map(|p| p.prefix),
        static_leases: &[],
        reserved: &[],
        lease_time: Duration::from_secs(3600),
    };
    let _ = Dhcp6Server::new().handle(data, &info, [2, 0, 0, 0, 0, 1], now, &mut out);
    let _ = ferry_net::ndp::parse(data);
});
