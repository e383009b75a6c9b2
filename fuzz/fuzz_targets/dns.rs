//! DNS queries from a guest (UDP and TCP framing), answered from ferry's
//! records or turned into an upstream request (never sent here).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use ferry_dns::server::{DnsServer, Transport};
use ferry_dns::DnsConfig;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static SERVER: DnsServer = DnsServer::new(DnsConfig::default());
}

fuzz_target!(|data: &[u8]| {
    SERVER.with(|s| {
        let src = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));
        let _ = s.answer_now(data, src, Transport::Udp);
        let _ = s.answer_now(data, src, Transport::Tcp);
    });
});
