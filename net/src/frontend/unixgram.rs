//! vfkit / Virtualization.framework's network socket: a unix datagram
//! socket carrying one Ethernet frame per datagram. vfkit may open with the
//! 4-byte greeting "VFKT", which is not a frame. The peer's address is
//! learned from the datagrams it sends (the latest sender wins, so a
//! restarted VM is picked up).

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::task::{Context, Poll};
use tokio::net::unix::SocketAddr as UnixAddr;

use tokio::net::UnixDatagram;

use super::Frontend;

const GREETING: &[u8] = b"VFKT";

pub struct Unixgram {
    socket: UnixDatagram,
    peer: RefCell<Option<PathBuf>>,
    name: String,
}

impl Unixgram {
    /// Binds `path` (replacing a stale socket file). Call inside a runtime.
    pub fn bind(path: &std::path::Path) -> io::Result<Unixgram> {
        crate::sys::remove_stale_socket(path);
        let socket = UnixDatagram::bind(path)
            .map_err(|e| io::Error::new(e.kind(), format!("listening on unixgram {}: {e}", path.display())))?;
        crate::sys::owner_only(path)?;
        Ok(Unixgram {
            socket,
            peer: RefCell::new(None),
            name: format!("vfkit:{}", path.display()),
        })
    }

    fn learn(&self, from: &UnixAddr) {
        match from.as_pathname() {
            Some(path) => {
                let mut peer = self.peer.borrow_mut();
                if peer.as_deref() != Some(path) {
                    tracing::debug!(peer = %path.display(), "vfkit peer");
                    *peer = Some(path.to_path_buf());
                }
            }
            None => tracing::debug!("datagram from an unbound socket: replies cannot reach it"),
        }
    }
}

impl Frontend for Unixgram {
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.socket.poll_recv_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            match self.socket.try_recv_from(buf) {
                Ok((n, from)) => {
                    self.learn(&from);
                    // Not frames: the greeting and empty datagrams (a 0 would
                    // also read as "front end gone" to the caller).
                    if n == 0 || &buf[..n] == GREETING {
                        continue;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let peer = self.peer.borrow();
        let Some(peer) = peer.as_ref() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no vfkit peer yet"));
        };
        self.socket.try_send_to(frame, peer).map(|_| ())
    }

    fn name(&self) -> &str {
        &self.name
    }
}
