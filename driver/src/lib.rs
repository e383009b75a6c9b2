//! The guest's side of ferry's devices, for tests and benchmarks: what a
//! Linux guest's virtio drivers would do, small enough to drive a device
//! request by request.
//!
//! - [`split_queue`]: a split virtqueue the driver fills and the device
//!   consumes (portable; also used by in-process device tests).
//! - [`vhost_user`]: a vhost-user front end (what QEMU is to a back end):
//!   memfd guest memory, queues, kick and call eventfds.
//! - [`fuse`]: FUSE requests over a vhost-user-fs back end (ferry fs or
//!   virtiofsd).

pub mod split_queue;

#[cfg(target_os = "linux")]
pub mod fuse;
#[cfg(target_os = "linux")]
pub mod vhost_user;
