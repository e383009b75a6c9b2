//! The virtio-vsock device: guest stream connections bridged to host unix
//! sockets. Transport-independent: the caller owns the queues and guest
//! memory and calls [`VsockDevice::process_tx`] when the guest kicks its
//! transmit queue, [`VsockDevice::poll_host`] when a host socket is ready
//! (see [`VsockDevice::poll_fds`]), and [`VsockDevice::fill_rx`] to hand
//! what is waiting to the guest.
//!
//! Flow control is virtio-vsock's credit scheme: every packet carries the
//! sender's receive buffer size and how much it has consumed; nobody sends
//! more than the peer has room for. The device buffers at most
//! [`BUF_ALLOC`] bytes per connection towards the host.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory};

use crate::packet::*;
use crate::HOST_CID;

/// Receive buffer the device advertises per connection.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload the device accepts in one packet from the guest.
const MAX_PAYLOAD: usize = 64 << 10;
/// Host data read ahead of the guest's receive buffers, all connections.
const MAX_PENDING_RX: usize = 64;
/// First port handed to host-initiated connections.
const FIRST_HOST_PORT: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// The guest's receive window: its buffer and how much it consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest so far.
    tx_cnt: u32,
    /// Guest bytes delivered to the host socket so far, and as last told.
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    /// Guest bytes (and the handshake reply) not yet written to the host.
    to_host: Vec<u8>,
    /// The host closed its side; SHUTDOWN sent to the guest.
    host_eof: bool,
    /// The guest will send nothing more.
    guest_eof: bool,
    /// Host data read but not yet handed to the guest.
    rx_pending: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Conn {
        Conn {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            to_host: Vec::new(),
            host_eof: false,
            guest_eof: false,
            rx_pending: false,
        }
    }

    /// How much more the guest can take.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn update_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Writes what it can of `to_host`, counting it as consumed; returns
    /// false when the host socket is gone.
    fn flush_to_host(&mut self) -> bool {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.guest_eof {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        true
    }

    /// Worth telling the guest about freed buffer space now.
    fn owes_credit(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 4
    }
}

/// A host program that connected to the device's socket and has not yet
/// said which guest port it wants.
struct HostDialer {
    stream: UnixStream,
    line: Vec<u8>,
}

/// One socket the caller should poll for the device.
#[derive(Clone, Copy, Debug)]
pub struct PollFd {
    pub fd: RawFd,
    pub read: bool,
    pub write: bool,
}

/// Connections at once (each holds a host socket), both directions
/// together: a guest's REQUEST beyond it is answered with RST, a host
/// program's connection is told `ERROR` and closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// Control packets (RST, RESPONSE, credit updates) waiting for a guest that
/// posts no receive buffers; beyond it new ones are dropped, so a guest that
/// sends and never reads cannot grow the queue.
const MAX_QUEUED: usize = 4096;

pub struct VsockDevice {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    dialers: Vec<HostDialer>,
    /// Keyed by (host port, guest port).
    conns: HashMap<(u32, u32), Conn>,
    /// Packets for the guest, in order: control packets and data.
    to_guest: VecDeque<(Header, Vec<u8>)>,
    next_host_port: u32,
    /// Connections refused or packets dropped at the bounds above.
    refused: u64,
}

