//! The KVM backend: kvm-ioctls over `/dev/kvm`, with the in-kernel
//! interrupt controller.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit as KvmExit, VcpuFd, VmFd};

use super::{HypervisorError, LongModeEntry, Result, Vcpu, VcpuExit, Vm};

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
        fd.create_irq_chip()
            .map_err(err("creating the in-kernel interrupt controller"))?;
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
        Ok(KvmVcpu { fd })
    }

    fn set_irq_line(&self, irq: u32, active: bool) -> Result<()> {
        self.fd.set_irq_line(irq, active).map_err(err("raising an interrupt"))
    }
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
