//! QEMU's stream netdev (`-netdev stream` / `-netdev socket`): Ethernet
//! frames over a byte stream, each preceded by its length as a 4-byte
//! big-endian integer. One connection is one switch port.
//!
//! A bad length (zero or above the MTU) cannot be resynchronised on a
//! stream, so it ends that connection only; other guests keep running.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Notify;

use super::Frontend;

const HEADER: usize = 4;
/// Output queued behind a slow reader before frames are dropped.
const TX_LIMIT: usize = 4 << 20;

/// The socket operations the framing needs, for unix and TCP streams.
pub trait StreamIo {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>>;
}

macro_rules! stream_io {
    ($t:ty) => {
        impl StreamIo for $t {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_read_ready(self, cx)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                <$t>::try_write_vectored(self, bufs)
            }
            fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> {
                <$t>::writable(self)
            }
        }
    };
}
stream_io!(UnixStream);
stream_io!(TcpStream);

struct RxState {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Frames over a stream socket.
pub struct StreamPort<S> {
    io: S,
    rx: RefCell<RxState>,
    /// Bytes a short write left behind, flushed by `flush_task`.
    tx: RefCell<Vec<u8>>,
    tx_ready: Notify,
    max_frame: usize,
    name: String,
}

/// Why a stream stopped being readable as frames.
fn bad_length(len: usize, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("frame length {len} outside 1..={max}: stream out of sync"),
    )
}

impl<S: StreamIo> StreamPort<S> {
    pub fn new(io: S, max_frame: usize, name: String) -> Rc<StreamPort<S>> {
        Rc::new(StreamPort {
            io,
            rx: RefCell::new(RxState {
                buf: vec![0; 2 * (HEADER + max_frame)],
                start: 0,
                end: 0,
            }),
            tx: RefCell::new(Vec::new()),
            tx_ready: Notify::new(),
            max_frame,
            name,
        })
    }

    /// Writes out what `send` could not, until the port is dropped.
    pub async fn flush_task(self: Rc<Self>) {
        loop {
            self.tx_ready.notified().await;
            while !self.tx.borrow().is_empty() {
                if self.io.writable().await.is_err() {
                    return;
                }
                let mut tx = self.tx.borrow_mut();
                match self.io.try_write_vectored(&[IoSlice::new(&tx)]) {
                    Ok(n) => {
                        tx.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

impl<S: StreamIo> Frontend for StreamPort<S> {
    fn poll_recv(&self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rx = self.rx.borrow_mut();
        loop {
            let have = rx.end - rx.start;
            if have >= HEADER {
                let h = &rx.buf[rx.start..rx.start + HEADER];
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                if len == 0 || len > self.max_frame || len > out.len() {
                    return Poll::Ready(Err(bad_length(len, self.max_frame.min(out.len()))));
                }
                if have >= HEADER + len {
                    let from = rx.start + HEADER;
                    out[..len].copy_from_slice(&rx.buf[from..from + len]);
                    rx.start += HEADER + len;
                    if rx.start == rx.end {
                        rx.start = 0;
                        rx.end = 0;
                    }
                    return Poll::Ready(Ok(len));
                }
            }
            // Need more bytes: make room at the end, then read.
            if rx.end == rx.buf.len() {
                let (start, end) = (rx.start, rx.end);
                rx.buf.copy_within(start..end, 0);
                rx.start = 0;
                rx.end = end - start;
            }
            match self.io.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let end = rx.end;
            match self.io.try_read(&mut rx.buf[end..]) {
                // EOF; a half-received frame is discarded with the connection.
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(n) => rx.end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let header = u32::try_from(frame.len()).map_err(io::Error::other)?.to_be_bytes();
        let mut tx = self.tx.borrow_mut();
        if !tx.is_empty() {
            // Keep frames in order behind the pending bytes.
            if tx.len() + HEADER + frame.len() > TX_LIMIT {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            tx.extend_from_slice(&header);
            tx.extend_from_slice(frame);
            return Ok(());
        }
        let written = match self
            .io
            .try_write_vectored(&[IoSlice::new(&header), IoSlice::new(frame)])
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written < HEADER + frame.len() {
            if written < HEADER {
                tx.extend_from_slice(&header[written..]);
                tx.extend_from_slice(frame);
            } else {
                tx.extend_from_slice(&frame[written - HEADER..]);
            }
            self.tx_ready.notify_one();
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}