impl VsockDevice {
    /// A device for the guest `guest_cid`, listening on `uds_path` for
    /// host programs (an old socket there is replaced).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<VsockDevice> {
        let _ = std::fs::remove_file(uds_path);
        let listener = UnixListener::bind(uds_path)
            .map_err(|e| io::Error::new(e.kind(), format!("listening on {}: {e}", uds_path.display())))?;
        listener.set_nonblocking(true)?;
        Ok(VsockDevice {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            dialers: Vec::new(),
            conns: HashMap::new(),
            to_guest: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
            refused: 0,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The config space: the guest's CID, little endian.
    pub fn config(&self) -> [u8; 8] {
        self.guest_cid.to_le_bytes()
    }

    fn header(&self, op: u16, host_port: u32, guest_port: u32) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get(&(host_port, guest_port))
            .map_or((BUF_ALLOC, 0), |c| (BUF_ALLOC, c.fwd_cnt));
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Counts a refusal at a bound; logs the first and then every
    /// power of two, so a guest that keeps at it cannot flood the log.
    fn refuse(&mut self, what: &str) {
        self.refused += 1;
        if self.refused.is_power_of_two() {
            tracing::warn!(
                refused = self.refused,
                "vsock: {what} (at most {MAX_CONNECTIONS} connections and {MAX_QUEUED} queued control packets)"
            );
        }
    }

    /// Connections refused and packets dropped at the device's bounds.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn queue_control(&mut self, h: Header) {
        if self.to_guest.len() >= MAX_QUEUED {
            return self.refuse("the guest is not reading; control packet dropped");
        }
        self.to_guest.push_back((h, Vec::new()));
    }

    fn send_control(&mut self, op: u16, host_port: u32, guest_port: u32, flags: u32) {
        let mut h = self.header(op, host_port, guest_port);
        h.flags = flags;
        if let Some(c) = self.conns.get_mut(&(host_port, guest_port)) {
            c.fwd_cnt_sent = c.fwd_cnt;
        }
        self.queue_control(h);
    }

    fn reset(&mut self, host_port: u32, guest_port: u32) {
        self.conns.remove(&(host_port, guest_port));
        self.send_control(OP_RST, host_port, guest_port, 0);
    }

    /// Takes every packet the guest has queued for transmission. Returns
    /// whether any buffer was used.
    pub fn process_tx<M: GuestMemory>(&mut self, queue: &mut Queue, mem: &M) -> io::Result<bool> {
        let mut used = false;
        let mut buf = Vec::new();
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            buf.clear();
            let mut bad = false;
            for desc in chain {
                if desc.is_write_only() {
                    continue;
                }
                let len = desc.len() as usize;
                if buf.len() + len > HEADER_LEN + MAX_PAYLOAD {
                    bad = true;
                    break;
                }
                let start = buf.len();
                buf.resize(start + len, 0);
                if mem.read_slice(&mut buf[start..], desc.addr()).is_err() {
                    bad = true;
                    break;
                }
            }
            if !bad {
                match Header::parse(&buf) {
                    Some(h) => {
                        let payload_end = (HEADER_LEN + h.len as usize).min(buf.len());
                        let payload = buf[HEADER_LEN..payload_end].to_vec();
                        self.guest_packet(h, &payload);
                    }
                    None => tracing::debug!("vsock: a packet shorter than its header"),
                }
            } else {
                tracing::debug!("vsock: dropped a malformed or oversized packet");
            }
            queue
                .add_used(mem, head, 0)
                .map_err(|e| io::Error::other(format!("vsock tx used ring: {e}")))?;
            used = true;
        }
        Ok(used)
    }

