//! The gateway's TCP sockets, sharded over several smoltcp interfaces.
//!
//! smoltcp's `Interface` walks every socket of its set on each poll (egress
//! and the next-deadline computation) and on each incoming packet (to find
//! the socket that takes it). With one set, a packet cost grew with the
//! number of open flows: 6,000 mostly idle connections kept `ferry net` at
//! 100 % of a core on ~2,000 small messages a second (bench/soak.sh). Here
//! each flow lives in the shard its 4-tuple hashes to (a per-process keyed
//! hash, so a guest cannot aim its flows at one shard), each shard has its
//! own interface with the same addresses, and only shards that something
//! touched, or whose deadline came, are polled. A packet now walks one
//! shard's sockets; the deadline of the whole set is the earliest of the
//! shards' cached deadlines.
//!
//! Everything that is not TCP (ICMP echo to the gateway's own addresses)
//! goes through shard 0.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use smoltcp::iface::{Context, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use crate::switch::Switch;
use crate::sys::PageRing;
use crate::tcp::FlowKey;

/// Egress passes per poll of one shard: one pass sends at most one segment
/// per socket, so repeat (bounded) until the send windows are drained;
/// otherwise host-to-guest transfers would be clocked by the guest's ACKs.
const EGRESS_ROUNDS: usize = 64;

/// Flows per shard the count is sized for (see [`Shards::count_for`]).
const FLOWS_PER_SHARD: usize = 128;
/// Most shards: each interface costs a few KiB.
const MAX_SHARDS: usize = 64;

/// A TCP socket's place: its shard and its handle in that shard's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowHandle {
    shard: u16,
    handle: SocketHandle,
}

/// A socket's two ring buffers, page-aligned mappings whose pages an idle
/// socket gives back (see [`Shards::trim`]). Kept beside the socket and
/// dropped after it: the socket borrows them.
pub struct Buffers {
    rx: PageRing,
    tx: PageRing,
}

impl Buffers {
    /// A socket with `size`-byte rings, and the rings.
    #[allow(unsafe_code)]
    pub fn socket(size: usize) -> std::io::Result<(tcp::Socket<'static>, Buffers)> {
        let mut b = Buffers {
            rx: PageRing::new(size)?,
            tx: PageRing::new(size)?,
        };
        // SAFETY: the socket is only used while its `Buffers` live beside
        // it: in a shard's set with the `Buffers` in the shard's map
        // (declared after the set, so dropped after it) or in the spare
        // pool as a `(socket, Buffers)` pair. Dropping a `tcp::Socket` does
        // not touch its storage, so where the two are dropped together the
        // order does not matter.
        let (rx, tx) = unsafe { (b.rx.storage(), b.tx.storage()) };
        let socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        Ok((socket, b))
    }
}

struct Shard {
    iface: Interface,
    sockets: SocketSet<'static>,
    buffers: HashMap<SocketHandle, Buffers>,
    dirty: bool,
}

pub struct Shards {
    shards: Vec<Shard>,
    /// Shards to poll next (each listed once; `Shard::dirty` says so).
    dirty: Vec<u16>,
    /// When each shard next needs a poll (None: only on input), as of its
    /// last poll; apart from the shards so that looking for due ones reads
    /// one small array, not every interface's memory.
    next_at: Vec<Option<Instant>>,
    /// The earliest of `next_at`: most polls find nothing due at a glance.
    earliest: Option<Instant>,
    hasher: RandomState,
}

impl Shards {
    /// How many shards suit a table of `max_flows` flows.
    pub fn count_for(max_flows: usize) -> usize {
        max_flows.div_ceil(FLOWS_PER_SHARD).clamp(1, MAX_SHARDS)
    }

