//! virtio-net's device half, independent of the transport: how a frame is
//! taken from the transmit queue and put into the receive queue. The
//! vhost-user front end runs it on queues QEMU set up; the built-in VMM can
//! run the same code over virtio-mmio.
//!
//! Used buffers are published the way QEMU's `virtqueue_fill`/`flush` do it:
//! every element first, the used index once. A driver must never see the
//! first buffer of a merged receive frame before the rest of it.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// `struct virtio_net_hdr_v1`: what precedes every frame on both queues
/// once VERSION_1 or MRG_RXBUF is negotiated (ferry requires VERSION_1).
pub const NET_HDR_LEN: usize = 12;
/// Where `num_buffers` sits inside the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// A merged frame never needs more buffers than this (64 KiB in 4 KiB
/// pieces, with room to spare); a longer run means a broken driver.
const MAX_MERGED: usize = 64;
/// Used-ring layout (virtio 1.x, split queues).
const USED_ELEM_LEN: u64 = 8;
const RING_HEADER_LEN: u64 = 4;
/// `VRING_AVAIL_F_NO_INTERRUPT`.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Queue indexes of a single-pair virtio-net device.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;

/// `VIRTIO_NET_F_HOST_USO` (virtio 1.2; not in virtio-bindings' list).
pub const VIRTIO_NET_F_HOST_USO: u32 = 56;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation (one datagram per piece).
const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: ECN on a segmented frame (not offered).
const GSO_ECN: u8 = 0x80;

/// The features ferry's virtio-net device offers. Checksums are offloaded
/// both ways (the guest skips summing what it sends and verifying what it
/// gets). The built-in VMM offers these; the vhost-user front end adds
/// [`offload_features`].
pub fn device_features() -> u64 {
    (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
        | (1 << VIRTIO_NET_F_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
}

/// Segmentation offloads both ways: the guest hands over TCP segments and
/// UDP datagram trains up to 64 KiB (HOST_TSO4/6, HOST_USO) and takes TCP
/// segments up to 64 KiB (GUEST_TSO4/6, with merged receive buffers). A
/// front end offers these only if its frame buffers hold 64 KiB and it
/// tells the switch (`Frontend::offloads`). Not offered: GUEST_USO4/6
/// (ferry's stack never builds UDP datagram trains for the guest: each
/// datagram from the host is its own frame) and HOST_ECN/GUEST_ECN (a
/// guest without HOST_ECN segments CWR-marked data itself, as Linux does).
pub fn offload_features() -> u64 {
    (1 << VIRTIO_NET_F_HOST_TSO4)
        | (1 << VIRTIO_NET_F_HOST_TSO6)
        | (1 << VIRTIO_NET_F_HOST_USO)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6)
}

/// What the driver accepted, in the form the data path asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// A received frame may span several buffers (`num_buffers`).
    pub mrg_rxbuf: bool,
    /// Transmitted frames may carry a partial checksum to complete.
    pub tx_csum: bool,
    /// Received frames may be marked "checksum verified".
    pub rx_csum_valid: bool,
    /// The guest may send TCP segments larger than the MTU (IPv4, IPv6)
    /// and UDP datagram trains.
    pub host_tso4: bool,
    pub host_tso6: bool,
    pub host_uso: bool,
    /// The guest takes TCP segments larger than the MTU (IPv4, IPv6).
    pub guest_tso4: bool,
    pub guest_tso6: bool,
}

impl Negotiated {
    pub fn from_acked(acked: u64) -> Negotiated {
        Negotiated {
            mrg_rxbuf: acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            tx_csum: acked & (1 << VIRTIO_NET_F_CSUM) != 0,
            rx_csum_valid: acked & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0,
            host_tso4: acked & (1 << VIRTIO_NET_F_HOST_TSO4) != 0,
            host_tso6: acked & (1 << VIRTIO_NET_F_HOST_TSO6) != 0,
            host_uso: acked & (1 << VIRTIO_NET_F_HOST_USO) != 0,
            guest_tso4: acked & (1 << VIRTIO_NET_F_GUEST_TSO4) != 0,
            guest_tso6: acked & (1 << VIRTIO_NET_F_GUEST_TSO6) != 0,
        }
    }