    fn guest_packet(&mut self, h: Header, payload: &[u8]) {
        let key = (h.dst_port, h.src_port);
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID || h.kind != TYPE_STREAM {
            if h.op != OP_RST {
                let mut r = self.header(OP_RST, h.dst_port, h.src_port);
                r.dst_cid = h.src_cid;
                self.queue_control(r);
            }
            return;
        }
        match h.op {
            OP_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.reset(key.0, key.1);
                    return;
                }
                if self.conns.len() + self.dialers.len() >= MAX_CONNECTIONS {
                    self.refuse("connection table full; a guest connection refused");
                    self.send_control(OP_RST, key.0, key.1, 0);
                    return;
                }
                let path = format!("{}_{}", self.uds_path.display(), h.dst_port);
                match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                    Ok(stream) => {
                        let mut c = Conn::new(stream, State::Established);
                        c.update_credit(&h);
                        self.conns.insert(key, c);
                        self.send_control(OP_RESPONSE, key.0, key.1, 0);
                    }
                    Err(e) => {
                        tracing::debug!(%path, error = %e, "vsock: guest connect refused");
                        self.send_control(OP_RST, key.0, key.1, 0);
                    }
                }
            }
            OP_RESPONSE => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.send_control(OP_RST, key.0, key.1, 0);
                    return;
                };
                c.update_credit(&h);
                if c.state == State::Connecting {
                    c.state = State::Established;
                    // The hybrid-vsock handshake reply; a dozen bytes, so a
                    // blocking write is fine and keeps it out of the credit.
                    let line = format!("OK {}\n", key.0);
                    let ok = c.stream.set_nonblocking(false).is_ok()
                        && c.stream.write_all(line.as_bytes()).is_ok()
                        && c.stream.set_nonblocking(true).is_ok();
                    if !ok {
                        self.reset(key.0, key.1);
                    }
                }
            }
            OP_RW => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.send_control(OP_RST, key.0, key.1, 0);
                    return;
                };
                c.update_credit(&h);
                if c.state != State::Established || c.to_host.len() + payload.len() > BUF_ALLOC as usize {
                    // Data before the handshake, or past the credit we gave.
                    self.reset(key.0, key.1);
                    return;
                }
                c.to_host.extend_from_slice(payload);
                if !c.flush_to_host() {
                    self.reset(key.0, key.1);
                } else if c.owes_credit() {
                    self.send_control(OP_CREDIT_UPDATE, key.0, key.1, 0);
                }
            }
            OP_CREDIT_UPDATE => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.update_credit(&h);
                }
            }
            OP_CREDIT_REQUEST => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.update_credit(&h);
                    self.send_control(OP_CREDIT_UPDATE, key.0, key.1, 0);
                }
            }
            OP_SHUTDOWN => {
                let Some(c) = self.conns.get_mut(&key) else { return };
                c.update_credit(&h);
                if h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == (SHUTDOWN_RCV | SHUTDOWN_SEND) {
                    // The guest closed the socket: finish what it sent, then
                    // close ours and confirm with RST.
                    let _ = c.stream.set_nonblocking(false);
                    let _ = c.flush_to_host();
                    self.reset(key.0, key.1);
                } else if h.flags & SHUTDOWN_SEND != 0 {
                    c.guest_eof = true;
                    let _ = c.flush_to_host();
                }
            }
            OP_RST => {
                self.conns.remove(&key);
            }
            other => {
                tracing::debug!(op = other, "vsock: unknown operation");
                self.reset(key.0, key.1);
            }
        }
    }

    /// The host sockets to watch, and for what.
    pub fn poll_fds(&self) -> Vec<PollFd> {
        let mut fds = vec![PollFd {
            fd: self.listener.as_raw_fd(),
            read: true,
            write: false,
        }];
        fds.extend(self.dialers.iter().map(|d| PollFd {
            fd: d.stream.as_raw_fd(),
            read: true,
            write: false,
        }));
        let room = self.to_guest.len() < MAX_PENDING_RX;
        for c in self.conns.values() {
            let read = room && c.state == State::Established && !c.host_eof && !c.rx_pending && c.peer_credit() > 0;
            let write = !c.to_host.is_empty();
            if read || write {
                fds.push(PollFd {
                    fd: c.stream.as_raw_fd(),
                    read,
                    write,
                });
            }
        }
        fds
    }

    /// Accepts host programs, reads their `CONNECT` lines, moves data from
    /// host sockets towards the guest (within its credit) and from the
    /// device towards host sockets. Call when any [`poll_fds`](Self::poll_fds)
    /// socket is ready (spurious calls are harmless).
    pub fn poll_host(&mut self) {
        while let Ok((mut stream, _)) = self.listener.accept() {
            if self.conns.len() + self.dialers.len() >= MAX_CONNECTIONS {
                self.refuse("connection table full; a host connection refused");
                let _ = stream.write_all(b"ERROR too many vsock connections\n");
                continue;
            }
            if stream.set_nonblocking(true).is_ok() {
                self.dialers.push(HostDialer {
                    stream,
                    line: Vec::new(),
                });
            }
        }
        self.read_dialers();
        let keys: Vec<(u32, u32)> = self.conns.keys().copied().collect();
        for key in keys {
            self.pump_conn(key);
        }
    }

    fn read_dialers(&mut self) {
        let mut i = 0;
        while i < self.dialers.len() {
            let d = &mut self.dialers[i];
            let mut byte = [0u8; 64];
            let done = match d.stream.read(&mut byte) {
                Ok(0) => Some(None),
                Ok(n) => {
                    d.line.extend_from_slice(&byte[..n]);
                    if let Some(end) = d.line.iter().position(|&b| b == b'\n') {
                        let text = String::from_utf8_lossy(&d.line[..end]).trim().to_string();
                        Some(text.strip_prefix("CONNECT ").and_then(|p| p.trim().parse::<u32>().ok()))
                    } else if d.line.len() > 64 {
                        Some(None)
                    } else {
                        None
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(_) => Some(None),
            };
            match done {
                None => i += 1,
                Some(port) => {
                    let d = self.dialers.swap_remove(i);
                    match port {
                        Some(guest_port) => self.dial_guest(d.stream, guest_port),
                        None => {
                            let mut s = d.stream;
                            let _ = s.write_all(b"ERROR expected CONNECT PORT\n");
                        }
                    }
                }
            }
        }
    }

    fn dial_guest(&mut self, stream: UnixStream, guest_port: u32) {
        let host_port = self.next_host_port;
        self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        self.conns
            .insert((host_port, guest_port), Conn::new(stream, State::Connecting));
        self.send_control(OP_REQUEST, host_port, guest_port, 0);
    }

    fn pump_conn(&mut self, key: (u32, u32)) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if !c.to_host.is_empty() {
            if !c.flush_to_host() {
                self.reset(key.0, key.1);
                return;
            }
            if c.owes_credit() {
                self.send_control(OP_CREDIT_UPDATE, key.0, key.1, 0);
            }
        }
        let Some(c) = self.conns.get_mut(&key) else { return };
        if c.state != State::Established || c.host_eof || c.rx_pending || self.to_guest.len() >= MAX_PENDING_RX {
            return;
        }
        let want = (c.peer_credit() as usize).min(MAX_PAYLOAD);
        if want == 0 {
            return;
        }
        let mut data = vec![0u8; want];
        match c.stream.read(&mut data) {
            Ok(0) => {
                // The host closed the connection: tell the guest it will get
                // nothing more and send nothing (it answers with RST).
                c.host_eof = true;
                self.send_control(OP_SHUTDOWN, key.0, key.1, SHUTDOWN_RCV | SHUTDOWN_SEND);
            }
            Ok(n) => {
                data.truncate(n);
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                c.rx_pending = true;
                c.fwd_cnt_sent = c.fwd_cnt;
                let mut h = self.header(OP_RW, key.0, key.1);
                h.len = n as u32;
                self.to_guest.push_back((h, data));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.reset(key.0, key.1),
        }
    }

    /// Whether packets are waiting for the guest's receive buffers.
    pub fn has_rx(&self) -> bool {
        !self.to_guest.is_empty()
    }

    /// Hands waiting packets to the guest's receive queue; returns whether
    /// any buffer was used. A packet waits when the guest has no buffer;
    /// data larger than a buffer (Linux posts 4 KiB) is split across
    /// several.
    pub fn fill_rx<M: GuestMemory>(&mut self, queue: &mut Queue, mem: &M) -> io::Result<bool> {
        let mut used = false;
        while !self.to_guest.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let bufs: Vec<_> = chain
                .filter(|d| d.is_write_only())
                .map(|d| (d.addr(), d.len() as usize))
                .collect();
            let capacity: usize = bufs.iter().map(|&(_, len)| len).sum();
            let (mut h, mut data) = self.to_guest.pop_front().expect("checked non-empty");
            let written = if capacity < HEADER_LEN + usize::from(!data.is_empty()) {
                // Not even a header and a byte fit: a broken driver; the
                // packet stays for a proper buffer.
                self.to_guest.push_front((h, data));
                0
            } else {
                let key = (h.src_port, h.dst_port);
                let fits = data.len().min(capacity - HEADER_LEN);
                let rest = data.split_off(fits);
                h.len = fits as u32;
                if rest.is_empty() {
                    if h.op == OP_RW {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.rx_pending = false;
                        }
                    }
                } else {
                    let mut more = h;
                    more.len = rest.len() as u32;
                    self.to_guest.push_front((more, rest));
                }
                let mut bytes = Vec::with_capacity(HEADER_LEN + data.len());
                bytes.extend_from_slice(&h.to_bytes());
                bytes.extend_from_slice(&data);
                let mut done = 0usize;
                for (addr, len) in bufs {
                    if done == bytes.len() {
                        break;
                    }
                    let n = len.min(bytes.len() - done);
                    if mem.write_slice(&bytes[done..done + n], addr).is_err() {
                        break;
                    }
                    done += n;
                }
                if done < bytes.len() {
                    // A buffer outside guest memory: that connection is lost.
                    tracing::debug!("vsock: guest receive buffer outside its memory");
                    self.conns.remove(&key);
                    0
                } else {
                    done
                }
            };
            queue
                .add_used(mem, head, written as u32)
                .map_err(|e| io::Error::other(format!("vsock rx used ring: {e}")))?;
            used = true;
            if written == 0 {
                break;
            }
        }
        Ok(used)
    }

    /// Open connections (for tests and status).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}
