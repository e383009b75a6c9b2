//! QEMU's stream netdev (`-netdev stream` / `-netdev socket`): Ethernet
//! frames over a byte stream, each preceded by its length as a 4-byte
//! big-endian integer. One connection is one switch port. The same code
//! serves hyperkit's framing (a 2-byte little-endian length: gvproxy's
//! `-listen-vpnkit` after its handshake, and `-listen-stdio`).
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

/// How each frame's length is written before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// QEMU: 4 bytes, big-endian.
    Qemu,
    /// hyperkit / vpnkit: 2 bytes, little-endian.
    Hyperkit,
}

impl Framing {
    const fn len(self) -> usize {
        match self {
            Framing::Qemu => 4,
            Framing::Hyperkit => 2,
        }
    }

    fn decode(self, h: &[u8]) -> usize {
        match self {
            Framing::Qemu => u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize,
            Framing::Hyperkit => u16::from_le_bytes([h[0], h[1]]) as usize,
        }
    }

    /// The header for a frame of `len` bytes (`buf` holds up to 4), or an
    /// error if the framing cannot express it.
    fn encode(self, len: usize, buf: &mut [u8; 4]) -> io::Result<&[u8]> {
        match self {
            Framing::Qemu => buf.copy_from_slice(&u32::try_from(len).map_err(io::Error::other)?.to_be_bytes()),
            Framing::Hyperkit => buf[..2].copy_from_slice(&u16::try_from(len).map_err(io::Error::other)?.to_le_bytes()),
        }
        Ok(&buf[..self.len()])
    }
}
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
    /// The peer is gone (EOF or an error on read): `flush_task` ends, and
    /// with it the last reference to the socket.
    closed: std::cell::Cell<bool>,
    max_frame: usize,
    framing: Framing,
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
    /// The next frame from the stream (0: EOF).
    fn poll_frames(&self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rx = self.rx.borrow_mut();
        let header = self.framing.len();
        loop {
            let have = rx.end - rx.start;
            if have >= header {
                let len = self.framing.decode(&rx.buf[rx.start..rx.start + header]);
                if len == 0 || len > self.max_frame || len > out.len() {
                    return Poll::Ready(Err(bad_length(len, self.max_frame.min(out.len()))));
                }
                if have >= header + len {
                    let from = rx.start + header;
                    out[..len].copy_from_slice(&rx.buf[from..from + len]);
                    rx.start += header + len;
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

    pub fn new(io: S, max_frame: usize, name: String) -> Rc<StreamPort<S>> {
        StreamPort::with_framing(io, Framing::Qemu, max_frame, name)
    }

    pub fn with_framing(io: S, framing: Framing, max_frame: usize, name: String) -> Rc<StreamPort<S>> {
        let max_frame = match framing {
            Framing::Qemu => max_frame,
            Framing::Hyperkit => max_frame.min(usize::from(u16::MAX)),
        };
        Rc::new(StreamPort {
            io,
            framing,
            rx: RefCell::new(RxState {
                buf: vec![0; 2 * (framing.len() + max_frame)],
                start: 0,
                end: 0,
            }),
            tx: RefCell::new(Vec::new()),
            tx_ready: Notify::new(),
            closed: std::cell::Cell::new(false),
            max_frame,
            name,
        })
    }

    /// Bytes already read from the connection by someone else (an HTTP
    /// request's reader), to be parsed before anything new. What does not
    /// fit the receive buffer is dropped.
    pub fn preload(&self, bytes: &[u8]) {
        let mut rx = self.rx.borrow_mut();
        let n = bytes.len().min(rx.buf.len() - rx.end);
        let end = rx.end;
        rx.buf[end..end + n].copy_from_slice(&bytes[..n]);
        rx.end += n;
    }

    /// Writes out what `send` could not, until the port is dropped.
    pub async fn flush_task(self: Rc<Self>) {
        loop {
            self.tx_ready.notified().await;
            if self.closed.get() {
                return;
            }
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
        let r = self.poll_frames(cx, out);
        if matches!(r, Poll::Ready(Ok(0) | Err(_))) {
            // Found by the api fuzz target: a /connect (or QEMU stream) peer
            // that left without ever being sent a frame kept its socket,
            // held by a flush task waiting for one.
            self.closed.set(true);
            self.tx_ready.notify_one();
        }
        r
    }
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut head = [0u8; 4];
        let header = self.framing.encode(frame.len(), &mut head)?;
        let hlen = header.len();
        let mut tx = self.tx.borrow_mut();
        if !tx.is_empty() {
            // Keep frames in order behind the pending bytes.
            if tx.len() + hlen + frame.len() > TX_LIMIT {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            tx.extend_from_slice(header);
            tx.extend_from_slice(frame);
            return Ok(());
        }
        let written = match self.io.try_write_vectored(&[IoSlice::new(header), IoSlice::new(frame)]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written < hlen + frame.len() {
            if written < hlen {
                tx.extend_from_slice(&header[written..]);
                tx.extend_from_slice(frame);
            } else {
                tx.extend_from_slice(&frame[written - hlen..]);
            }
            self.tx_ready.notify_one();
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn frame(i: usize) -> Vec<u8> {
        let len = 1 + (i * 37) % 1500;
        (0..len).map(|j| (i + j) as u8).collect()
    }

    /// Reads QEMU-framed frames from `peer` until `count` have arrived.
    async fn read_frames(peer: &mut UnixStream, count: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut head = [0u8; 4];
        while got.len() < count {
            peer.read_exact(&mut head).await.unwrap();
            let mut f = vec![0u8; u32::from_be_bytes(head) as usize];
            peer.read_exact(&mut f).await.unwrap();
            got.push(f);
        }
        got
    }

    fn local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    /// A port on one end of a socket pair, its flush task running (call
    /// inside `local`), and the other end.
    fn port_and_peer() -> (Rc<StreamPort<UnixStream>>, UnixStream) {
        let (ours, peer) = UnixStream::pair().unwrap();
        let port = StreamPort::new(ours, 1500, "test".into());
        tokio::task::spawn_local(port.clone().flush_task());
        (port, peer)
    }

    #[test]
    fn a_burst_of_frames_arrives_whole_and_in_order() {
        local(async {
            let (port, mut peer) = port_and_peer();
            // One burst, as a stack poll produces it: written at once while
            // the socket takes it, queued behind what it did not.
            for i in 0..300 {
                port.send(&frame(i)).unwrap();
            }
            let got = tokio::time::timeout(Duration::from_secs(10), read_frames(&mut peer, 300))
                .await
                .expect("every frame of the burst");
            for (i, f) in got.iter().enumerate() {
                assert_eq!(f, &frame(i), "frame {i}");
            }
        });
    }

    #[test]
    fn a_peer_that_stops_reading_bounds_the_queue_and_loses_nothing_taken() {
        local(async {
            let (port, mut peer) = port_and_peer();
            // Fill the socket and then the queue; the peer reads nothing.
            let mut taken = 0;
            for round in 0..100 {
                while port.send(&frame(taken)).is_ok() {
                    taken += 1;
                    assert!(taken < 1_000_000, "the queue never filled");
                }
                if round == 0 {
                    assert!(port.tx.borrow().len() <= TX_LIMIT);
                }
                // Let the flush task write what the socket takes.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(port.tx.borrow().len() <= TX_LIMIT);
            // Everything taken arrives, in order, once the peer reads.
            let got = tokio::time::timeout(Duration::from_secs(30), read_frames(&mut peer, taken))
                .await
                .expect("every taken frame");
            for (i, f) in got.iter().enumerate() {
                assert_eq!(f, &frame(i), "frame {i}");
            }
        });
    }
}
