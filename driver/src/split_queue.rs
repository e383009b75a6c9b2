//! The driver's half of a split virtqueue (virtio 1.x, 2.6): a descriptor
//! table, the available ring the driver publishes to and the used ring the
//! device answers in, all in guest memory.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// One buffer of a chain: where it is, how long, and whether the device
/// writes it (true) or reads it (false).
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

impl Buffer {
    /// A buffer the device reads (a request).
    pub fn readable(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr,
            len,
            device_writes: false,
        }
    }

    /// A buffer the device fills (a reply).
    pub fn writable(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr,
            len,
            device_writes: true,
        }
    }
}

/// A split virtqueue as the driver sees it.
#[derive(Debug)]
pub struct SplitQueue {
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl SplitQueue {
    /// Room one queue of `size` entries takes from `base` on (page aligned).
    pub fn footprint(size: u16) -> u64 {
        let (_, _, used) = Self::layout(0, size);
        (used + 6 + 8 * u64::from(size)).next_multiple_of(4096)
    }

    fn layout(base: u64, size: u16) -> (u64, u64, u64) {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4096);
        (base, avail, used)
    }

    /// A queue of `size` (a power of two) entries laid out from `base`.
    pub fn new(base: u64, size: u16) -> SplitQueue {
        let (desc_table, avail_ring, used_ring) = Self::layout(base, size);
        SplitQueue {
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc_table, self.avail_ring, self.used_ring)
    }

    /// The device's view of this queue, for devices run in-process.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("a power-of-two queue size");
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.desc_table))
            .expect("aligned descriptor table");
        q.try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .expect("aligned available ring");
        q.try_set_used_ring_address(GuestAddress(self.used_ring))
            .expect("aligned used ring");
        q.set_ready(true);
        q
    }

    /// Writes one chain into the descriptor table and publishes it on the
    /// available ring; returns its head index. The caller keeps no more
    /// than `size` descriptors outstanding.
    pub fn offer<M: GuestMemory>(&mut self, mem: &M, bufs: &[Buffer]) -> Result<u16, vm_memory::GuestMemoryError> {
        let head = self.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if buf.device_writes {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = GuestAddress(self.desc_table + 16 * u64::from(idx));
            mem.write_obj(buf.addr, at)?;
            mem.write_obj(buf.len, GuestAddress(at.0 + 8))?;
            mem.write_obj(flags, GuestAddress(at.0 + 12))?;
            mem.write_obj(self.next_desc, GuestAddress(at.0 + 14))?;
        }
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail_ring + 4 + 2 * slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The device must see the descriptors before the index that
        // publishes them.
        fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail_ring + 2))?;
        fence(Ordering::SeqCst);
        Ok(head)
    }

    /// The device's used index.
    pub fn used_idx<M: GuestMemory>(&self, mem: &M) -> u16 {
        fence(Ordering::SeqCst);
        mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap_or(0)
    }

    /// Used element `n` (counting from the queue's start): (head, length).
    pub fn used<M: GuestMemory>(&self, mem: &M, n: u16) -> (u32, u32) {
        let at = self.used_ring + 4 + 8 * u64::from(n % self.size);
        (
            mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX),
            mem.read_obj(GuestAddress(at + 4)).unwrap_or(0),
        )
    }

    /// The next element the device returned that this driver has not
    /// taken yet.
    pub fn pop_used<M: GuestMemory>(&mut self, mem: &M) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.last_used {
            return None;
        }
        let elem = self.used(mem, self.last_used);
        self.last_used = self.last_used.wrapping_add(1);
        Some(elem)
    }

    /// VIRTIO_F_EVENT_IDX: interrupt me once the used index passes `v`.
    pub fn set_used_event<M: GuestMemory>(&self, mem: &M, v: u16) {
        let _ = mem.write_obj(v, GuestAddress(self.avail_ring + 4 + 2 * u64::from(self.size)));
    }
}
