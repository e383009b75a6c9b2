//! ferry's virtual machine side: the guest image, the kernel command line
//! guest-init reads, and the two ways to run a guest: ferry's own micro-VMM
//! ([`linux`], behind the [`hypervisor`] trait, devices in-process) and
//! the QEMU launcher ([`qemu`]).

pub mod accel;
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
