//! gvproxy's `-listen-stdio`: one guest whose frames arrive on standard
//! input and leave on standard output, each preceded by a 2-byte
//! little-endian length (hyperkit's framing without its handshake). Used
//! when the hypervisor side is a process that starts ferry with pipes, e.g.
//! `ssh host gvproxy -listen-stdio accept`.

use std::fs::File;
use std::io::{self, IoSlice};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;

use super::stream::{Framing, StreamIo, StreamPort};
use crate::stack::StackRef;

/// Standard input for reading, standard output for writing, both
/// non-blocking (pipes or sockets; a terminal or a regular file cannot be
/// polled and is refused).
pub struct Stdio {
    rd: AsyncFd<File>,
    wr: AsyncFd<File>,
}

impl Stdio {
    pub fn open() -> io::Result<Stdio> {
        let dup = |fd: std::os::fd::BorrowedFd<'_>, what: &str| -> io::Result<AsyncFd<File>> {
            let owned = File::from(fd.try_clone_to_owned()?);
            crate::sys::set_nonblocking(&owned)?;
            crate::sys::async_fd(owned).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("-listen-stdio: {what} cannot be polled ({e}); it must be a pipe or a socket"),
                )
            })
        };
        Ok(Stdio {
            rd: dup(io::stdin().as_fd(), "standard input")?,
            wr: dup(io::stdout().as_fd(), "standard output")?,
        })
    }
}

impl StreamIo for Stdio {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.rd.poll_read_ready(cx).map_ok(|mut g| g.retain_ready())
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let r = (&mut self.rd.get_ref()).read(buf);
        if r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock) {
            clear_read(&self.rd);
        }
        r
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let r = (&mut self.wr.get_ref()).write_vectored(bufs);
        if r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock) {
            clear_write(&self.wr);
        }
        r
    }

    async fn writable(&self) -> io::Result<()> {
        self.wr.writable().await.map(|mut g| g.retain_ready())
    }
}

/// Forgets readiness after `EAGAIN` so the next poll waits for the reactor.
fn clear_read(fd: &AsyncFd<File>) {
    let waker = std::task::Waker::noop();
    if let Poll::Ready(Ok(mut g)) = fd.poll_read_ready(&mut Context::from_waker(waker)) {
        g.clear_ready();
    }
}

fn clear_write(fd: &AsyncFd<File>) {
    let waker = std::task::Waker::noop();
    if let Poll::Ready(Ok(mut g)) = fd.poll_write_ready(&mut Context::from_waker(waker)) {
        g.clear_ready();
    }
}

/// Attaches standard input/output as one port; the returned future ends
/// when standard input closes.
pub fn attach(stack: &StackRef) -> io::Result<impl std::future::Future<Output = ()>> {
    let max_frame = stack.borrow().switch.rx.buf.len();
    let port = StreamPort::with_framing(Stdio::open()?, Framing::Hyperkit, max_frame, "stdio".into());
    tokio::task::spawn_local(port.clone().flush_task());
    Ok(crate::run_port(stack.clone(), port))
}
