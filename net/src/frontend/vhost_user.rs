//! vhost-user-net: QEMU's `-netdev vhost-user,chardev=...` connects to a
//! unix socket and hands ferry the guest's memory and virtqueues, so frames
//! move between the guest and the switch with one copy and no QEMU in the
//! path.
//!
//! The control protocol is served here rather than by the rust-vmm
//! `vhost` crate: QEMU's virtio-net sends SET_VRING_ENABLE while the guest
//! driver negotiates, before SET_FEATURES, and that crate refuses it (and
//! drops the connection) until the protocol-features bit is acked.
//! libvhost-user and passt accept it; so does ferry.
//!
//! One thread per socket reads control messages (blocking, small, rare);
//! the queues are worked on the stack's thread by the port, which polls
//! the kick eventfds itself. The virtio-net data path is
//! [`crate::virtio`], shared with the built-in VMM.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::unix::AsyncFd;
use virtio_queue::{Queue, QueueT};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::Frontend;
use crate::metrics::NetMetrics;
use crate::virtio::{self, Negotiated, RxError, TxGso, RX_QUEUE, TX_QUEUE};
use crate::StackRef;

/// Largest ring QEMU may ask for (its `rx_queue_size`/`tx_queue_size` limit).
const MAX_QUEUE_SIZE: u32 = 1024;
/// Frames held while the guest has no receive buffers; more are dropped
/// (TCP retransmits), as a full NIC ring would.
const MAX_PENDING_BYTES: usize = 4 << 20;
/// vhost-user allows at most this many memory regions without the
/// memory-slots extension.
const MAX_REGIONS: usize = 8;
/// Largest control message body (SET_MEM_TABLE with 8 regions is 264).
const MAX_BODY: usize = 4096;

const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const HDR_VERSION: u32 = 0x1;
const HDR_REPLY: u32 = 0x4;
const HDR_NEED_REPLY: u32 = 0x8;
/// In SET_VRING_KICK/CALL/ERR: no descriptor comes with the message.
const VRING_NOFD: u64 = 1 << 8;

/// The control requests ferry understands (vhost-user spec numbering).
mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
}

/// One guest memory region as the front end described it.
#[derive(Clone, Copy, Debug)]
struct Region {
    guest_addr: u64,
    size: u64,
    user_addr: u64,
}

/// One virtqueue's configuration as the control protocol builds it up.
#[derive(Default)]
struct RingConfig {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    base: u16,
    kick: Option<Arc<OwnedFd>>,
    call: Option<File>,
    enabled: bool,
    /// The running queue: set when the kick arrives, cleared by GET_VRING_BASE.
    queue: Option<Queue>,
    /// Bumped whenever `kick` changes, so the port re-registers it.
    kick_generation: u64,
}

/// The device state shared by the control thread and the port.
#[derive(Default)]
struct Device {
    acked: u64,
    mem: Option<GuestMemoryMmap>,
    regions: Vec<Region>,
    rings: [RingConfig; 2],
    waker: Option<Waker>,
    closed: bool,
}

impl Device {
    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// A front-end (QEMU) virtual address as a guest physical address.
    fn guest_addr(&self, user_addr: u64) -> Option<GuestAddress> {
        self.regions
            .iter()
            .find(|r| user_addr >= r.user_addr && user_addr - r.user_addr < r.size)
            .map(|r| GuestAddress(r.guest_addr + (user_addr - r.user_addr)))
    }

    /// Builds the running queue for `index` from what the front end sent.
    fn start_ring(&mut self, index: usize) -> Result<(), String> {
        let mem = self.mem.as_ref().ok_or("a ring was started before the memory table")?;
        let ring = &self.rings[index];
        let (desc, avail, used) = (
            self.guest_addr(ring.desc),
            self.guest_addr(ring.avail),
            self.guest_addr(ring.used),
        );
        let (Some(desc), Some(avail), Some(used)) = (desc, avail, used) else {
            return Err(format!("ring {index} lies outside guest memory"));
        };
        let mut queue = Queue::new(MAX_QUEUE_SIZE as u16).map_err(|e| e.to_string())?;
        queue.set_size(ring.size);
        queue.try_set_desc_table_address(desc).map_err(|e| e.to_string())?;
        queue.try_set_avail_ring_address(avail).map_err(|e| e.to_string())?;
        queue.try_set_used_ring_address(used).map_err(|e| e.to_string())?;
        queue.set_next_avail(ring.base);
        queue.set_next_used(ring.base);
        queue.set_event_idx(self.acked & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(format!("ring {index} has an invalid size or layout"));
        }
        self.rings[index].queue = Some(queue);
        Ok(())
    }
}

