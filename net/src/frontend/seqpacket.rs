//! gvproxy's `-listen-bess unixpacket://PATH`: a SOCK_SEQPACKET unix socket
//! (BESS and other packet-processing programs), one bare Ethernet frame per
//! packet, one guest per connection. Packets the peer has no room for wait
//! in a bounded queue, as on the vfkit port, instead of being dropped.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::task::{Context, Poll};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::Frontend;
use crate::stack::StackRef;

/// Frames waiting for the peer, in bytes, before new ones are dropped.
const TX_LIMIT: usize = 4 << 20;

pub struct SeqpacketPort {
    fd: AsyncFd<Socket>,
    tx: RefCell<(VecDeque<Vec<u8>>, usize)>,
    tx_ready: tokio::sync::Notify,
    name: String,
}

impl Frontend for SeqpacketPort {
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|fd| std::io::Read::read(&mut fd.get_ref(), buf)) {
                // Zero-length packets are not frames; 0 from a closed peer is EOF
                // and is what the caller expects for "gone".
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut tx = self.tx.borrow_mut();
        if tx.0.is_empty() {
            match self
                .fd
                .get_ref()
                .send_with_flags(frame, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other.map(|_| ()),
            }
        }
        if tx.1 + frame.len() > TX_LIMIT {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        tx.1 += frame.len();
        tx.0.push_back(frame.to_vec());
        self.tx_ready.notify_one();
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl SeqpacketPort {
    async fn flush_task(self: Rc<Self>) {
        loop {
            self.tx_ready.notified().await;
            while !self.tx.borrow().0.is_empty() {
                let Ok(mut guard) = self.fd.writable().await else {
                    return;
                };
                let mut tx = self.tx.borrow_mut();
                while let Some(frame) = tx.0.front() {
                    match guard.try_io(|fd| {
                        fd.get_ref()
                            .send_with_flags(frame, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    }) {
                        Ok(Ok(_)) => {
                            let n = frame.len();
                            tx.0.pop_front();
                            tx.1 -= n;
                        }
                        // The peer is gone: the port detaches on its EOF.
                        Ok(Err(_)) => return,
                        Err(_would_block) => break,
                    }
                }
            }
        }
    }
}

/// Binds `path` now (so errors reach the caller) and returns the accept loop.
pub fn listen(stack: StackRef, path: &Path) -> io::Result<impl std::future::Future<Output = ()>> {
    crate::sys::remove_stale_socket(path);
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    socket
        .bind(&SockAddr::unix(path)?)
        .map_err(|e| io::Error::new(e.kind(), format!("listening on unixpacket://{}: {e}", path.display())))?;
    crate::sys::owner_only(path)?;
    socket.listen(16)?;
    socket.set_nonblocking(true)?;
    let listener = crate::sys::async_fd(socket)?;
    let name = format!("bess:{}", path.display());
    Ok(async move {
        let mut n = 0u64;
        loop {
            let accepted = async {
                loop {
                    let mut guard = listener.readable().await?;
                    if let Ok(r) = guard.try_io(|l| l.get_ref().accept()) {
                        return r;
                    }
                }
            };
            let conn = match accepted.await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            n += 1;
            let fd = match conn.set_nonblocking(true).and_then(|()| crate::sys::async_fd(conn)) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot poll an accepted connection");
                    continue;
                }
            };
            let port = Rc::new(SeqpacketPort {
                fd,
                tx: RefCell::default(),
                tx_ready: tokio::sync::Notify::new(),
                name: format!("{name}#{n}"),
            });
            tokio::task::spawn_local(port.clone().flush_task());
            tokio::task::spawn_local(crate::run_port(stack.clone(), port));
        }
    })
}
