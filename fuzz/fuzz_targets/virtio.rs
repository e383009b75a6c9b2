//! Virtqueues written by a hostile driver: the descriptor table, the
//! available ring and the buffers all come from the input (see
//! `common::queue_from`), for the net device (transmit and receive), the
//! fs device and the vsock device. The first byte picks the device and,
//! for net, the negotiated features.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;

use ferry_net::virtio::{offload_features, pop_tx, push_rx_gso, Negotiated};
use libfuzzer_sys::fuzz_target;

struct Devices {
    fs: ferry_fs::device::FsDevice,
    vsock: ferry_vsock::device::VsockDevice,
    _dir: std::path::PathBuf,
}

thread_local! {
    // Leaked: nothing runs at exit.
    static DEVICES: &'static RefCell<Option<Devices>> = Box::leak(Box::default());
}

fn devices() -> Devices {
    let dir = common::scratch_dir("virtio");
    std::fs::write(dir.join("file"), b"hello").unwrap();
    let fs = ferry_fs::device::FsDevice::new(&dir, &ferry_fs::FsOptions::default()).unwrap();
    let vsock = ferry_vsock::device::VsockDevice::new(3, &dir.join("vsock.sock")).unwrap();
    Devices { fs, vsock, _dir: dir }
}

/// A chain's worth of calls is enough: a ring index far ahead of the
/// device would otherwise replay the same 16 entries thousands of times.
const ROUNDS: usize = 2 * common::SIZE as usize;

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let (mem, mut q) = common::queue_from(data);
    // Bits 3-5: CSUM, GUEST_CSUM, MRG_RXBUF.
    let acked = [0, 1, 15]
        .iter()
        .enumerate()
        .filter(|(i, _)| which & (8 << i) != 0)
        .fold(0u64, |a, (_, bit)| a | 1 << bit);
    // Bit 6: every segmentation offload (TSO/USO both ways).
    let offloads = which & 0x40 != 0;
    let neg = Negotiated::from_acked(if offloads { acked | offload_features() } else { acked });
    match which & 7 {
        0 | 1 => {
            let mut buf = vec![0u8; 65550];
            for _ in 0..ROUNDS {
                if pop_tx(&mut q, &mem, &mut buf, neg).is_none() {
                    break;
                }
            }
        }
        2 | 3 => {
            // With offloads: a large frame sent whole with a segment size.
            let (max, size) = if offloads { (65549, Some(1448)) } else { (1514, None) };
            let frame = data.get(data.len().saturating_sub(max)..).unwrap_or(&[]);
            for _ in 0..4 {
                let _ = push_rx_gso(&mut q, &mem, frame, neg, size);
            }
        }
        4 | 5 => DEVICES.with(|d| {
            let mut d = d.borrow_mut();
            let d = d.get_or_insert_with(devices);
            let _ = d.fs.process_queue(&mut q, &mem);
        }),
        _ => DEVICES.with(|d| {
            let mut d = d.borrow_mut();
            let d = d.get_or_insert_with(devices);
            let _ = d.vsock.process_tx(&mut q, &mem);
            let (mem, mut rx) = common::queue_from(data);
            let _ = d.vsock.fill_rx(&mut rx, &mem);
        }),
    }
});