    /// The large frames the guest takes whole.
    pub fn offloads(&self) -> crate::gso::Offloads {
        crate::gso::Offloads {
            tso4: self.guest_tso4 && self.rx_csum_valid && self.mrg_rxbuf,
            tso6: self.guest_tso6 && self.rx_csum_valid && self.mrg_rxbuf,
        }
    }
}

/// What a transmitted frame asks of the device beyond its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxGso {
    /// One frame, as it is (a TCP segment larger than the MTU included:
    /// the stack takes it whole).
    None,
    /// A UDP datagram train: split it into datagrams of this payload size.
    Udp(usize),
}

/// Why a transmitted chain was dropped (it is still returned to the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxDrop {
    /// Shorter than the header, a device-writable buffer, or bad offsets.
    Malformed,
    /// Larger than the frame buffer (the MTU).
    TooLong,
    /// A descriptor points outside guest memory.
    BadAddress,
    /// Segmentation offload the device never offered.
    Gso,
}

/// Why a frame could not be put into the receive queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxError {
    /// Not enough buffers right now: keep the frame and retry on the next
    /// kick.
    NoBuffers,
    /// The driver's buffers can never hold it (no MRG_RXBUF and a small
    /// buffer, or a broken chain): dropped, buffer returned.
    Dropped,
}

/// Writes used element number `nth` past the queue's next used slot, without
/// publishing it.
fn fill_used<M: GuestMemory>(queue: &Queue, mem: &M, nth: u16, head: u16, len: u32) -> Result<(), ()> {
    let size = queue.size();
    if size == 0 {
        return Err(());
    }
    let slot = u64::from(queue.next_used().wrapping_add(nth) % size);
    let addr = GuestAddress(queue.used_ring())
        .checked_add(RING_HEADER_LEN + slot * USED_ELEM_LEN)
        .ok_or(())?;
    let mut elem = [0u8; USED_ELEM_LEN as usize];
    elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
    elem[4..].copy_from_slice(&len.to_le_bytes());
    mem.write_slice(&elem, addr).map_err(|_| ())
}

/// Makes `count` filled elements visible to the driver at once.
fn flush_used<M: GuestMemory>(queue: &mut Queue, mem: &M, count: u16) -> Result<(), ()> {
    let next = queue.next_used().wrapping_add(count);
    queue.set_next_used(next);
    let idx = GuestAddress(queue.used_ring()).checked_add(2).ok_or(())?;
    mem.store(next.to_le(), idx, Ordering::Release).map_err(|_| ())
}

/// Whether the driver wants an interrupt for what was published since the
/// last call (event index or the no-interrupt flag).
/// `last` is the used index at the previous decision (kept by the caller).
pub fn needs_notification<M: GuestMemory>(queue: &Queue, mem: &M, last: &mut Wrapping<u16>) -> bool {
    // Publish the used index before reading what the driver asked for.
    fence(Ordering::SeqCst);
    let new = Wrapping(queue.next_used());
    let old = std::mem::replace(last, new);
    if new == old {
        return false;
    }
    let avail = GuestAddress(queue.avail_ring());
    if queue.event_idx_enabled() {
        let at = RING_HEADER_LEN + 2 * u64::from(queue.size());
        let Some(used_event) = avail
            .checked_add(at)
            .and_then(|a| mem.load::<u16>(a, Ordering::Acquire).ok())
        else {
            return true;
        };
        let used_event = Wrapping(u16::from_le(used_event));
        return new - used_event - Wrapping(1) < new - old;
    }
    match mem.load::<u16>(avail, Ordering::Acquire) {
        Ok(flags) => u16::from_le(flags) & AVAIL_F_NO_INTERRUPT == 0,
        Err(_) => true,
    }
}

