//! vhost-user control messages from a front end (QEMU, libvirt,
//! cloud-hypervisor) to ferry's vhost-user-fs back end: each input is the
//! byte stream of one connection, sent and then half-closed, while
//! `ferry_fs::vhost_user::serve` handles it exactly as the `ferry fs`
//! and virtiofsd modes do. No descriptors travel with the bytes, so
//! messages that need them (memory tables, kick and call eventfds) take
//! their error paths.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::Listener;

thread_local! {
    static DIR: PathBuf = common::scratch_dir("vhost-user");
}

/// This process's open eventfds.
fn eventfds() -> std::collections::BTreeSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:[eventfd]"))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    DIR.with(|dir| {
        let sock = dir.join("fs.sock");
        let Ok(mut listener) = Listener::new(&sock, true) else {
            return;
        };
        let before = eventfds();
        let input = data.to_vec();
        let front = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            let _ = s.write_all(&input);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        let device = ferry_fs::device::FsDevice::new(dir, &ferry_fs::FsOptions::default()).unwrap();
        let _ = ferry_fs::vhost_user::serve(&mut listener, device, 1, 0);
        front.join().unwrap();
        // vhost-user-backend 0.21 leaks the exit eventfd of each connection's
        // worker (event_loop.rs hands it to epoll with into_raw_fd and never
        // closes it). ferry fs serves one front end per process, so only this
        // loop notices; close what the connection left so the run lasts.
        for fd in eventfds().difference(&before) {
            // SAFETY: an eventfd this iteration's back end opened and leaked;
            // its worker has been told to exit and nothing else refers to it.
            unsafe { libc::close(*fd) };
        }
    });
});
