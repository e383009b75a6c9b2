//! `ferry net --state-file`: what guests and API clients set up — DHCP
//! leases (and the host names they carry), port forwards, DNS names added
//! through the APIs — kept in a JSON file, so a restarted daemon gives a
//! guest that kept running its address, its forwards and its names back.
//!
//! Snapshots are plain data (`State`), built from and applied to a `Stack`
//! with the time passed in; reading and writing the file is apart.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::dhcp::Lease;
use crate::forward::{ForwardSpec, GuestTarget, Proto};
use crate::stack::Stack;

/// System calls of writing the state file after start-up (the seccomp
/// allow-list): a temporary file renamed over the old one.
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// What is kept: JSON, `{"version": 1, "leases": [...], "forwards": [...],
/// "dns": [...]}`.
#[derive(Clone, Debug, PartialEq)]
pub struct State(Value);

impl State {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.0).unwrap_or_default()
    }

    pub fn parse(text: &str) -> Result<State, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
        match v.get("version").and_then(Value::as_u64) {
            Some(1) => Ok(State(v)),
            other => Err(format!("version {other:?}, expected 1")),
        }
    }
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The stack's leases, forwards and API-registered names at `now`.
pub fn snapshot(st: &Stack, now: Instant) -> State {
    let leases: Vec<Value> = st
        .dhcp
        .leases()
        .filter(|l| l.expires > now)
        .map(|l| {
            json!({
                "mac": mac_string(l.mac),
                "ip": l.ip.to_string(),
                "hostname": l.hostname,
                "expires_in": (l.expires - now).as_secs(),
            })
        })
        .collect();
    let forwards: Vec<Value> = st
        .list_forwards()
        .iter()
        .map(|f| {
            let guest = match &f.guest {
                GuestTarget::Ip(ip) => json!({ "ip": ip.to_string() }),
                GuestTarget::Name(n) => json!({ "name": n }),
            };
            json!({ "proto": f.proto.as_str(), "host": f.host.to_string(), "guest": guest, "guest_port": f.guest_port })
        })
        .collect();
    let dns: Vec<Value> = st
        .dns
        .as_ref()
        .map(|d| d.records().static_entries())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, a, owner)| {
            json!({
                "name": name,
                "ip": a.v4.map(|v| v.to_string()),
                "ip6": a.v6.map(|v| v.to_string()),
                "owner": owner,
            })
        })
        .collect();
    State(json!({ "version": 1, "leases": leases, "forwards": forwards, "dns": dns }))
}

/// Applies a snapshot to a fresh stack. What cannot be put back (a port
/// now taken, a lease for an address outside the plan) is skipped and
/// returned as a sentence for the log.
pub fn restore(st: &mut Stack, state: &State, now: Instant) -> Vec<String> {
    let mut skipped = Vec::new();
    let list = |k: &str| state.0.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    for l in list("leases") {
        let mac = text(&l, "mac").and_then(|m| crate::config::parse_mac(&m));
        let ip = text(&l, "ip").and_then(|i| i.parse::<Ipv4Addr>().ok());
        let secs = l.get("expires_in").and_then(Value::as_u64);
        let (Some(mac), Some(ip), Some(secs)) = (mac, ip, secs) else {
            skipped.push(format!("lease {l}: malformed"));
            continue;
        };
        if !st.cfg.contains(ip) {
            skipped.push(format!("lease {ip}: outside the network {}", st.cfg.subnet));
            continue;
        }
        let hostname = text(&l, "hostname");
        st.dhcp.restore(Lease {
            mac,
            ip,
            hostname: hostname.clone(),
            expires: now + Duration::from_secs(secs),
        });
        if let Some(name) = hostname {
            st.dns_register(mac, &name, IpAddr::V4(ip));
        }
    }
    for f in list("forwards") {
        let proto = text(&f, "proto").and_then(|p| Proto::parse(&p));
        let host = text(&f, "host").and_then(|h| h.parse::<SocketAddr>().ok());
        let port = f
            .get("guest_port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        let g = f.get("guest").cloned().unwrap_or_default();
        let guest = match (text(&g, "ip").and_then(|i| i.parse().ok()), text(&g, "name")) {
            (Some(ip), _) => Some(GuestTarget::Ip(ip)),
            (None, Some(n)) => Some(GuestTarget::Name(n)),
            (None, None) => None,
        };
        let (Some(proto), Some(host), Some(guest_port), Some(guest)) = (proto, host, port, guest) else {
            skipped.push(format!("forward {f}: malformed"));
            continue;
        };
        let spec = ForwardSpec {
            proto,
            host,
            guest,
            guest_port,
        };
        match st.add_forward(spec) {
            Ok(()) | Err(crate::forward::ForwardError::Exists(..)) => {}
            Err(e) => skipped.push(e.to_string()),
        }
    }
    if let Some(dns) = st.dns.clone() {
        let mut records = dns.records();
        for r in list("dns") {
            let (Some(name), owner) = (text(&r, "name"), text(&r, "owner").unwrap_or_default()) else {
                skipped.push(format!("DNS name {r}: malformed"));
                continue;
            };
            let addrs = ferry_dns::NameAddrs {
                v4: text(&r, "ip").and_then(|i| i.parse::<Ipv4Addr>().ok()),
                v6: text(&r, "ip6").and_then(|i| i.parse::<Ipv6Addr>().ok()),
                v6_stable: true,
            };
            if let Err(e) = records.restore(&name, addrs, ferry_dns::Owner::Static(owner)) {
                skipped.push(format!("DNS name {name}: {e}"));
            }
        }
    }
    skipped
}

/// Whether two snapshots keep the same things (lease lifetimes aside).
pub fn same_apart_from_time(a: &State, b: &State) -> bool {
    let strip = |s: &State| {
        let mut v = s.0.clone();
        if let Some(leases) = v.get_mut("leases").and_then(Value::as_array_mut) {
            for l in leases {
                if let Some(o) = l.as_object_mut() {
                    o.remove("expires_in");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// Reads the state file; a missing file is an empty state.
pub fn load(path: &Path) -> io::Result<Option<State>> {
    match std::fs::read_to_string(path) {
        Ok(text) => State::parse(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("state file {}: {e}; move it away to start without it", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("state file {}: {e}", path.display()))),
    }
}

/// Writes the state file whole (a temporary file renamed over it), so a
/// crash mid-write leaves the old one.
pub fn save(path: &Path, state: &State) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, state.to_json())?;
    std::fs::rename(&tmp, path)
}
