//! vpnkit's VM protocol, as hyperkit speaks it and gvproxy's
//! `-listen-vpnkit` serves it: a fixed-size handshake, then frames with a
//! 2-byte little-endian length ([`super::stream::Framing::Hyperkit`]).
//!
//! The handshake (hyperkit's `src/lib/pci_virtio_net_vpnkit.c`): the client
//! sends a 49-byte init message, which is echoed back; then a 41-byte
//! command whose bytes 1..37 are the VM's UUID; the answer is 258 bytes:
//! `1`, the MTU and the largest frame (MTU + 14) as little-endian u16s, and
//! the MAC address the VM is to use. Parsing is here, apart from the I/O.

pub const INIT_LEN: usize = 49;
pub const COMMAND_LEN: usize = 41;
pub const REPLY_LEN: usize = 258;

/// The UUID gvproxy maps to its guest MAC 5a:94:ef:e4:0c:ee by default.
pub const DEFAULT_UUID: &str = "c3d68012-0208-11ea-9fd7-f2189899ab08";
pub const DEFAULT_MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];

/// The UUID in a command message (lossy: hyperkit sends ASCII).
pub fn command_uuid(command: &[u8; COMMAND_LEN]) -> String {
    String::from_utf8_lossy(&command[1..37]).into_owned()
}

/// The MAC for a VM: the one `macs` assigns to its UUID (gvproxy's
/// `vpnKitUUIDMacAddresses`); for any other UUID one derived from it
/// (locally administered, unicast), so a VM keeps its address (and DHCP
/// lease) across reconnects where gvproxy picks a random one each time.
pub fn mac_for(uuid: &str, macs: &[(String, [u8; 6])]) -> [u8; 6] {
    if let Some((_, mac)) = macs.iter().find(|(u, _)| u.eq_ignore_ascii_case(uuid)) {
        return *mac;
    }
    // FNV-1a: a stable spread of the UUID's bytes, not a secret.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uuid.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The answer to a command message.
pub fn reply(mtu: u16, mac: [u8; 6]) -> [u8; REPLY_LEN] {
    let mut r = [0u8; REPLY_LEN];
    r[0] = 1;
    r[1..3].copy_from_slice(&mtu.to_le_bytes());
    r[3..5].copy_from_slice(&mtu.saturating_add(14).to_le_bytes());
    r[5..11].copy_from_slice(&mac);
    r
}

/// Runs the handshake on a fresh connection.
pub async fn handshake<S>(conn: &mut S, mtu: u16, macs: &[(String, [u8; 6])]) -> std::io::Result<[u8; 6]>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut init = [0u8; INIT_LEN];
    conn.read_exact(&mut init).await?;
    conn.write_all(&init).await?;
    let mut command = [0u8; COMMAND_LEN];
    conn.read_exact(&mut command).await?;
    let uuid = command_uuid(&command);
    let mac = mac_for(&uuid, macs);
    tracing::debug!(%uuid, mac = ?mac, "vpnkit handshake");
    conn.write_all(&reply(mtu, mac)).await?;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_layout() {
        let r = reply(1500, DEFAULT_MAC);
        assert_eq!(r[0], 1);
        assert_eq!(u16::from_le_bytes([r[1], r[2]]), 1500);
        assert_eq!(u16::from_le_bytes([r[3], r[4]]), 1514);
        assert_eq!(&r[5..11], &DEFAULT_MAC);
        assert!(r[11..].iter().all(|&b| b == 0));
    }

    #[test]
    fn macs() {
        let map = [(DEFAULT_UUID.to_string(), DEFAULT_MAC)];
        assert_eq!(mac_for(DEFAULT_UUID, &map), DEFAULT_MAC);
        assert_ne!(mac_for(DEFAULT_UUID, &[]), DEFAULT_MAC, "only when mapped");
        let m = mac_for("11111111-2222-3333-4444-555555555555", &map);
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(m, mac_for("11111111-2222-3333-4444-555555555555", &map));
        assert_ne!(m, mac_for("11111111-2222-3333-4444-555555555556", &map));
    }

    #[test]
    fn uuid_from_command() {
        let mut c = [0u8; COMMAND_LEN];
        c[0] = 1;
        c[1..37].copy_from_slice(DEFAULT_UUID.as_bytes());
        assert_eq!(command_uuid(&c), DEFAULT_UUID);
    }
}
