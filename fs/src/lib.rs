//! ferry's file sharing: a virtio-fs device serving a host directory with
//! fuse-backend-rs's passthrough file system, behind a vhost-user socket
//! (a drop-in for virtiofsd). The request loop ([`device`]) knows nothing
//! of the transport, so the built-in VMM can run it over virtio-mmio.

pub mod idmap;
pub mod notify;
pub mod options;
pub mod secctx;
pub mod xattrmap;

#[cfg(target_os = "linux")]
pub mod device;
#[cfg(target_os = "linux")]
pub mod inject;
#[cfg(target_os = "linux")]
pub mod notifier;
#[cfg(target_os = "linux")]
pub mod sandbox;
#[cfg(target_os = "linux")]
pub mod translate;
#[cfg(target_os = "linux")]
pub mod vhost_user;
#[cfg(target_os = "linux")]
pub mod watch;

/// Every system call this crate makes after start-up, for
/// `ferry_confine::seccomp::install`.
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[&[libc::c_long]] = &[device::SYSCALLS, vhost_user::SYSCALLS, notifier::SYSCALLS];

pub use options::{CacheMode, FsOptions, InodeFileHandles, SandboxMode};
