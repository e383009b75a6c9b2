//! Which ports a guest listens on, from the kernel's socket tables in
//! `/proc/net/{tcp,tcp6,udp,udp6}` text (what `--publish-auto` forwards).
//! Parsing only: the caller reads the files (inside the guest's network
//! namespace) and passes their text in, so this is portable and testable.

use std::collections::BTreeSet;

use crate::forward::Proto;

/// A guest service worth forwarding: listening (TCP) or bound (UDP) on a
/// wildcard or non-loopback address. Loopback-only sockets cannot be
/// reached from outside the guest, so they are left alone.
pub type Listener = (Proto, u16);

/// TCP_LISTEN in the `st` column.
const TCP_LISTEN: &str = "0A";
/// TCP_CLOSE: how an unconnected UDP socket shows.
const UDP_UNCONNECTED: &str = "07";

/// The listeners in one table's text; `proto` says which kind of table it
/// is. Malformed lines are skipped.
pub fn parse(text: &str, proto: Proto) -> BTreeSet<Listener> {
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let wanted = match proto {
            Proto::Tcp => *state == TCP_LISTEN,
            Proto::Udp => *state == UDP_UNCONNECTED && remote.chars().all(|c| c == '0' || c == ':'),
        };
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        if !wanted || port == 0 || is_loopback(addr) {
            continue;
        }
        out.insert((proto, port));
    }
    out
}

/// Whether a table's hex address is loopback: 127/8 (stored little-endian,
/// so its last byte is 7F) or ::1 (and ::ffff:127.x).
/// A guest's snapshot as guest-init sends it for `ferry run
/// --publish-auto`: sections that each start with a `#tcp`, `#tcp6`,
/// `#udp` or `#udp6` line followed by that table's rows (the guest keeps
/// only listening rows; any row is fine here). Unknown sections are
/// skipped.
pub fn parse_snapshot(text: &str) -> BTreeSet<Listener> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find('#') {
        let section = &rest[start..];
        let end = section[1..].find("\n#").map_or(section.len(), |i| i + 2);
        let (this, next) = section.split_at(end);
        let name = this[1..].lines().next().unwrap_or("").trim();
        let proto = match name {
            "tcp" | "tcp6" => Some(Proto::Tcp),
            "udp" | "udp6" => Some(Proto::Udp),
            _ => None,
        };
        if let Some(proto) = proto {
            out.extend(parse(this, proto));
        }
        rest = next;
    }
    out
}

fn is_loopback(hex: &str) -> bool {
    match hex.len() {
        8 => hex.ends_with("7F"),
        32 => {
            hex == "00000000000000000000000001000000"
                || (hex.starts_with("0000000000000000FFFF0000") && hex.ends_with("7F"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_from_the_guest() {
        let snap = "#tcp\n   0: 00000000:1E61 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2\n#tcp6\n#udp\n   0: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3\n#udp6\n#junk\nx\n";
        let got = parse_snapshot(snap);
        assert_eq!(got, [(Proto::Tcp, 7777), (Proto::Udp, 53)].into_iter().collect());
        assert!(parse_snapshot("").is_empty());
        assert!(parse_snapshot("#tcp").is_empty());
        assert!(parse_snapshot("garbage without sections").is_empty());
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1E61 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0202000A:A1B2 0102000A:0050 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 0202000A:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   garbage line
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 0
   1: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 0
";
    const UDP: &str = "   sl  local_address rem_address   st
  1: 00000000:1E62 00000000:0000 07 0
  2: 0202000A:A000 0102000A:0035 01 0
";

    #[test]
    fn listeners_from_the_kernel_tables() {
        // 7777 on any address and 22 on the guest address; 8080 is loopback
        // only, the established connection is not a listener.
        assert_eq!(
            parse(TCP, Proto::Tcp),
            BTreeSet::from([(Proto::Tcp, 22), (Proto::Tcp, 7777)])
        );
        assert_eq!(parse(TCP6, Proto::Tcp), BTreeSet::from([(Proto::Tcp, 8081)]));
        assert_eq!(parse(UDP, Proto::Udp), BTreeSet::from([(Proto::Udp, 7778)]));
        assert!(parse("", Proto::Tcp).is_empty());
    }
}
