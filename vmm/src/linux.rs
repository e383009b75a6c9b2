//! Boots a Linux kernel in ferry's own VMM on KVM: guest RAM, the kernel
//! and initramfs loaded by [`crate::boot`], virtio-mmio devices announced
//! on the command line, the serial console, and a vCPU run until the guest
//! resets (ferry's guests reboot to end, as Firecracker's do) or writes an
//! exit code.

use std::path::PathBuf;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::boot::{self, LinuxBoot, MMIO_GAP_START};
use crate::hypervisor::kvm::KvmHypervisor;
use crate::hypervisor::{Hypervisor, HypervisorError, Vcpu, Vm};
use crate::machine::{Console, Irq, Machine, Stop, MMIO_WINDOW, SERIAL_IRQ};
use crate::virtio_mmio::{MmioTransport, VirtioDevice};

/// Interrupt lines for virtio-mmio devices: legacy lines a kernel without
/// ACPI or an MP table reaches through the PIC, skipping the timer (0),
/// keyboard (1), cascade (2), serial (3, 4) and RTC (8).
const DEVICE_IRQS: [u32; 9] = [5, 6, 7, 9, 10, 11, 12, 14, 15];

/// How often host-side device work runs without a socket event (vsock
/// credit updates, retries of a full receive queue).
const HOST_TICK: Duration = Duration::from_millis(20);

/// Kernel command-line words the built-in machine needs: its only console
/// is the 8250, it has no PCI, and a reboot resets through the i8042.
pub const MACHINE_CMDLINE: &str = "pci=off reboot=k i8042.noaux i8042.nomux i8042.dumbkbd 8250.nr_uarts=1";

pub struct LinuxVmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The command line without the devices (added here).
    pub cmdline: String,
    pub memory_mib: u32,
    pub devices: Vec<Box<dyn VirtioDevice>>,
    /// Where the serial console's output goes.
    pub console: Console,
    /// Runs once every host resource is open (kernel files read, KVM and
    /// the VM created) and before any thread starts: where a caller
    /// confines the process (the shares' mount namespace).
    pub confine: Option<Box<dyn FnOnce() -> std::io::Result<()> + Send>>,
}

#[derive(Debug)]
pub struct LinuxVmExit {
    pub stop: Stop,
    /// Time from start to guest-init's boot-timer write.
    pub boot_time: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0}")]
    Hypervisor(#[from] HypervisorError),
    #[error("{0}")]
    Boot(#[from] boot::BootError),
    #[error("--memory {0} MiB: the built-in VMM keeps guest RAM below 3.25 GiB (0xd0000000); ask for less")]
    TooMuchMemory(u32),
    #[error("--memory {0} MiB: a Linux guest needs at least 32 MiB")]
    TooLittleMemory(u32),
    #[error("{count} devices: the built-in VMM has interrupt lines for at most {max}")]
    TooManyDevices { count: usize, max: usize },
    #[error("confining the VMM to its shares: {0}")]
    Confine(std::io::Error),
    #[error("allocating {mib} MiB of guest memory: {reason}")]
    Memory { mib: u32, reason: String },
}

/// The virtio-mmio window of device `i` and the kernel's word for it.
pub fn device_slot(i: usize) -> Option<(u64, u32, String)> {
    let irq = *DEVICE_IRQS.get(i)?;
    let base = MMIO_GAP_START + MMIO_WINDOW * i as u64;
    Some((base, irq, format!("virtio_mmio.device=4K@{base:#x}:{irq}")))
}

/// Boots and runs the guest on this thread (devices' host sides on a
/// second) until it stops.
pub fn boot_linux(cfg: LinuxVmConfig) -> Result<LinuxVmExit, VmmError> {
    let size = u64::from(cfg.memory_mib) << 20;
    if size > MMIO_GAP_START {
        return Err(VmmError::TooMuchMemory(cfg.memory_mib));
    }
    if cfg.memory_mib < 32 {
        return Err(VmmError::TooLittleMemory(cfg.memory_mib));
    }
    if cfg.devices.len() > DEVICE_IRQS.len() {
        return Err(VmmError::TooManyDevices {
            count: cfg.devices.len(),
            max: DEVICE_IRQS.len(),
        });
    }
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).map_err(|e| VmmError::Memory {
            mib: cfg.memory_mib,
            reason: e.to_string(),
        })?;
    let mut cmdline = format!("{} {MACHINE_CMDLINE}", cfg.cmdline);
    for i in 0..cfg.devices.len() {
        if let Some((_, _, word)) = device_slot(i) {
            cmdline.push(' ');
            cmdline.push_str(&word);
        }
    }
    let loaded = boot::load_linux(
        &mem,
        &LinuxBoot {
            kernel: &cfg.kernel,
            initrd: cfg.initrd.as_deref(),
            cmdline: &cmdline,
        },
    )?;
    tracing::debug!(entry = loaded.entry.rip, kernel_end = loaded.kernel_end, ?loaded.initrd, %cmdline, "kernel loaded");

    let kvm = KvmHypervisor::open()?;
    let mut vm = kvm.create_vm()?;
    let host = vm_memory::GuestMemory::get_host_address(&mem, GuestAddress(0)).map_err(|e| VmmError::Memory {
        mib: cfg.memory_mib,
        reason: e.to_string(),
    })?;
    // SAFETY: `mem` lives until this function returns, after the vCPU and
    // VM (declared later, dropped first) are gone.
    unsafe { vm.map_memory(0, 0, host, size) }?;
    let mut vcpu = vm.create_vcpu(0)?;
    vcpu.enter_long_mode(&loaded.entry)?;

    if let Some(confine) = cfg.confine {
        confine().map_err(VmmError::Confine)?;
    }
    let serial_irq = vm.irq_line(SERIAL_IRQ)?;
    let mut machine = Machine::new(mem, cfg.console, Irq(Some(serial_irq)));
    for (i, device) in cfg.devices.into_iter().enumerate() {
        let (base, irq, _) = device_slot(i).ok_or(VmmError::TooManyDevices {
            count: i + 1,
            max: DEVICE_IRQS.len(),
        })?;
        let line = vm.irq_line(irq)?;
        machine.add_device(base, MmioTransport::new(device).with_irq(line));
    }
    let stop = std::thread::scope(|s| {
        let m = &machine;
        s.spawn(move || m.serve_host(HOST_TICK));
        machine.run(&mut vcpu, &mut |_, _, _| None)
    })?;
    let boot_time = machine.bus().boot_time;
    Ok(LinuxVmExit { stop, boot_time })
}