    /// `count` shards, each with an interface from `make`.
    pub fn new(count: usize, mut make: impl FnMut() -> Interface) -> Shards {
        Shards {
            shards: (0..count.clamp(1, usize::from(u16::MAX)))
                .map(|_| Shard {
                    iface: make(),
                    sockets: SocketSet::new(Vec::new()),
                    buffers: HashMap::new(),
                    dirty: false,
                })
                .collect(),
            dirty: Vec::new(),
            next_at: vec![None; count.clamp(1, usize::from(u16::MAX))],
            earliest: None,
            hasher: RandomState::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The shard a flow's packets and socket belong to.
    pub fn shard_of(&self, key: &FlowKey) -> usize {
        (self.hasher.hash_one(key) % self.shards.len() as u64) as usize
    }

    fn mark(&mut self, shard: usize) {
        if let Some(s) = self.shards.get_mut(shard) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(shard as u16);
            }
        }
    }

    /// A flow's socket, to read, write or close; its shard is polled next.
    pub fn socket(&mut self, h: FlowHandle) -> &mut tcp::Socket<'static> {
        self.mark(usize::from(h.shard));
        self.shards[usize::from(h.shard)]
            .sockets
            .get_mut::<tcp::Socket>(h.handle)
    }

    /// The interface context of `shard`, for `tcp::Socket::connect`.
    pub fn context(&mut self, shard: usize) -> &mut Context {
        self.shards[shard].iface.context()
    }

    /// Adds a socket whose ring buffers are at `buffers`.
    pub fn add(&mut self, shard: usize, socket: tcp::Socket<'static>, buffers: Buffers) -> FlowHandle {
        self.mark(shard);
        let s = &mut self.shards[shard];
        let handle = s.sockets.add(socket);
        s.buffers.insert(handle, buffers);
        FlowHandle {
            shard: shard as u16,
            handle,
        }
    }

    pub fn remove(&mut self, h: FlowHandle) -> (tcp::Socket<'static>, Buffers) {
        let s = &mut self.shards[usize::from(h.shard)];
        let smoltcp::socket::Socket::Tcp(socket) = s.sockets.remove(h.handle);
        let buffers = s
            .buffers
            .remove(&h.handle)
            .expect("every socket is added with its buffers");
        (socket, buffers)
    }

    /// Gives back the pages of an idle socket's ring buffers that hold
    /// nothing: the send buffer when all it sent was acknowledged, the
    /// receive buffer when it is empty and `no_held_input` (the caller
    /// knows the stack holds none of the peer's data out of order, which
    /// lives in the buffer's free space). Returns whether any was.
    #[allow(unsafe_code)]
    pub fn trim(&mut self, h: FlowHandle, no_held_input: bool) -> bool {
        let s = &mut self.shards[usize::from(h.shard)];
        let Some(b) = s.buffers.get(&h.handle) else {
            return false;
        };
        let socket = s.sockets.get::<tcp::Socket>(h.handle);
        let tx = socket.send_queue() == 0;
        let rx = no_held_input && socket.recv_queue() == 0;
        if tx {
            // SAFETY: every byte of the send ring was acknowledged, so none
            // is live, and the socket is not in use while the stack is
            // borrowed here.
            unsafe { b.tx.release() };
        }
        if rx {
            // SAFETY: as above for the receive ring: empty, and with no
            // out-of-order input held in its free space.
            unsafe { b.rx.release() };
        }
        tx || rx
    }

    /// Hands `shard` the packet the switch holds as pending.
    pub fn ingress(&mut self, shard: usize, now: Instant, switch: &mut Switch) {
        let s = &mut self.shards[shard];
        s.iface.poll_ingress_single(now, switch, &mut s.sockets);
        self.mark(shard);
    }

    /// Polls every shard that was touched or whose deadline has come.
    pub fn poll(&mut self, now: Instant, switch: &mut Switch) {
        if self.earliest.is_some_and(|at| at <= now) {
            for i in 0..self.next_at.len() {
                if self.next_at[i].is_some_and(|at| at <= now) {
                    self.mark(i);
                }
            }
        }
        // Polling may not touch other shards, so the list is complete.
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            let s = &mut self.shards[usize::from(i)];
            s.dirty = false;
            s.iface.poll(now, switch, &mut s.sockets);
            for _ in 0..EGRESS_ROUNDS {
                if s.iface.poll_egress(now, switch, &mut s.sockets) == PollResult::None {
                    break;
                }
            }
            self.next_at[usize::from(i)] = s.iface.poll_at(now, &s.sockets);
        }
        if !dirty.is_empty() {
            self.earliest = self.next_at.iter().flatten().min().copied();
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// How long until some shard needs a poll (None: none is waiting).
    pub fn delay(&self, now: Instant) -> Option<Duration> {
        let at = self.earliest?;
        Some(if at > now { at - now } else { Duration::ZERO })
    }

    /// Sockets in all shards.
    pub fn sockets(&self) -> usize {
        self.shards.iter().map(|s| s.sockets.iter().count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use smoltcp::iface::Config;
    use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

    use super::*;

    fn shards(count: usize) -> (Shards, Switch) {
        let mut switch = Switch::new(1500, [2, 0, 0, 0, 0, 1], 64, Arc::default());
        let shards = Shards::new(count, || {
            let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut switch, Instant::ZERO);
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 1), 24));
            });
            iface
        });
        (shards, switch)
    }

    fn key(port: u16) -> FlowKey {
        let guest = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));
        (guest, port, IpAddr::V4(Ipv4Addr::new(10, 0, 2, 254)), 80)
    }

    fn socket() -> (tcp::Socket<'static>, Buffers) {
        Buffers::socket(8192).unwrap()
    }

    #[test]
    fn counts_follow_the_flow_table() {
        assert_eq!(Shards::count_for(0), 1);
        assert_eq!(Shards::count_for(100), 1);
        assert_eq!(Shards::count_for(1000), 8);
        assert_eq!(Shards::count_for(8192), 64);
        assert_eq!(Shards::count_for(1 << 20), 64);
    }

    #[test]
    fn flows_spread_and_stay_where_they_hash() {
        let (mut s, mut switch) = shards(8);
        let mut used = [0usize; 8];
        let mut handles = Vec::new();
        for port in 0..800 {
            let shard = s.shard_of(&key(port));
            assert_eq!(shard, s.shard_of(&key(port)), "stable");
            used[shard] += 1;
            let (sock, bufs) = socket();
            handles.push((port, s.add(shard, sock, bufs)));
        }
        assert!(used.iter().all(|&n| n > 50), "uneven: {used:?}");
        assert_eq!(s.sockets(), 800);
        // Each handle reaches its own socket, whatever its shard.
        for &(port, h) in &handles {
            s.socket(h).listen(port + 1000).unwrap();
        }
        for &(port, h) in &handles {
            assert_eq!(s.socket(h).listen_endpoint().port, port + 1000);
        }
        s.poll(Instant::from_millis(1), &mut switch);
        for (_, h) in handles {
            s.remove(h);
        }
        assert_eq!(s.sockets(), 0);
    }

    #[test]
    fn the_deadline_is_the_earliest_shards() {
        let (mut s, mut switch) = shards(4);
        assert_eq!(s.delay(Instant::ZERO), None, "nothing to wait for");
        // A socket connecting to a guest has a SYN retransmission deadline.
        let k = key(4000);
        let shard = s.shard_of(&k);
        let (mut sock, bufs) = socket();
        let cx = s.context(shard);
        sock.connect(
            cx,
            (IpAddress::v4(10, 0, 2, 15), 4000),
            (IpAddress::v4(10, 0, 2, 1), 50000),
        )
        .unwrap();
        s.add(shard, sock, bufs);
        s.poll(Instant::from_millis(10), &mut switch);
        let d = s.delay(Instant::from_millis(10)).expect("a retransmission deadline");
        assert!(d > Duration::ZERO && d <= Duration::from_secs(10), "{d}");
        // Past it, the shard is polled without being touched.
        assert_eq!(s.delay(Instant::from_secs(100)), Some(Duration::ZERO));
        s.poll(Instant::from_secs(100), &mut switch);
        assert!(s.next_at[shard].is_some_and(|at| at > Instant::from_secs(100)));
    }
}