fn lock(device: &Mutex<Device>) -> MutexGuard<'_, Device> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds `path` now (so errors reach the caller) and returns the loop that
/// attaches each vhost-user connection to the stack as a port. One guest
/// at a time per socket, as vhost-user defines it; the next connection is
/// accepted when the guest goes away.
pub fn serve(stack: StackRef, path: &Path) -> io::Result<impl std::future::Future<Output = ()>> {
    crate::sys::remove_stale_socket(path);
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("listening on vhost-user socket {}: {e}", path.display()),
        )
    })?;
    crate::sys::owner_only(path)?;
    let metrics = stack.borrow().metrics.clone();
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::unbounded_channel::<Arc<Mutex<Device>>>();
    let path: PathBuf = path.to_path_buf();
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name("vhost-user-net".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        let device = Arc::new(Mutex::new(Device::default()));
                        if conn_tx.send(device.clone()).is_err() {
                            return;
                        }
                        tracing::info!(socket = %thread_path.display(), "vhost-user front end connected");
                        serve_connection(conn, &device);
                        tracing::info!(socket = %thread_path.display(), "vhost-user front end disconnected");
                        let mut dev = lock(&device);
                        dev.closed = true;
                        dev.wake();
                    }
                    Err(e) => tracing::warn!(socket = %thread_path.display(), error = %e, "vhost-user accept failed"),
                }
            }
        })
        .map_err(|e| io::Error::other(format!("starting the vhost-user thread: {e}")))?;
    Ok(async move {
        let mut n = 0u64;
        while let Some(device) = conn_rx.recv().await {
            n += 1;
            let name = format!("vhost-user:{}#{n}", path.display());
            let port = Rc::new(VhostUserPort::new(device, metrics.clone(), name));
            tokio::task::spawn_local(crate::run_port(stack.clone(), port));
        }
    })
}

/// Reads and answers control messages until the front end hangs up or
/// breaks the protocol.
fn serve_connection(mut conn: UnixStream, device: &Mutex<Device>) {
    loop {
        let mut hdr = [0u8; 12];
        let mut fds = Vec::new();
        match crate::sys::recv_with_fds(&conn, &mut hdr, &mut fds) {
            Ok(0) => return,
            Ok(12) => {}
            Ok(n) => {
                tracing::warn!(got = n, "vhost-user: short message header; closing");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "vhost-user: reading the socket failed");
                return;
            }
        }
        let request = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        if size > MAX_BODY {
            tracing::warn!(request, size, "vhost-user: oversized message; closing");
            return;
        }
        let mut body = vec![0u8; size];
        if let Err(e) = conn.read_exact(&mut body) {
            tracing::warn!(request, error = %e, "vhost-user: message cut short; closing");
            return;
        }
        let result = {
            let mut dev = lock(device);
            let r = handle(&mut dev, request, &body, fds);
            dev.wake();
            r
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(request, error = %e, "vhost-user: request refused; closing");
                return;
            }
        };
        let reply = match (reply, flags & HDR_NEED_REPLY != 0) {
            (Some(body), _) => Some(body),
            // REPLY_ACK style: a zero u64 says "done".
            (None, true) => Some(0u64.to_le_bytes().to_vec()),
            (None, false) => None,
        };
        if let Some(body) = reply {
            let mut msg = Vec::with_capacity(12 + body.len());
            msg.extend_from_slice(&request.to_le_bytes());
            msg.extend_from_slice(&(HDR_VERSION | HDR_REPLY).to_le_bytes());
            msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
            msg.extend_from_slice(&body);
            if conn.write_all(&msg).is_err() {
                return;
            }
        }
    }
}

