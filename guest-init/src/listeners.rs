//! `ferry run --publish-auto`: tell the host which ports the guest listens
//! on, so it can forward them. Every half second the kernel's socket tables
//! are read and only their listening rows kept (TCP state 0A, unconnected
//! UDP 07); when that changes, the snapshot goes to the host over vsock
//! port [`PORT`]: `#tcp`, `#tcp6`, `#udp`, `#udp6` sections of raw rows,
//! NUL-terminated. The host parses them (ferry-net's `listeners` module)
//! and decides what to forward; nothing is parsed here.

use std::io::Write;
use std::time::Duration;

/// The host port snapshots go to.
pub const PORT: u32 = 1025;
const PERIOD: Duration = Duration::from_millis(500);

/// One snapshot of the listening rows.
fn snapshot() -> String {
    let mut out = String::new();
    for (table, state) in [("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")] {
        out.push('#');
        out.push_str(table);
        out.push('\n');
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        for row in text.lines().skip(1) {
            if row.split_whitespace().nth(3) == Some(state) {
                out.push_str(row);
                out.push('\n');
            }
        }
    }
    out
}

/// Starts the watcher thread.
pub fn start() {
    let spawned = std::thread::Builder::new().name("publish-auto".into()).spawn(|| {
        let mut host = None;
        let mut sent = String::new();
        loop {
            let now = snapshot();
            if now != sent || host.is_none() {
                if host.is_none() {
                    host = crate::sys::vsock_connect_host(PORT).ok();
                }
                let delivered = host.as_mut().is_some_and(|h: &mut std::fs::File| {
                    h.write_all(now.as_bytes()).and_then(|()| h.write_all(&[0])).is_ok()
                });
                if delivered {
                    sent = now;
                } else {
                    // The host is not listening (yet): try again next round.
                    host = None;
                }
            }
            std::thread::sleep(PERIOD);
        }
    });
    if let Err(e) = spawned {
        eprintln!("ferry-init: publish-auto watcher: {e}");
    }
}
