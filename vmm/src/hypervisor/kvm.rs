//! The KVM backend: kvm-ioctls over `/dev/kvm`, with the in-kernel
//! interrupt controller.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit as KvmExit, VcpuFd, VmFd};

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{HypervisorError, IrqLine, LongModeEntry, Result, Vcpu, VcpuExit, Vm};

fn err(what: &str) -> impl FnOnce(kvm_ioctls::Error) -> HypervisorError + '_ {
    move |e| HypervisorError(format!("KVM {what}: {e}"))
}

pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm`.
    pub fn open() -> Result<KvmHypervisor> {
        let kvm = Kvm::new().map_err(|e| {
            HypervisorError(format!(
                "opening /dev/kvm: {e} (is KVM available and may this user use it?)"
            ))
        })?;
        Ok(KvmHypervisor { kvm })
    }
}

pub struct KvmVm {
    fd: VmFd,
    cpuid: kvm_bindings::CpuId,
}

impl super::Hypervisor for KvmHypervisor {
    type Vm = KvmVm;

    fn create_vm(&self) -> Result<KvmVm> {
        let fd = self.kvm.create_vm().map_err(err("creating a VM"))?;
        // The TSS needs three pages below 4 GiB that are not RAM; Intel's
        // VMX needs it for real-mode emulation (Firecracker's address).
        fd.set_tss_address(0xfffb_d000)
            .map_err(err("setting the TSS address"))?;
        fd.create_irq_chip()
            .map_err(err("creating the in-kernel interrupt controller"))?;
        // The i8254 timer, which Linux calibrates against; its speaker
        // port is a dummy.
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(err("creating the in-kernel PIT"))?;
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("reading supported CPUID"))?;
        Ok(KvmVm { fd, cpuid })
    }
}

impl Vm for KvmVm {
    type Vcpu = KvmVcpu;

    unsafe fn map_memory(&mut self, slot: u32, guest_addr: u64, host: *mut u8, len: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: len,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the caller guarantees the host range outlives the VM.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(err("mapping guest memory"))
    }

    fn create_vcpu(&mut self, id: u8) -> Result<KvmVcpu> {
        let fd = self.fd.create_vcpu(u64::from(id)).map_err(err("creating a vCPU"))?;
        fd.set_cpuid2(&self.cpuid).map_err(err("setting CPUID"))?;
        set_lint(&fd)?;
        // The FPU as after FNINIT, SSE exceptions masked (Linux expects
        // the state a BIOS leaves).
        let fpu = kvm_bindings::kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(err("setting the FPU state"))?;
        Ok(KvmVcpu { fd })
    }

    fn set_irq_line(&self, irq: u32, active: bool) -> Result<()> {
        self.fd.set_irq_line(irq, active).map_err(err("raising an interrupt"))
    }

    fn irq_line(&mut self, gsi: u32) -> Result<Arc<dyn IrqLine>> {
        let event = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| HypervisorError(format!("creating an eventfd for interrupt {gsi}: {e}")))?;
        self.fd
            .register_irqfd(&event, gsi)
            .map_err(err("registering an irqfd"))?;
        Ok(Arc::new(IrqFd(event)))
    }
}

/// Writing the eventfd makes KVM pulse the interrupt line in the kernel.
struct IrqFd(EventFd);

impl IrqLine for IrqFd {
    fn pulse(&self) -> Result<()> {
        self.0
            .write(1)
            .map_err(|e| HypervisorError(format!("raising an interrupt through its irqfd: {e}")))
    }
}

/// Local APIC LINT0 as ExtINT and LINT1 as NMI: the "virtual wire" a
/// BIOS sets up, through which the legacy PIC's interrupts reach a kernel
/// that finds no MP table or ACPI.
fn set_lint(fd: &VcpuFd) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_MODE_EXTINT: u32 = 7;
    const DELIVERY_MODE_NMI: u32 = 4;
    let mut lapic = fd.get_lapic().map_err(err("reading the local APIC"))?;
    let mut set = |offset: usize, mode: u32| {
        let reg = &mut lapic.regs[offset..offset + 4];
        let bytes: [u8; 4] = [reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8];
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (dst, b) in reg.iter_mut().zip(v.to_le_bytes()) {
            *dst = b as _;
        }
    };
    set(APIC_LVT0, DELIVERY_MODE_EXTINT);
    set(APIC_LVT1, DELIVERY_MODE_NMI);
    fd.set_lapic(&lapic).map_err(err("setting the local APIC"))
}

pub struct KvmVcpu {
    fd: VcpuFd,
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl Vcpu for KvmVcpu {
    fn enter_long_mode(&mut self, entry: &LongModeEntry) -> Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(err("reading special registers"))?;
        let code = segment(crate::x86_64::CODE_SELECTOR, true);
        let data = segment(crate::x86_64::DATA_SELECTOR, false);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = entry.gdt_base;
        sregs.gdt.limit = entry.gdt_limit;
        sregs.cr3 = entry.cr3;
        sregs.cr4 |= crate::x86_64::CR4_PAE;
        sregs.cr0 |= crate::x86_64::CR0_PE | crate::x86_64::CR0_PG;
        sregs.efer |= crate::x86_64::EFER_LME | crate::x86_64::EFER_LMA;
        self.fd.set_sregs(&sregs).map_err(err("setting special registers"))?;
        let mut regs = self.fd.get_regs().map_err(err("reading registers"))?;
        regs.rip = entry.rip;
        regs.rsp = entry.rsp;
        regs.rbp = entry.rsp;
        regs.rsi = entry.rsi;
        regs.rflags = 2;
        self.fd.set_regs(&regs).map_err(err("setting registers"))
    }

    fn run(&mut self) -> Result<VcpuExit<'_>> {
        Ok(match self.fd.run() {
            Ok(KvmExit::IoOut(port, data)) => VcpuExit::IoOut { port, data },
            Ok(KvmExit::IoIn(port, data)) => VcpuExit::IoIn { port, data },
            Ok(KvmExit::MmioRead(addr, data)) => VcpuExit::MmioRead { addr, data },
            Ok(KvmExit::MmioWrite(addr, data)) => VcpuExit::MmioWrite { addr, data },
            Ok(KvmExit::Hlt) => VcpuExit::Halt,
            Ok(KvmExit::Shutdown) => VcpuExit::Shutdown,
            Ok(KvmExit::InternalError) => VcpuExit::InternalError("KVM internal error".into()),
            Ok(KvmExit::FailEntry(reason, cpu)) => {
                VcpuExit::InternalError(format!("entry failed on vCPU {cpu}: hardware reason {reason:#x}"))
            }
            Ok(other) => VcpuExit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => VcpuExit::Other("interrupted".into()),
            Err(e) => return Err(HypervisorError(format!("KVM running the vCPU: {e}"))),
        })
    }
}