fn u32_at(body: &[u8], at: usize) -> Result<u32, String> {
    body.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "message body too short".to_string())
}

fn u64_at(body: &[u8], at: usize) -> Result<u64, String> {
    body.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .ok_or_else(|| "message body too short".to_string())
}

fn ring_index(index: u64) -> Result<usize, String> {
    match index {
        0 | 1 => Ok(index as usize),
        _ => Err(format!("no virtqueue {index} (one queue pair)")),
    }
}

/// The device's features plus segmentation offloads: this front end's
/// frames go through 64 KiB buffers and it tells the switch what the
/// guest takes whole.
fn offered_features() -> u64 {
    virtio::device_features() | virtio::offload_features() | VHOST_USER_F_PROTOCOL_FEATURES
}

/// Applies one control request; `Ok(Some(body))` is a reply.
fn handle(dev: &mut Device, request: u32, body: &[u8], mut fds: Vec<OwnedFd>) -> Result<Option<Vec<u8>>, String> {
    let u64_reply = |v: u64| Ok(Some(v.to_le_bytes().to_vec()));
    match request {
        req::GET_FEATURES => u64_reply(offered_features()),
        req::SET_FEATURES => {
            let features = u64_at(body, 0)?;
            let offered = offered_features();
            if features & !offered != 0 {
                return Err(format!("features {features:#x} were not offered"));
            }
            dev.acked = features;
            if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
                // Without the protocol extension, rings run once kicked.
                for ring in &mut dev.rings {
                    ring.enabled = true;
                }
            }
            tracing::debug!(features = format_args!("{features:#x}"), "vhost-user features acked");
            Ok(None)
        }
        req::GET_PROTOCOL_FEATURES => u64_reply(0),
        req::SET_PROTOCOL_FEATURES | req::SET_OWNER => Ok(None),
        req::RESET_OWNER => {
            for ring in &mut dev.rings {
                *ring = RingConfig::default();
            }
            Ok(None)
        }
        req::GET_QUEUE_NUM => u64_reply(1),
        req::SET_MEM_TABLE => {
            let count = u32_at(body, 0)? as usize;
            if count == 0 || count > MAX_REGIONS || count != fds.len() {
                return Err(format!(
                    "memory table with {count} regions and {} descriptors",
                    fds.len()
                ));
            }
            let mut regions = Vec::with_capacity(count);
            let mut mapped = Vec::with_capacity(count);
            for (i, fd) in fds.drain(..).enumerate() {
                let at = 8 + 32 * i;
                let region = Region {
                    guest_addr: u64_at(body, at)?,
                    size: u64_at(body, at + 8)?,
                    user_addr: u64_at(body, at + 16)?,
                };
                let offset = u64_at(body, at + 24)?;
                let size = usize::try_from(region.size).map_err(|_| "region too large")?;
                let mapping = MmapRegion::build(
                    Some(FileOffset::new(File::from(fd), offset)),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_NORESERVE,
                )
                .map_err(|e| format!("mapping guest memory region {i}: {e}"))?;
                let guest =
                    GuestRegionMmap::new(mapping, GuestAddress(region.guest_addr)).ok_or("guest region overflows")?;
                regions.push(region);
                mapped.push(guest);
            }
            let mem = GuestMemoryMmap::from_regions(mapped).map_err(|e| format!("guest memory layout: {e}"))?;
            tracing::debug!(regions = count, "vhost-user guest memory mapped");
            dev.mem = Some(mem);
            dev.regions = regions;
            // Running queues refer to the old mapping: rebuild them.
            for index in 0..2 {
                if dev.rings[index].queue.is_some() {
                    let next = dev.rings[index]
                        .queue
                        .as_ref()
                        .map(|q| q.next_avail())
                        .unwrap_or_default();
                    dev.rings[index].base = next;
                    dev.start_ring(index)?;
                }
            }
            Ok(None)
        }
        req::SET_VRING_NUM => {
            let index = ring_index(u64::from(u32_at(body, 0)?))?;
            let num = u32_at(body, 4)?;
            if num == 0 || num > MAX_QUEUE_SIZE || !num.is_power_of_two() {
                return Err(format!("ring size {num}"));
            }
            dev.rings[index].size = num as u16;
            Ok(None)
        }
        req::SET_VRING_ADDR => {
            let index = ring_index(u64::from(u32_at(body, 0)?))?;
            let ring = &mut dev.rings[index];
            ring.desc = u64_at(body, 8)?;
            ring.used = u64_at(body, 16)?;
            ring.avail = u64_at(body, 24)?;
            Ok(None)
        }
        req::SET_VRING_BASE => {
            let index = ring_index(u64::from(u32_at(body, 0)?))?;
            dev.rings[index].base = u32_at(body, 4)? as u16;
            Ok(None)
        }
        req::GET_VRING_BASE => {
            // Stops the ring; the front end keeps the index for a restart.
            let index = ring_index(u64::from(u32_at(body, 0)?))?;
            let ring = &mut dev.rings[index];
            let base = ring.queue.take().map_or(ring.base, |q| q.next_avail());
            ring.kick = None;
            ring.kick_generation += 1;
            ring.call = None;
            let mut reply = (index as u32).to_le_bytes().to_vec();
            reply.extend_from_slice(&u32::from(base).to_le_bytes());
            Ok(Some(reply))
        }
        req::SET_VRING_KICK | req::SET_VRING_CALL | req::SET_VRING_ERR => {
            let value = u64_at(body, 0)?;
            let index = ring_index(value & 0xff)?;
            let fd = if value & VRING_NOFD == 0 {
                Some(fds.pop().ok_or("ring descriptor missing")?)
            } else {
                None
            };
            match request {
                req::SET_VRING_KICK => {
                    let fd = fd.ok_or("polling mode (no kick descriptor) is not supported")?;
                    crate::sys::set_nonblocking(&fd).map_err(|e| e.to_string())?;
                    dev.rings[index].kick = Some(Arc::new(fd));
                    dev.rings[index].kick_generation += 1;
                    dev.start_ring(index)?;
                }
                req::SET_VRING_CALL => dev.rings[index].call = fd.map(File::from),
                _ => {}
            }
            Ok(None)
        }
        req::SET_VRING_ENABLE => {
            // Accepted at any time: QEMU's virtio-net sends it before
            // SET_FEATURES.
            let index = ring_index(u64::from(u32_at(body, 0)?))?;
            dev.rings[index].enabled = u32_at(body, 4)? == 1;
            Ok(None)
        }
        other => {
            tracing::debug!(request = other, "vhost-user: request not supported; ignored");
            Ok(None)
        }
    }
}

