//! ferry's virtual machine side: the guest image, the kernel command line
//! guest-init reads, and the two ways to run a guest: ferry's own micro-VMM
//! ([`linux`], behind the [`hypervisor`] trait, devices in-process) and
//! the QEMU launcher ([`qemu`]).

pub mod accel;

/// System calls of the running VMM (the seccomp allow-list of `ferry vmm`,
/// with the devices' lists): KVM_RUN and the other KVM requests are
/// ioctls, the host-side device loop polls its sockets.
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_ioctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_clock_nanosleep,
];

#[cfg(target_arch = "x86_64")]
pub mod boot;
pub mod cmdline;
pub mod console;
#[cfg(target_os = "linux")]
pub mod devices;
pub mod hypervisor;
pub mod image;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod linux;
pub mod machine;
pub mod qemu;
pub mod virtio_mmio;
pub mod x86_64;

pub use accel::AccelChoice;
pub use cmdline::GuestCmdline;
pub use image::{GuestImage, ImageSpec, Kernel};
pub use qemu::{Accel, GuestExit, QemuConfig, VmProcess};
