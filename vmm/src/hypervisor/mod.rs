//! The seam between ferry's micro-VMM and the host's hypervisor: KVM on
//! Linux ([`kvm`]), Hypervisor.framework on macOS (see docs/macos.md).
//! A VM is guest memory plus vCPUs; a vCPU runs until the guest does
//! something the VMM must handle, reported as a [`VcpuExit`].

#[cfg(target_os = "linux")]
pub mod kvm;

use std::fmt;

/// Why a vCPU stopped running guest code.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// `out` to an I/O port.
    IoOut { port: u16, data: &'a [u8] },
    /// `in` from an I/O port: fill `data` before running again.
    IoIn { port: u16, data: &'a mut [u8] },
    /// A load from an address with no memory: fill `data`.
    MmioRead { addr: u64, data: &'a mut [u8] },
    /// A store to an address with no memory.
    MmioWrite { addr: u64, data: &'a [u8] },
    /// The guest executed `hlt`.
    Halt,
    /// Triple fault or explicit shutdown: the guest reset itself.
    Shutdown,
    /// The hypervisor could not run the guest further.
    InternalError(String),
    /// Something this VMM does not handle.
    Other(String),
}

#[derive(Debug)]
pub struct HypervisorError(pub String);

impl fmt::Display for HypervisorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HypervisorError {}

pub type Result<T> = std::result::Result<T, HypervisorError>;

/// Registers for a vCPU entering 64-bit code directly (no firmware), as
/// Firecracker boots: paging on with identity page tables at `cr3`, the
/// flat code/data segments of the GDT at `gdt_base`.
#[derive(Clone, Copy, Debug)]
pub struct LongModeEntry {
    pub rip: u64,
    pub rsp: u64,
    /// %rsi at entry (Linux's boot protocol: the boot_params address).
    pub rsi: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
}

/// A host hypervisor able to create VMs.
pub trait Hypervisor {
    type Vm: Vm;
    fn create_vm(&self) -> Result<Self::Vm>;
}

/// One VM: its memory and vCPUs.
pub trait Vm {
    type Vcpu: Vcpu;
    /// Makes `len` bytes at host address `host` the guest's memory at
    /// `guest_addr`.
    ///
    /// # Safety
    /// The host range must stay mapped and unused by anything that cannot
    /// tolerate the guest writing it, for the life of the VM.
    unsafe fn map_memory(&mut self, slot: u32, guest_addr: u64, host: *mut u8, len: u64) -> Result<()>;
    fn create_vcpu(&mut self, id: u8) -> Result<Self::Vcpu>;
    /// Asserts (`true`) or deasserts an interrupt line of the VM's
    /// interrupt controller.
    fn set_irq_line(&self, irq: u32, active: bool) -> Result<()>;
    /// A handle that raises interrupt `gsi` from any thread (KVM: an
    /// irqfd), for devices served off the vCPU thread.
    fn irq_line(&mut self, gsi: u32) -> Result<std::sync::Arc<dyn IrqLine>>;
}

/// An edge-triggered interrupt input of the VM.
pub trait IrqLine: Send + Sync {
    fn pulse(&self) -> Result<()>;
}

/// One virtual CPU.
pub trait Vcpu {
    /// Puts the vCPU in 64-bit mode at `entry.rip`.
    fn enter_long_mode(&mut self, entry: &LongModeEntry) -> Result<()>;
    /// Runs guest code until the next exit.
    fn run(&mut self) -> Result<VcpuExit<'_>>;
}
