//! `--pcap FILE`: every frame the switch receives or sends, in the classic
//! libpcap format (Ethernet link type), readable by tcpdump and Wireshark.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: u32 = 0xa1b2_c3d4;
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65_535 + 14;

pub struct PcapWriter {
    file: File,
    failed: bool,
}

impl PcapWriter {
    pub fn create(path: &Path) -> io::Result<PcapWriter> {
        let mut file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating pcap file {}: {e}", path.display())))?;
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&SNAPLEN.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        file.write_all(&header)?;
        Ok(PcapWriter { file, failed: false })
    }

    /// Appends one frame; after a write error capture stops (logged once).
    pub fn record(&mut self, frame: &[u8]) {
        if self.failed {
            return;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&(now.as_secs() as u32).to_le_bytes());
        h[4..8].copy_from_slice(&now.subsec_micros().to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        if let Err(e) = self.file.write_all(&h).and_then(|()| self.file.write_all(frame)) {
            tracing::warn!(error = %e, "pcap capture stopped");
            self.failed = true;
        }
    }
}
