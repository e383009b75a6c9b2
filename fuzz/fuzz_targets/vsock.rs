//! virtio-vsock packets from a guest: connection requests to host
//! programs (one listens, on port 1024), data, credit updates, shutdowns
//! and resets, in any order; each packet through the device's transmit
//! queue, then the host side polled and the device's answers taken from
//! its receive queue.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;

use ferry_driver::split_queue::{Buffer, SplitQueue};
use ferry_vsock::device::VsockDevice;
use ferry_vsock::packet::HEADER_LEN;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PKT: u64 = 0x1_0000;
const RX: u64 = 0x3_0000;

struct Rig {
    dev: VsockDevice,
    mem: GuestMemoryMmap,
    /// The host program on port 1024: accepts and keeps its connections.
    host: std::os::unix::net::UnixListener,
    held: Vec<std::os::unix::net::UnixStream>,
}

thread_local! {
    // Leaked: a runtime dropped by a thread-local destructor at exit panics.
    static RIG: &'static RefCell<Option<Rig>> = Box::leak(Box::default());
}

fn rig() -> Rig {
    let dir = common::scratch_dir("vsock");
    let path = dir.join("v.sock");
    let dev = VsockDevice::new(3, &path).unwrap();
    let host = std::os::unix::net::UnixListener::bind(dir.join("v.sock_1024")).unwrap();
    host.set_nonblocking(true).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x5_0000)]).unwrap();
    Rig {
        dev,
        mem,
        host,
        held: Vec::new(),
    }
}

fn step(rig: &mut Rig, pkt: &[u8]) {
    let mut tx = SplitQueue::new(0, 4);
    if rig.mem.write_slice(pkt, GuestAddress(PKT)).is_err() {
        return;
    }
    // Header and payload in separate buffers, as Linux sends them.
    let split = pkt.len().min(HEADER_LEN);
    let mut bufs = vec![Buffer::readable(PKT, split as u32)];
    if pkt.len() > split {
        bufs.push(Buffer::readable(PKT + split as u64, (pkt.len() - split) as u32));
    }
    tx.offer(&rig.mem, &bufs).unwrap();
    let _ = rig.dev.process_tx(&mut tx.device_queue(), &rig.mem);
    while let Ok((s, _)) = rig.host.accept() {
        if rig.held.len() < 64 {
            rig.held.push(s);
        }
    }
    rig.dev.poll_host();
    let mut rx = SplitQueue::new(0x8000, 8);
    for i in 0..8 {
        rx.offer(&rig.mem, &[Buffer::writable(RX + i * 0x1000, 0x1000)])
            .unwrap();
    }
    let _ = rig.dev.fill_rx(&mut rx.device_queue(), &rig.mem);
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(rig);
        // Each packet its header plus the payload length the header gives.
        for pkt in common::messages(data, 16, 0x1_0000, |m| HEADER_LEN + common::le32(m, 24)) {
            step(rig, pkt);
        }
    });
});
