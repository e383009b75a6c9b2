//! FUSE requests from a guest through the fs device (`FsDevice`, the code
//! virtiofsd's drop-in and `ferry run` serve shares with), on a share in a
//! scratch directory. The input is a sequence of requests, each as long as
//! its header's `len` says (the rest when shorter), so a run can look a
//! name up, open it and read the handle it got.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;

use ferry_driver::split_queue::{Buffer, SplitQueue};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const REQ: u64 = 0x1_0000;
const REPLY: u64 = 0x3_0000;
const REPLY_LEN: u32 = 0x2_0000;

struct Rig {
    fs: ferry_fs::device::FsDevice,
    mem: GuestMemoryMmap,
}

thread_local! {
    // Leaked: a runtime dropped by a thread-local destructor at exit panics.
    static RIG: &'static RefCell<Option<Rig>> = Box::leak(Box::default());
}

fn init_request() -> Vec<u8> {
    // fuse_in_header (40 bytes) + fuse_init_in (7.36: 64 bytes).
    let mut r = vec![0u8; 104];
    r[..4].copy_from_slice(&104u32.to_le_bytes());
    r[4..8].copy_from_slice(&26u32.to_le_bytes()); // FUSE_INIT
    r[8..16].copy_from_slice(&1u64.to_le_bytes());
    r[40..44].copy_from_slice(&7u32.to_le_bytes());
    r[44..48].copy_from_slice(&38u32.to_le_bytes());
    r[48..52].copy_from_slice(&(128u32 << 10).to_le_bytes());
    r[52..56].copy_from_slice(&u32::MAX.to_le_bytes()); // every flag offered
    r[56..60].copy_from_slice(&u32::MAX.to_le_bytes()); // flags2
    r
}

fn rig() -> Rig {
    let dir = common::scratch_dir("fuse");
    std::fs::create_dir(dir.join("dir")).unwrap();
    std::fs::write(dir.join("dir/file"), b"hello, fuse").unwrap();
    std::os::unix::fs::symlink("dir/file", dir.join("link")).unwrap();
    let opts = ferry_fs::FsOptions {
        xattr: true,
        ..Default::default()
    };
    let fs = ferry_fs::device::FsDevice::new(&dir, &opts).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x6_0000)]).unwrap();
    let rig = Rig { fs, mem };
    send(&rig, &init_request());
    rig
}

/// One request on a fresh queue: a readable buffer, a writable one.
fn send(rig: &Rig, req: &[u8]) {
    let mut q = SplitQueue::new(0, 4);
    if rig.mem.write_slice(req, GuestAddress(REQ)).is_err() {
        return;
    }
    let bufs = [
        Buffer::readable(REQ, req.len() as u32),
        Buffer::writable(REPLY, REPLY_LEN),
    ];
    q.offer(&rig.mem, &bufs).unwrap();
    let mut dq = q.device_queue();
    let _ = rig.fs.process_queue(&mut dq, &rig.mem);
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(rig);
        // Each request as long as its header's `len` (the rest if shorter).
        let len_of = |m: &[u8]| if m.len() >= 4 { common::le32(m, 0) } else { m.len() };
        for req in common::messages(data, 16, 0x2_0000, len_of) {
            send(rig, req);
        }
    });
});