/// A kick eventfd registered with the stack's reactor.
struct Kick {
    generation: u64,
    fd: AsyncFd<ArcFd>,
}

/// Shares the control thread's descriptor with the reactor.
struct ArcFd(Arc<OwnedFd>);

impl AsRawFd for ArcFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl crate::sys::OwnsFd for ArcFd {}

/// The switch's side of one vhost-user connection.
pub struct VhostUserPort {
    device: Arc<Mutex<Device>>,
    kicks: RefCell<[Option<Kick>; 2]>,
    /// The used index at the last interrupt decision, per queue.
    signalled: RefCell<[Option<Wrapping<u16>>; 2]>,
    /// Frames waiting for receive buffers, with their segment size when
    /// they go to the guest whole as a large TCP segment.
    pending: RefCell<VecDeque<(Vec<u8>, Option<usize>)>>,
    pending_bytes: RefCell<usize>,
    /// Datagrams split from a UDP train the guest sent (HOST_USO), handed
    /// to the switch one per `poll_recv`.
    split: RefCell<VecDeque<Vec<u8>>>,
    metrics: Arc<NetMetrics>,
    name: String,
}

impl VhostUserPort {
    fn new(device: Arc<Mutex<Device>>, metrics: Arc<NetMetrics>, name: String) -> VhostUserPort {
        VhostUserPort {
            device,
            kicks: RefCell::new([None, None]),
            signalled: RefCell::new([None, None]),
            pending: RefCell::new(VecDeque::new()),
            pending_bytes: RefCell::new(0),
            split: RefCell::new(VecDeque::new()),
            metrics,
            name,
        }
    }

