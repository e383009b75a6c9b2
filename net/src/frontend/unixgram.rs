//! vfkit / Virtualization.framework's network socket: a unix datagram
//! socket carrying one Ethernet frame per datagram. vfkit may open with the
//! 4-byte greeting "VFKT", which is not a frame. The peer's address is
//! learned from the datagrams it sends (the latest sender wins, so a
//! restarted VM is picked up).
//!
//! A datagram socket's receiver holds only a few datagrams
//! (`net.unix.max_dgram_qlen`, 10 by default on Linux), so a burst toward the
//! guest meets `EAGAIN` long before any buffer is full. Dropping those
//! frames costs TCP a retransmission timeout each (a 2 MiB transfer took
//! minutes); they wait in a bounded queue instead and go out as the peer
//! reads, as gvproxy's blocking writes do. The socket is not connected to
//! the peer, so that a restarted VM can still reach it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::unix::SocketAddr as UnixAddr;

use tokio::net::UnixDatagram;

use super::Frontend;

const GREETING: &[u8] = b"VFKT";
/// Frames waiting for the peer to read, in bytes, before new ones are dropped.
const TX_LIMIT: usize = 4 << 20;
/// A wake-up comes when the peer frees one of our datagrams; this bounds
/// the wait if the peer's queue is full of someone else's.
const RETRY: Duration = Duration::from_millis(2);

pub struct Unixgram {
    socket: UnixDatagram,
    peer: RefCell<Option<PathBuf>>,
    tx: RefCell<TxQueue>,
    tx_ready: tokio::sync::Notify,
    name: String,
}

#[derive(Default)]
struct TxQueue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Unixgram {
    /// Binds `path` (replacing a stale socket file) and starts the task that
    /// sends what the peer could not take at once. Call where `spawn_local` works.
    pub fn bind(path: &std::path::Path) -> io::Result<Rc<Unixgram>> {
        crate::sys::remove_stale_socket(path);
        let socket = UnixDatagram::bind(path)
            .map_err(|e| io::Error::new(e.kind(), format!("listening on unixgram {}: {e}", path.display())))?;
        crate::sys::owner_only(path)?;
        // gvproxy's sizes: room for bursts both ways.
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_send_buffer_size(1 << 20);
        let _ = sock.set_recv_buffer_size(4 << 20);
        let port = Rc::new(Unixgram {
            socket,
            peer: RefCell::new(None),
            tx: RefCell::default(),
            tx_ready: tokio::sync::Notify::new(),
            name: format!("vfkit:{}", path.display()),
        });
        tokio::task::spawn_local(port.clone().flush_task());
        Ok(port)
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

impl Unixgram {
    /// Sends queued frames as the peer makes room. The port is bound once
    /// for the life of the process, so the task holds it to the end.
    async fn flush_task(self: Rc<Self>) {
        loop {
            self.tx_ready.notified().await;
            loop {
                {
                    let peer = self.peer.borrow().clone();
                    let mut tx = self.tx.borrow_mut();
                    let Some(peer) = peer else {
                        *tx = TxQueue::default();
                        break;
                    };
                    while let Some(frame) = tx.frames.front() {
                        match self.socket.try_send_to(frame, &peer) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            // Sent, or undeliverable (peer gone): done with it either way.
                            _ => {
                                let n = frame.len();
                                tx.frames.pop_front();
                                tx.bytes -= n;
                            }
                        }
                    }
                    if tx.frames.is_empty() {
                        break;
                    }
                }
                let writable = std::future::poll_fn(|cx| self.socket.poll_send_ready(cx).map(|_| ()));
                let _ = tokio::time::timeout(RETRY, writable).await;
            }
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
        let mut tx = self.tx.borrow_mut();
        if tx.frames.is_empty() {
            match self.socket.try_send_to(frame, peer) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other.map(|_| ()),
            }
        }
        // Behind the queue, in order.
        if tx.bytes + frame.len() > TX_LIMIT {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        tx.bytes += frame.len();
        tx.frames.push_back(frame.to_vec());
        self.tx_ready.notify_one();
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}
