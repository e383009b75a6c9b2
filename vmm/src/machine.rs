//! A minimal machine around one vCPU: guest memory, virtio-mmio devices,
//! a serial port, a boot timer, and the ways a guest ends (Firecracker's
//! device set, as port I/O on x86_64).

use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use crate::hypervisor::{Result, Vcpu, VcpuExit};
use crate::virtio_mmio::MmioTransport;

/// COM1's transmit register; its line status register reads "empty".
pub const SERIAL_PORT: u16 = 0x3f8;
const SERIAL_LSR: u16 = 0x3fd;
const LSR_THR_EMPTY: u8 = 0x60;
/// The guest writes [`BOOT_TIMER_MAGIC`] here when it is up (guest-init
/// does, first thing); the machine records the time since start.
pub const BOOT_TIMER_PORT: u16 = 0x80;
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// The i8042 command port: 0xfe pulses the reset line.
const I8042_PORT: u16 = 0x64;
/// QEMU's isa-debug-exit convention: the byte written is an exit status.
pub const EXIT_PORT: u16 = 0x501;
/// Size of one virtio-mmio register window.
pub const MMIO_WINDOW: u64 = 0x1000;

/// Why [`Machine::run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// A byte written to [`EXIT_PORT`].
    Exit(u8),
    /// Triple fault or i8042 reset: the guest wants to reboot.
    Reset,
    /// The guest stopped with an error the VMM cannot handle.
    Error(String),
}

pub struct Machine {
    pub mem: GuestMemoryMmap,
    devices: Vec<(u64, MmioTransport)>,
    started: Instant,
    /// Everything the guest wrote to the serial port.
    pub serial: Vec<u8>,
    /// When the guest reported itself booted.
    pub boot_time: Option<Duration>,
}

impl Machine {
    pub fn new(mem: GuestMemoryMmap) -> Machine {
        Machine {
            mem,
            devices: Vec::new(),
            started: Instant::now(),
            serial: Vec::new(),
            boot_time: None,
        }
    }

    /// Places a virtio-mmio device's registers at `base`.
    pub fn add_device(&mut self, base: u64, transport: MmioTransport) {
        self.devices.push((base, transport));
    }

    pub fn device(&self, base: u64) -> Option<&MmioTransport> {
        self.devices.iter().find(|(b, _)| *b == base).map(|(_, t)| t)
    }

    fn mmio(&mut self, addr: u64) -> Option<(u64, &mut MmioTransport)> {
        self.devices
            .iter_mut()
            .find(|(base, _)| (*base..*base + MMIO_WINDOW).contains(&addr))
            .map(|(base, t)| (addr - *base, t))
    }

    /// Runs `vcpu` until the guest stops. `on_port` sees writes to ports
    /// the machine does not own and may end the run with a [`Stop`].
    pub fn run<C: Vcpu>(
        &mut self,
        vcpu: &mut C,
        on_port: &mut dyn FnMut(&mut Machine, u16, u8) -> Option<Stop>,
    ) -> Result<Stop> {
        loop {
            // Copy what an exit carries out of the vCPU's run area before
            // touching the machine.
            enum Next {
                Out(u16, u8),
                Write(u64, Vec<u8>),
                Stop(Stop),
                Again,
            }
            let next = match vcpu.run()? {
                VcpuExit::IoOut { port, data } => Next::Out(port, data.first().copied().unwrap_or(0)),
                VcpuExit::IoIn { port, data } => {
                    data.fill(if port == SERIAL_LSR { LSR_THR_EMPTY } else { 0 });
                    Next::Again
                }
                VcpuExit::MmioRead { addr, data } => {
                    let len = data.len();
                    let mut buf = vec![0u8; len];
                    if let Some((offset, t)) = self.mmio(addr) {
                        t.read(offset, &mut buf);
                    }
                    data.copy_from_slice(&buf);
                    Next::Again
                }
                VcpuExit::MmioWrite { addr, data } => Next::Write(addr, data.to_vec()),
                VcpuExit::Halt => Next::Again,
                VcpuExit::Shutdown => Next::Stop(Stop::Reset),
                VcpuExit::InternalError(e) => Next::Stop(Stop::Error(e)),
                VcpuExit::Other(what) if what == "interrupted" => Next::Again,
                VcpuExit::Other(what) => Next::Stop(Stop::Error(what)),
            };
            match next {
                Next::Out(SERIAL_PORT, b) => self.serial.push(b),
                Next::Out(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC) => {
                    let t = self.started.elapsed();
                    tracing::info!(ms = t.as_millis() as u64, "guest booted");
                    self.boot_time.get_or_insert(t);
                }
                Next::Out(I8042_PORT, 0xfe) => return Ok(Stop::Reset),
                Next::Out(EXIT_PORT, code) => return Ok(Stop::Exit(code)),
                Next::Out(port, b) => {
                    if let Some(stop) = on_port(self, port, b) {
                        return Ok(stop);
                    }
                }
                Next::Write(addr, data) => {
                    let Machine { mem, devices, .. } = self;
                    if let Some((base, t)) = devices.iter_mut().find(|(b, _)| (*b..*b + MMIO_WINDOW).contains(&addr)) {
                        t.write(addr - *base, &data, mem);
                    }
                }
                Next::Again => {}
                Next::Stop(stop) => return Ok(stop),
            }
        }
    }
}
