//! Counters for the data path; one field per event, one per drop reason.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Data-path counters, shared as `Arc<NetMetrics>`.
        #[derive(Debug, Default)]
        pub struct NetMetrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl NetMetrics {
            /// `name value` lines, for logs and the control API.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(let _ = writeln!(out, "{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));)*
                out
            }
        }
    };
}

metrics! {
    /// Frames received from guests.
    rx_frames,
    /// Bytes received from guests.
    rx_bytes,
    /// Frames sent to guests.
    tx_frames,
    /// Bytes sent to guests.
    tx_bytes,
    /// IPv4 packets received from guests.
    rx_ipv4,
    /// IPv6 packets received from guests.
    rx_ipv6,
    /// TCP flows opened to the host over IPv6 (also counted in tcp_flows_opened).
    tcp6_flows_opened,
    /// UDP flows opened over IPv6 (also counted in udp_flows_opened).
    udp6_flows_opened,
    /// Router and neighbour advertisements sent.
    ndp_replies,
    /// DHCPv6 replies sent.
    dhcp6_replies,
    /// MAC table entries evicted because the table was full (a flood of
    /// invented source MACs).
    mac_table_evictions,
    /// Neighbour (ARP/NDP) entries evicted because the table was full.
    neighbor_evictions,
    /// Forwards refused because ferry already held MAX_FORWARDS.
    forwards_refused,
    /// Frames forwarded from one guest port to another.
    switched_frames,
    /// TCP flows opened to the host.
    tcp_flows_opened,
    /// TCP connects the host refused (answered with RST).
    tcp_refused,
    /// TCP connects that timed out or were unreachable.
    tcp_unreachable,
    /// UDP flows opened.
    udp_flows_opened,
    /// ICMP echo requests relayed to the host.
    icmp_echo_relayed,
    /// DHCP replies sent.
    dhcp_replies,
    /// Dropped: frame shorter than its headers or with inconsistent lengths.
    drop_malformed,
    /// Dropped: larger than the MTU.
    drop_oversized,
    /// Dropped: bad IP, TCP, UDP or ICMP checksum.
    drop_bad_checksum,
    /// Dropped: an ethertype or IP protocol the NAT does not handle.
    drop_unsupported,
    /// Dropped: the flow table was full.
    drop_flow_limit,
    /// Dropped: no guest known for the destination.
    drop_no_neighbor,
    /// Dropped: the front end could not take the frame (full or gone).
    drop_tx_failed,
    /// Dropped: addressed somewhere the NAT does not go (gateway ports, loopback, in-subnet unknowns).
    drop_no_route,
    /// TCP resends the gateway's stack built that were held back: the
    /// guest was still acknowledging and reported no hole (see resend.rs).
    tcp_resends_held,
    /// Times a quiet flow gave its socket buffers' pages back (see tcp.rs).
    tcp_buffers_trimmed,
    /// Front ends detached because of a protocol error (e.g. a bad stream length prefix).
    port_errors,
}

impl NetMetrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