/// Takes the next frame the driver queued for sending and copies it,
/// without its header, into `buf`. `None`: the queue is empty. A bad chain
/// is returned to the driver and reported as a drop.
pub fn pop_tx<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    buf: &mut [u8],
    neg: Negotiated,
) -> Option<Result<(usize, TxGso), TxDrop>> {
    let chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    let mut hdr = [0u8; NET_HDR_LEN];
    let mut hdr_len = 0;
    let mut len = 0;
    let mut result = Ok(());
    for desc in chain {
        if desc.is_write_only() {
            result = Err(TxDrop::Malformed);
            break;
        }
        let mut addr = desc.addr();
        let mut left = desc.len() as usize;
        if hdr_len < NET_HDR_LEN {
            let take = left.min(NET_HDR_LEN - hdr_len);
            if mem.read_slice(&mut hdr[hdr_len..hdr_len + take], addr).is_err() {
                result = Err(TxDrop::BadAddress);
                break;
            }
            hdr_len += take;
            left -= take;
            addr = addr.unchecked_add(take as u64);
        }
        if left == 0 {
            continue;
        }
        let Some(dst) = buf.get_mut(len..len + left) else {
            result = Err(TxDrop::TooLong);
            break;
        };
        if mem.read_slice(dst, addr).is_err() {
            result = Err(TxDrop::BadAddress);
            break;
        }
        len += left;
    }
    // A transmit buffer is only read: the used length is 0.
    if fill_used(queue, mem, 0, head, 0).is_err() || flush_used(queue, mem, 1).is_err() {
        return Some(Err(TxDrop::BadAddress));
    }
    if result.is_ok() && hdr_len < NET_HDR_LEN {
        result = Err(TxDrop::Malformed);
    }
    Some(result.and_then(|()| finish_tx(&hdr, &mut buf[..len], neg).map(|gso| (len, gso))))
}

/// Applies the header's requests to a transmitted frame. A segmentation
/// request must be one the driver negotiated, match the frame's protocol
/// and come with a partial checksum (virtio 1.2, 5.1.6.2).
fn finish_tx(hdr: &[u8; NET_HDR_LEN], frame: &mut [u8], neg: Negotiated) -> Result<TxGso, TxDrop> {
    let needs_csum = u32::from(hdr[0]) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    let gso_size = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
    let gso = match hdr[1] {
        t if u32::from(t) == VIRTIO_NET_HDR_GSO_NONE => TxGso::None,
        t if t & GSO_ECN != 0 => return Err(TxDrop::Gso),
        t => {
            let layout = crate::gso::layout(frame).ok_or(TxDrop::Gso)?;
            let ok = match u32::from(t) {
                VIRTIO_NET_HDR_GSO_TCPV4 => neg.host_tso4 && layout.tcp && !layout.v6,
                VIRTIO_NET_HDR_GSO_TCPV6 => neg.host_tso6 && layout.tcp && layout.v6,
                _ if t == GSO_UDP_L4 => neg.host_uso && !layout.tcp,
                _ => false,
            };
            if !ok || !needs_csum || gso_size == 0 {
                return Err(TxDrop::Gso);
            }
            if layout.tcp {
                TxGso::None
            } else {
                TxGso::Udp(gso_size)
            }
        }
    };
    if needs_csum {
        if !neg.tx_csum {
            return Err(TxDrop::Malformed);
        }
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        complete_checksum(frame, start, offset).ok_or(TxDrop::Malformed)?;
    }
    Ok(gso)
}