    /// Interrupts the guest if it asked to hear about what was just used.
    fn notify(&self, dev: &Device, index: usize) {
        let ring = &dev.rings[index];
        let (Some(queue), Some(mem)) = (&ring.queue, &dev.mem) else {
            return;
        };
        let mut signalled = self.signalled.borrow_mut();
        // No decision yet on this connection: everything counts as new.
        let mut last = signalled[index].unwrap_or(Wrapping(queue.next_used().wrapping_sub(1)));
        let wanted = virtio::needs_notification(queue, mem, &mut last);
        signalled[index] = Some(last);
        if wanted {
            if let Some(call) = &ring.call {
                if let Err(e) = (&*call).write(&1u64.to_ne_bytes()) {
                    tracing::debug!(port = %self.name, error = %e, "could not interrupt the guest");
                }
            }
        }
    }

    /// Waits for a kick on ring `index`; true when one came (and was read).
    fn poll_kick(&self, cx: &mut Context<'_>, dev: &Device, index: usize) -> bool {
        let ring = &dev.rings[index];
        let mut kicks = self.kicks.borrow_mut();
        let current = kicks[index].as_ref().map(|k| k.generation);
        if current != Some(ring.kick_generation) {
            kicks[index] = ring.kick.as_ref().and_then(|fd| {
                crate::sys::async_fd(ArcFd(fd.clone()))
                    .map(|fd| Kick {
                        generation: ring.kick_generation,
                        fd,
                    })
                    .ok()
            });
        }
        let Some(kick) = &kicks[index] else {
            return false;
        };
        let mut kicked = false;
        while let Poll::Ready(Ok(mut guard)) = kick.fd.poll_read_ready(cx) {
            match crate::sys::read_counter(kick.fd.get_ref()) {
                Ok(_) => kicked = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                }
                Err(_) => {
                    guard.clear_ready();
                    break;
                }
            }
        }
        kicked
    }

    /// Moves held frames into receive buffers the guest has since given.
    fn flush_pending(&self, dev: &mut Device) {
        if self.pending.borrow().is_empty() {
            return;
        }
        let neg = Negotiated::from_acked(dev.acked);
        let Device { rings, mem, .. } = dev;
        let (Some(queue), Some(mem)) = (rings[RX_QUEUE].queue.as_mut(), mem.as_ref()) else {
            return;
        };
        let mut sent = false;
        let mut pending = self.pending.borrow_mut();
        while let Some((frame, size)) = pending.front() {
            match virtio::push_rx_gso(queue, mem, frame, neg, *size) {
                Err(RxError::NoBuffers) => break,
                result => {
                    if result.is_err() {
                        NetMetrics::inc(&self.metrics.drop_tx_failed);
                    }
                    *self.pending_bytes.borrow_mut() -= frame.len();
                    pending.pop_front();
                    sent = true;
                }
            }
        }
        if pending.is_empty() {
            // Nothing waits for buffers: the guest need not kick for them.
            let _ = queue.disable_notification(mem);
        }
        drop(pending);
        if sent {
            self.notify(dev, RX_QUEUE);
        }
    }

    fn hold(&self, frame: &[u8], size: Option<usize>) -> io::Result<()> {
        let mut bytes = self.pending_bytes.borrow_mut();
        if *bytes + frame.len() > MAX_PENDING_BYTES {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        *bytes += frame.len();
        self.pending.borrow_mut().push_back((frame.to_vec(), size));
        Ok(())
    }

    /// Splits a UDP train from the guest into datagrams for the switch.
    fn split_udp(&self, frame: &[u8], size: usize) -> bool {
        let mut split = self.split.borrow_mut();
        let mut scratch = Vec::new();
        crate::gso::segment(frame, size, &mut scratch, |d| split.push_back(d.to_vec()))
    }

    /// Puts one frame (whole, or a large TCP segment with its segment
    /// size) into the guest's receive queue, or holds it for buffers.
    fn deliver(&self, frame: &[u8], size: Option<usize>) -> io::Result<()> {
        let mut dev = lock(&self.device);
        if dev.closed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        if !self.pending.borrow().is_empty() {
            // Keep the order: behind what already waits.
            self.flush_pending(&mut dev);
            if !self.pending.borrow().is_empty() {
                return self.hold(frame, size);
            }
        }
        let neg = Negotiated::from_acked(dev.acked);
        let result = {
            let Device { rings, mem, .. } = &mut *dev;
            let ring = &mut rings[RX_QUEUE];
            let (Some(queue), Some(mem), true) = (ring.queue.as_mut(), mem.as_ref(), ring.enabled) else {
                return Err(io::ErrorKind::NotConnected.into());
            };
            match virtio::push_rx_gso(queue, mem, frame, neg, size) {
                Err(RxError::NoBuffers) => {
                    // Ask for a kick when buffers come; they may have just come.
                    match queue.enable_notification(mem) {
                        Ok(true) => virtio::push_rx_gso(queue, mem, frame, neg, size),
                        _ => Err(RxError::NoBuffers),
                    }
                }
                other => other,
            }
        };
        match result {
            Ok(()) => {
                self.notify(&dev, RX_QUEUE);
                Ok(())
            }
            Err(RxError::NoBuffers) => self.hold(frame, size),
            Err(RxError::Dropped) => {
                self.notify(&dev, RX_QUEUE);
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the guest's receive buffer cannot hold the frame",
                ))
            }
        }
    }
}

