//! Shared by the virtqueue targets: a guest memory whose first queue is
//! written straight from fuzz input, so every chain shape a hostile driver
//! can build (loops, indirect tables, addresses outside memory, zero and
//! huge lengths, write-only buffers where read-only ones belong) reaches the
//! device code.
#![allow(dead_code)]

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Entries in the fuzzed queue.
pub const SIZE: u16 = 16;
/// Where the queue lives (descriptor table, then available ring, then the
/// used ring a page further).
const DESC: u64 = 0;
const AVAIL: u64 = 16 * SIZE as u64;
const USED: u64 = 0x1000;
/// Where the input's payload is copied: buffers the descriptors may point to.
pub const PAYLOAD: u64 = 0x2000;
/// Guest memory: two regions with a hole between them.
const LOW: usize = 0x1_0000;
const HIGH: u64 = 0x2_0000;

/// A guest memory and a device queue built from `data`: the first 256
/// bytes are the descriptor table, the next 32 the available ring's
/// entries, the next 2 its index; the rest is copied to [`PAYLOAD`].
pub fn queue_from(data: &[u8]) -> (GuestMemoryMmap, Queue) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LOW), (GuestAddress(HIGH), 0x1000)]).unwrap();
    let table = 16 * SIZE as usize;
    let ring = 2 * SIZE as usize;
    let take = |from: usize, len: usize| data.get(from..(from + len).min(data.len())).unwrap_or(&[]);
    let _ = mem.write_slice(take(0, table), GuestAddress(DESC));
    let _ = mem.write_slice(take(table, ring), GuestAddress(AVAIL + 4));
    let idx = take(table + ring, 2);
    let idx = match idx {
        [a, b] => u16::from_le_bytes([*a, *b]),
        _ => 1,
    };
    let _ = mem.write_obj(idx, GuestAddress(AVAIL + 2));
    let rest = data.get(table + ring + 2..).unwrap_or(&[]);
    let rest = &rest[..rest.len().min(LOW - PAYLOAD as usize)];
    let _ = mem.write_slice(rest, GuestAddress(PAYLOAD));
    let mut q = Queue::new(SIZE).unwrap();
    q.set_size(SIZE);
    q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
    q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    q.set_ready(true);
    (mem, q)
}

/// One descriptor as a driver writes it (for seeds).
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

/// A fresh directory for one fuzz process's files. bench/fuzz.sh mounts a
/// small tmpfs on `/tmp/ferry-fuzz` inside the target's own mount
/// namespace, so what a target writes is bounded and thrown away.
pub fn scratch_dir(target: &str) -> std::path::PathBuf {
    let base = std::path::Path::new("/tmp/ferry-fuzz");
    let dir = base.join(format!("{target}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// ferry's network stack on a current-thread runtime (the clock paused when
/// asked, so what waits ends at once), as the daemon runs it.
pub struct NetRig {
    pub runtime: tokio::runtime::Runtime,
    pub local: tokio::task::LocalSet,
    pub stack: ferry_net::stack::StackRef,
}

pub fn net_rig(paused: bool) -> NetRig {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let stack = local.block_on(&runtime, async {
        ferry_net::stack::Stack::new(
            ferry_net::config::NetConfig::default(),
            std::sync::Arc::new(ferry_net::metrics::NetMetrics::default()),
        )
    });
    NetRig { runtime, local, stack }
}

/// Splits fuzz input into at most `count` messages, each as long as
/// `len_of` reads from its start (at least 1 byte, at most `max` and what
/// is left), so one input can carry a conversation.
pub fn messages<'a>(
    data: &'a [u8],
    count: usize,
    max: usize,
    len_of: impl Fn(&[u8]) -> usize + 'a,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = len_of(rest).clamp(1, rest.len()).min(max);
        let (msg, tail) = rest.split_at(len);
        rest = tail;
        Some(msg)
    })
    .take(count)
}

/// A little-endian u32 at `at` in `b` (0 when `b` is shorter).
pub fn le32(b: &[u8], at: usize) -> usize {
    b.get(at..at + 4)
        .map_or(0, |v| u32::from_le_bytes(v.try_into().unwrap()) as usize)
}
