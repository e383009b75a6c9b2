//! virtio-vsock for ferry: the guest's vsock sockets reach the host as
//! unix sockets, the way Firecracker's "hybrid vsock" maps them:
//!
//! - guest connects to the host (CID 2), port P: the device connects to
//!   the unix socket `UDS_PATH_P`;
//! - a host program connects to `UDS_PATH`, writes `CONNECT P\n`, and once
//!   the guest accepts, reads `OK HOSTPORT\n` and then talks to guest
//!   port P.
//!
//! [`device`] is the transport-independent device (virtio-queue and
//! vm-memory only), so the built-in VMM can run it over virtio-mmio;
//! [`vhost_user`] serves it to QEMU's `vhost-user-vsock-pci`.

pub mod device;
pub mod packet;

/// System calls of the device's host side once a VM runs (the seccomp
/// allow-list of `ferry vmm`): host programs accepted on the device's
/// socket, guest connections dialled to `UDS_PATH_P`.
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_shutdown,
];

#[cfg(target_os = "linux")]
pub mod vhost_user;

/// The host's address on the vsock network.
pub const HOST_CID: u64 = 2;