impl Frontend for VhostUserPort {
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut dev = lock(&self.device);
        if dev.closed {
            return Poll::Ready(Ok(0));
        }
        if !dev.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            dev.waker = Some(cx.waker().clone());
        }
        if let Some(datagram) = self.split.borrow_mut().pop_front() {
            let Some(dst) = buf.get_mut(..datagram.len()) else {
                NetMetrics::inc(&self.metrics.drop_oversized);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            dst.copy_from_slice(&datagram);
            return Poll::Ready(Ok(datagram.len()));
        }
        if self.poll_kick(cx, &dev, RX_QUEUE) || !self.pending.borrow().is_empty() {
            self.flush_pending(&mut dev);
        }
        self.poll_kick(cx, &dev, TX_QUEUE);
        let neg = Negotiated::from_acked(dev.acked);
        loop {
            let popped = {
                let Device { rings, mem, .. } = &mut *dev;
                let ring = &mut rings[TX_QUEUE];
                let (Some(queue), Some(mem), true) = (ring.queue.as_mut(), mem.as_ref(), ring.enabled) else {
                    return Poll::Pending;
                };
                let _ = queue.disable_notification(mem);
                match virtio::pop_tx(queue, mem, buf, neg) {
                    Some(result) => Some(result),
                    // Empty: ask for a kick, unless frames came meanwhile.
                    None => match queue.enable_notification(mem) {
                        Ok(true) => continue,
                        _ => None,
                    },
                }
            };
            self.notify(&dev, TX_QUEUE);
            match popped {
                Some(Ok((n, TxGso::None))) if n > 0 => return Poll::Ready(Ok(n)),
                Some(Ok((n, TxGso::Udp(size)))) => {
                    if self.split_udp(&buf[..n], size) {
                        if let Some(first) = self.split.borrow_mut().pop_front() {
                            buf[..first.len()].copy_from_slice(&first);
                            return Poll::Ready(Ok(first.len()));
                        }
                    }
                    NetMetrics::inc(&self.metrics.drop_malformed);
                }
                Some(Ok(_)) => NetMetrics::inc(&self.metrics.drop_malformed),
                Some(Err(reason)) => {
                    tracing::trace!(port = %self.name, ?reason, "dropped a frame from the guest");
                    NetMetrics::inc(&self.metrics.drop_malformed);
                }
                None => return Poll::Pending,
            }
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.deliver(frame, None)
    }

    fn offloads(&self) -> crate::gso::Offloads {
        Negotiated::from_acked(lock(&self.device).acked).offloads()
    }

    fn send_gso(&self, frame: &[u8], segment_size: usize) -> io::Result<()> {
        self.deliver(frame, Some(segment_size))
    }

    fn name(&self) -> &str {
        &self.name
    }
}
