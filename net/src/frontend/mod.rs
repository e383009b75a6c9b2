//! Front ends: how guest frames enter and leave ferry.

pub mod listen;
pub mod seqpacket;
pub mod stdio;
pub mod stream;
#[cfg(target_os = "linux")]
pub mod tap;
pub mod unixgram;
#[cfg(target_os = "linux")]
pub mod vhost_user;
pub mod vpnkit;

use std::io;
use std::task::{Context, Poll};

/// One attachment point of the switch (a tap device, a QEMU stream
/// connection, a vhost-user device...). Frames are whole Ethernet frames
/// without any front-end framing.
pub trait Frontend {
    /// Reads one frame into `buf` when one is available. `Ok(0)` means the
    /// front end is gone for good.
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// Sends one frame without blocking; `WouldBlock` means it was dropped.
    fn send(&self, frame: &[u8]) -> io::Result<()>;

    /// A short name for logs ("tap0", "qemu:/run/x.sock").
    fn name(&self) -> &str;

    /// Which TCP segments larger than the MTU this front end's guest takes
    /// whole ([`Frontend::send_gso`]); the switch splits the rest.
    fn offloads(&self) -> crate::gso::Offloads {
        crate::gso::Offloads::default()
    }

    /// Sends a TCP segment larger than the MTU whole, for a guest that
    /// cuts it into `segment_size`-byte pieces itself (only called when
    /// [`Frontend::offloads`] says the guest takes it).
    fn send_gso(&self, frame: &[u8], segment_size: usize) -> io::Result<()> {
        let _ = segment_size;
        self.send(frame)
    }
}