/// Finishes a partial checksum: the field at `start + offset` holds the
/// pseudo-header sum, and the device sums from `start` to the end and stores
/// the complement (as Linux's `skb_checksum_help` does, 0 becomes 0xffff).
fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> Option<()> {
    let field = start.checked_add(offset)?;
    if field.checked_add(2)? > frame.len() {
        return None;
    }
    let mut sum: u64 = 0;
    let mut words = frame[start..].chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut csum = !(sum as u16);
    if csum == 0 {
        csum = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Some(())
}

/// Where the bytes of a receive frame go, one chain after another.
struct RxChain {
    head: u16,
    written: u32,
}

/// Puts one frame (with its header) into the receive queue, spread over
/// several buffers when MRG_RXBUF allows it. Does not notify: call
/// [`needs_notification`] after a batch.
pub fn push_rx<M: GuestMemory>(queue: &mut Queue, mem: &M, frame: &[u8], neg: Negotiated) -> Result<(), RxError> {
    push_rx_gso(queue, mem, frame, neg, None)
}

/// [`push_rx`] for a TCP segment larger than the guest's MTU, which the
/// guest negotiated to take whole (GUEST_TSO4/6): `segment_size` is the
/// payload per segment on the guest's link (the header's `gso_size`).
pub fn push_rx_gso<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    frame: &[u8],
    neg: Negotiated,
    segment_size: Option<usize>,
) -> Result<(), RxError> {
    let mut hdr = [0u8; NET_HDR_LEN];
    if neg.rx_csum_valid {
        hdr[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    }
    if let Some(size) = segment_size {
        let layout = crate::gso::layout(frame).filter(|l| l.tcp && neg.offloads().takes(l));
        let (Some(layout), Ok(size)) = (layout, u16::try_from(size)) else {
            return Err(RxError::Dropped);
        };
        // Checksums are valid (DATA_VALID), as a host's GRO hands them on.
        hdr[1] = if layout.v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        } as u8;
        hdr[2..4].copy_from_slice(&(layout.payload as u16).to_le_bytes());
        hdr[4..6].copy_from_slice(&size.to_le_bytes());
    }
    hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&1u16.to_le_bytes());
    let total = NET_HDR_LEN + frame.len();
    let mut chains: [Option<RxChain>; MAX_MERGED] = [const { None }; MAX_MERGED];
    let mut used = 0;
    let mut done = 0;
    // Where the two bytes of num_buffers landed in guest memory.
    let mut num_buffers_at: [Option<GuestAddress>; 2] = [None, None];
    let mut failed = None;
    while done < total {
        if used == MAX_MERGED || (used == 1 && !neg.mrg_rxbuf) {
            failed = Some(RxError::Dropped);
            break;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            failed = Some(RxError::NoBuffers);
            break;
        };
        let head = chain.head_index();
        let mut written = 0usize;
        for desc in chain {
            if done == total {
                break;
            }
            if !desc.is_write_only() {
                failed = Some(RxError::Dropped);
                break;
            }
            let take = (desc.len() as usize).min(total - done);
            let addr = desc.addr();
            for (i, at) in num_buffers_at.iter_mut().enumerate() {
                let byte = NUM_BUFFERS_OFFSET + i;
                if (done..done + take).contains(&byte) {
                    *at = addr.checked_add((byte - done) as u64);
                }
            }
            let mut ok = true;
            let mut pos = done;
            while pos < done + take {
                let (src, base) = if pos < NET_HDR_LEN {
                    (&hdr[pos..NET_HDR_LEN.min(done + take)], pos)
                } else {
                    (&frame[pos - NET_HDR_LEN..done + take - NET_HDR_LEN], pos)
                };
                let dst = addr.unchecked_add((base - done) as u64);
                if mem.write_slice(src, dst).is_err() {
                    ok = false;
                    break;
                }
                pos += src.len();
            }
            if !ok {
                failed = Some(RxError::Dropped);
                break;
            }
            done += take;
            written += take;
        }
        chains[used] = Some(RxChain {
            head,
            written: written as u32,
        });
        used += 1;
        if failed.is_some() {
            break;
        }
    }
    match failed {
        None => {}
        Some(RxError::NoBuffers) => {
            // Hand the chains back untouched: the frame waits for buffers.
            for _ in 0..used {
                queue.go_to_previous_position();
            }
            return Err(RxError::NoBuffers);
        }
        Some(RxError::Dropped) => {
            // Return what was taken, empty, so the driver can reuse it.
            for (nth, chain) in chains.iter().take(used).flatten().enumerate() {
                let _ = fill_used(queue, mem, nth as u16, chain.head, 0);
            }
            let _ = flush_used(queue, mem, used as u16);
            return Err(RxError::Dropped);
        }
    }
    if used > 1 {
        let n = (used as u16).to_le_bytes();
        for (at, byte) in num_buffers_at.iter().zip(n) {
            if let Some(at) = at {
                let _ = mem.write_slice(&[byte], *at);
            }
        }
    }
    for (nth, chain) in chains.iter().take(used).flatten().enumerate() {
        if fill_used(queue, mem, nth as u16, chain.head, chain.written).is_err() {
            return Err(RxError::Dropped);
        }
    }
    flush_used(queue, mem, used as u16).map_err(|()| RxError::Dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_driver::split_queue::{Buffer, SplitQueue};
    use vm_memory::GuestMemoryMmap;

    const BUFS: u64 = 0x10_0000;
    const SIZE: u16 = 16;

    /// A guest's driver: its memory and one split queue.
    struct Driver {
        mem: GuestMemoryMmap,
        queue: SplitQueue,
    }

    impl Driver {
        fn new() -> Driver {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
            Driver {
                mem,
                queue: SplitQueue::new(0, SIZE),
            }
        }

        fn device_queue(&self) -> Queue {
            self.queue.device_queue()
        }

        /// Offers one chain of `(address, length, device-writable)` buffers.
        fn offer(&mut self, bufs: &[(u64, u32, bool)]) {
            let bufs: Vec<Buffer> = bufs
                .iter()
                .map(|&(addr, len, device_writes)| Buffer {
                    addr,
                    len,
                    device_writes,
                })
                .collect();
            self.queue.offer(&self.mem, &bufs).unwrap();
        }

        fn used_idx(&self) -> u16 {
            self.queue.used_idx(&self.mem)
        }

        fn used(&self, n: u16) -> (u32, u32) {
            self.queue.used(&self.mem, n)
        }

        fn set_used_event(&self, v: u16) {
            self.queue.set_used_event(&self.mem, v);
        }
    }

    const ALL: Negotiated = Negotiated {
        mrg_rxbuf: true,
        tx_csum: true,
        rx_csum_valid: true,
        host_tso4: false,
        host_tso6: false,
        host_uso: false,
        guest_tso4: false,
        guest_tso6: false,
    };

    /// An IPv4 frame of `proto` (6 or 17) with `payload` bytes after a
    /// 20-byte TCP or 8-byte UDP header, its checksum field holding the
    /// pseudo-header sum as Linux leaves it for the device.
    fn partial_frame(proto: u8, payload: usize) -> (Vec<u8>, usize, usize) {
        let l4_len = if proto == 6 { 20 } else { 8 };
        let mut f = vec![0u8; 14 + 20 + l4_len + payload];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + l4_len + payload) as u16).to_be_bytes());
        f[14 + 9] = proto;
        f[26..30].copy_from_slice(&[10, 0, 2, 15]);
        f[30..34].copy_from_slice(&[10, 0, 2, 2]);
        let ip_sum = crate::wire::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        if proto == 6 {
            f[34 + 12] = 5 << 4;
            f[34 + 13] = 0x10;
        } else {
            f[34 + 4..34 + 6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        }
        for (i, b) in f[34 + l4_len..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let len = (l4_len + payload) as u32;
        let mut pseudo: u32 = 0x0a00 + 0x020f + 0x0a00 + 0x0202 + u32::from(proto) + (len >> 16) + (len & 0xffff);
        while pseudo > 0xffff {
            pseudo = (pseudo & 0xffff) + (pseudo >> 16);
        }
        let field = if proto == 6 { 16 } else { 6 };
        f[34 + field..34 + field + 2].copy_from_slice(&(pseudo as u16).to_be_bytes());
        (f, 34, field)
    }

    fn offer_tx(drv: &mut Driver, hdr: &[u8; NET_HDR_LEN], frame: &[u8]) {
        drv.mem.write_slice(hdr, GuestAddress(BUFS)).unwrap();
        drv.mem.write_slice(frame, GuestAddress(BUFS + 0x1000)).unwrap();
        drv.offer(&[
            (BUFS, NET_HDR_LEN as u32, false),
            (BUFS + 0x1000, frame.len() as u32, false),
        ]);
    }

    #[test]
    fn tx_segmentation_offloads_are_taken_only_as_negotiated() {
        let with = Negotiated::from_acked(
            offload_features() | 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_MRG_RXBUF,
        );
        let mut buf = vec![0u8; 70_000];
        // A 20,000-byte TCP segment (TSO4) and a UDP train of 3 x 1000 (USO).
        for (proto, payload, gso_type, want) in [
            (6u8, 20_000usize, VIRTIO_NET_HDR_GSO_TCPV4 as u8, TxGso::None),
            (17, 3000, GSO_UDP_L4, TxGso::Udp(1000)),
        ] {
            let (frame, start, offset) = partial_frame(proto, payload);
            let mut hdr = [0u8; NET_HDR_LEN];
            hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
            hdr[1] = gso_type;
            hdr[4..6].copy_from_slice(&1000u16.to_le_bytes());
            hdr[6..8].copy_from_slice(&(start as u16).to_le_bytes());
            hdr[8..10].copy_from_slice(&(offset as u16).to_le_bytes());
            for (neg, expect) in [(ALL, Err(TxDrop::Gso)), (with, Ok((frame.len(), want)))] {
                let mut drv = Driver::new();
                let mut dq = drv.device_queue();
                offer_tx(&mut drv, &hdr, &frame);
                assert_eq!(pop_tx(&mut dq, &drv.mem, &mut buf, neg), Some(expect));
            }
            // The checksum was completed over the whole segment.
            let packet = smoltcp::wire::Ipv4Packet::new_checked(&buf[14..frame.len()]).unwrap();
            let sum = crate::wire::checksum_with(
                0x0a00 + 0x020f + 0x0a00 + 0x0202 + u32::from(proto) + packet.payload().len() as u32,
                packet.payload(),
            );
            assert_eq!(sum, 0, "checksum over the {proto} segment");
            // Wrong protocol for the type, ECN, no partial checksum, size 0.
            let mut bad = Vec::new();
            let mut h = hdr;
            h[1] = if proto == 6 {
                GSO_UDP_L4
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4 as u8
            };
            bad.push(h);
            let mut h = hdr;
            h[1] |= GSO_ECN;
            bad.push(h);
            let mut h = hdr;
            h[0] = 0;
            bad.push(h);
            let mut h = hdr;
            h[4..6].fill(0);
            bad.push(h);
            for h in bad {
                let mut drv = Driver::new();
                let mut dq = drv.device_queue();
                offer_tx(&mut drv, &h, &frame);
                assert_eq!(
                    pop_tx(&mut dq, &drv.mem, &mut buf, with),
                    Some(Err(TxDrop::Gso)),
                    "{h:?}"
                );
            }
        }
    }

    #[test]
    fn rx_large_segments_carry_a_gso_header_when_negotiated() {
        let with = Negotiated::from_acked(
            offload_features() | 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_MRG_RXBUF,
        );
        let (frame, _, _) = partial_frame(6, 5000);
        let mut drv = Driver::new();
        let mut dq = drv.device_queue();
        for i in 0..4u64 {
            drv.offer(&[(BUFS + i * 0x2000, 4096, true)]);
        }
        push_rx_gso(&mut dq, &drv.mem, &frame, with, Some(1460)).unwrap();
        let mut hdr = [0u8; NET_HDR_LEN];
        drv.mem.read_slice(&mut hdr, GuestAddress(BUFS)).unwrap();
        assert_eq!(hdr[0], VIRTIO_NET_HDR_F_DATA_VALID as u8);
        assert_eq!(u32::from(hdr[1]), VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), 54, "hdr_len: all headers");
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1460);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
        // A guest without GUEST_TSO4 never gets one: refused, buffer returned.
        assert_eq!(
            push_rx_gso(&mut dq, &drv.mem, &frame, ALL, Some(1460)),
            Err(RxError::Dropped)
        );
        assert!(!ALL.offloads().tso4 && with.offloads().tso4 && with.offloads().tso6);
    }

    #[test]
    fn tx_frame_split_across_descriptors_loses_its_header() {
        let mut drv = Driver::new();
        let mut dq = drv.device_queue();
        drv.mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(BUFS)).unwrap();
        drv.mem.write_slice(b"abc", GuestAddress(BUFS + 0x1000)).unwrap();
        drv.mem.write_slice(b"defg", GuestAddress(BUFS + 0x2000)).unwrap();
        drv.offer(&[
            (BUFS, NET_HDR_LEN as u32, false),
            (BUFS + 0x1000, 3, false),
            (BUFS + 0x2000, 4, false),
        ]);
        let mut buf = [0u8; 64];
        assert_eq!(pop_tx(&mut dq, &drv.mem, &mut buf, ALL), Some(Ok((7, TxGso::None))));
        assert_eq!(&buf[..7], b"abcdefg");
        assert_eq!(drv.used_idx(), 1);
        assert_eq!(drv.used(0), (0, 0));
        assert_eq!(pop_tx(&mut dq, &drv.mem, &mut buf, ALL), None);
    }

    #[test]
    fn tx_bad_chains_are_dropped_and_returned() {
        let mut drv = Driver::new();
        let mut dq = drv.device_queue();
        let mut buf = [0u8; 32];
        // Too short for the header; device-writable; outside memory; too long.
        drv.offer(&[(BUFS, 4, false)]);
        drv.offer(&[(BUFS, 64, true)]);
        drv.offer(&[(0x7fff_0000_0000, 64, false)]);
        drv.offer(&[(BUFS, 4096, false)]);
        assert_eq!(pop_tx(&mut dq, &drv.mem, &mut buf, ALL), Some(Err(TxDrop::Malformed)));
        assert_eq!(pop_tx(&mut dq, &drv.mem, &mut buf, ALL), Some(Err(TxDrop::Malformed)));
        assert_eq!(pop_tx(&mut dq, &drv.mem, &mut buf, ALL), Some(Err(TxDrop::BadAddress)));
        assert_eq!(pop_tx(&mut dq, &drv.mem, &mut buf, ALL), Some(Err(TxDrop::TooLong)));
        assert_eq!(drv.used_idx(), 4);
        assert_eq!(pop_tx(&mut dq, &drv.mem, &mut buf, ALL), None);
    }

    #[test]
    fn tx_partial_checksum_is_completed() {
        // An IPv4/UDP packet whose checksum field holds the pseudo-header sum,
        // as Linux leaves it with CHECKSUM_PARTIAL.
        let mut frame = vec![0u8; 14 + 20 + 8 + 5];
        frame[14] = 0x45;
        frame[14 + 2..14 + 4].copy_from_slice(&33u16.to_be_bytes());
        frame[14 + 9] = 17;
        frame[14 + 12..14 + 16].copy_from_slice(&[10, 0, 2, 15]);
        frame[14 + 16..14 + 20].copy_from_slice(&[10, 0, 2, 2]);
        let udp = 14 + 20;
        frame[udp..udp + 2].copy_from_slice(&1234u16.to_be_bytes());
        frame[udp + 2..udp + 4].copy_from_slice(&53u16.to_be_bytes());
        frame[udp + 4..udp + 6].copy_from_slice(&13u16.to_be_bytes());
        frame[udp + 8..].copy_from_slice(b"hello");
        let pseudo: u32 = 0x0a00 + 0x020f + 0x0a00 + 0x0202 + 17 + 13;
        frame[udp + 6..udp + 8].copy_from_slice(&(pseudo as u16).to_be_bytes());
        complete_checksum(&mut frame, udp, 6).unwrap();
        let packet = smoltcp::wire::Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let datagram = smoltcp::wire::UdpPacket::new_checked(packet.payload()).unwrap();
        let (src, dst) = (packet.src_addr().into(), packet.dst_addr().into());
        assert!(datagram.verify_checksum(&src, &dst));
        // Offsets pointing past the frame are refused, not followed.
        assert_eq!(complete_checksum(&mut frame, udp, 4000), None);
        assert_eq!(complete_checksum(&mut frame, usize::MAX, 6), None);
    }

    #[test]
    fn rx_frame_merges_buffers_and_publishes_once() {
        let mut drv = Driver::new();
        let mut dq = drv.device_queue();
        for i in 0..4u64 {
            drv.offer(&[(BUFS + i * 0x1000, 100, true)]);
        }
        let frame: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        push_rx(&mut dq, &drv.mem, &frame, ALL).unwrap();
        // 12 + 250 bytes in buffers of 100: three of them, one index update.
        assert_eq!(drv.used_idx(), 3);
        assert_eq!(drv.used(0), (0, 100));
        assert_eq!(drv.used(2), (2, 62));
        let mut hdr = [0u8; NET_HDR_LEN];
        drv.mem.read_slice(&mut hdr, GuestAddress(BUFS)).unwrap();
        assert_eq!(hdr[0] as u32, VIRTIO_NET_HDR_F_DATA_VALID);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3);
        let mut got = vec![0u8; 250];
        drv.mem.read_slice(&mut got[..88], GuestAddress(BUFS + 12)).unwrap();
        drv.mem
            .read_slice(&mut got[88..188], GuestAddress(BUFS + 0x1000))
            .unwrap();
        drv.mem
            .read_slice(&mut got[188..], GuestAddress(BUFS + 0x2000))
            .unwrap();
        assert_eq!(got, frame);
    }

    #[test]
    fn rx_without_enough_buffers_keeps_them_for_later() {
        let mut drv = Driver::new();
        let mut dq = drv.device_queue();
        drv.offer(&[(BUFS, 100, true)]);
        let frame = [7u8; 150];
        assert_eq!(push_rx(&mut dq, &drv.mem, &frame, ALL), Err(RxError::NoBuffers));
        assert_eq!(drv.used_idx(), 0);
        drv.offer(&[(BUFS + 0x1000, 100, true)]);
        push_rx(&mut dq, &drv.mem, &frame, ALL).unwrap();
        assert_eq!(drv.used_idx(), 2);
        // Without MRG_RXBUF a frame must fit one buffer: dropped, buffer back.
        drv.offer(&[(BUFS, 100, true)]);
        let single = Negotiated {
            mrg_rxbuf: false,
            ..ALL
        };
        assert_eq!(push_rx(&mut dq, &drv.mem, &frame, single), Err(RxError::Dropped));
        assert_eq!(drv.used_idx(), 3);
        assert_eq!(drv.used(2), (2, 0));
        // A read-only buffer in the receive queue is a broken driver: dropped.
        drv.offer(&[(BUFS, 2000, false)]);
        assert_eq!(push_rx(&mut dq, &drv.mem, &frame, ALL), Err(RxError::Dropped));
        assert_eq!(drv.used_idx(), 4);
    }

    #[test]
    fn notification_follows_the_event_index() {
        let mut drv = Driver::new();
        let mut dq = drv.device_queue();
        dq.set_event_idx(true);
        let mut last = Wrapping(0);
        // used_event = 1: the driver wants to hear once the second buffer is used.
        drv.set_used_event(1);
        for _ in 0..3 {
            drv.offer(&[(BUFS, 1500, true)]);
        }
        push_rx(&mut dq, &drv.mem, &[1; 60], ALL).unwrap();
        assert!(!needs_notification(&dq, &drv.mem, &mut last));
        push_rx(&mut dq, &drv.mem, &[1; 60], ALL).unwrap();
        assert!(needs_notification(&dq, &drv.mem, &mut last));
        assert!(!needs_notification(&dq, &drv.mem, &mut last), "nothing new was used");
    }
}
