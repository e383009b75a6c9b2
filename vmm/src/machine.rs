//! A minimal machine around one vCPU: guest memory, virtio-mmio devices,
//! an 8250 serial port, a boot timer, and the ways a guest ends
//! (Firecracker's device set, as port I/O on x86_64).
//!
//! The devices sit on a [`Bus`] behind a mutex: the vCPU thread takes it
//! for each port or MMIO exit, and a host-event thread ([`Machine::serve_host`])
//! takes it when a device's host side (a socket) has something for the
//! guest.

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::hypervisor::{IrqLine, Result, Vcpu, VcpuExit};
use crate::virtio_mmio::MmioTransport;

/// COM1: eight registers from here, interrupt 4.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
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
    /// Triple fault or i8042 reset: the guest wants to reboot (ferry's
    /// guests reboot to end, as Firecracker's do).
    Reset,
    /// The guest stopped with an error the VMM cannot handle.
    Error(String),
}

/// Raises an interrupt line when the serial port asks (vm-superio's
/// trigger); without a line (tests that poll) it does nothing.
pub struct Irq(pub Option<Arc<dyn IrqLine>>);

impl vm_superio::Trigger for Irq {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        match &self.0 {
            Some(line) => line.pulse().map_err(std::io::Error::other),
            None => Ok(()),
        }
    }
}

/// What the serial port's output is written to.
pub type Console = Box<dyn Write + Send>;

/// The machine's devices.
pub struct Bus {
    serial: Serial<Irq, NoEvents, Console>,
    devices: Vec<(u64, MmioTransport)>,
    started: Instant,
    /// When the guest reported itself booted.
    pub boot_time: Option<Duration>,
}

impl Bus {
    fn mmio(&mut self, addr: u64) -> Option<(u64, &mut MmioTransport)> {
        self.devices
            .iter_mut()
            .find(|(base, _)| (*base..*base + MMIO_WINDOW).contains(&addr))
            .map(|(base, t)| (addr - *base, t))
    }

    pub fn device(&self, base: u64) -> Option<&MmioTransport> {
        self.devices.iter().find(|(b, _)| *b == base).map(|(_, t)| t)
    }
}

/// Serial output kept in memory (tests read it back).
#[derive(Clone, Default)]
pub struct CapturedOutput(Arc<Mutex<Vec<u8>>>);

impl CapturedOutput {
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Write for CapturedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Machine {
    pub mem: GuestMemoryMmap,
    bus: Arc<Mutex<Bus>>,
    stopped: Arc<AtomicBool>,
}

impl Machine {
    /// A machine whose serial output goes to `console` and raises `irq`.
    pub fn new(mem: GuestMemoryMmap, console: Console, serial_irq: Irq) -> Machine {
        Machine {
            mem,
            bus: Arc::new(Mutex::new(Bus {
                serial: Serial::new(serial_irq, console),
                devices: Vec::new(),
                started: Instant::now(),
                boot_time: None,
            })),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The devices; poisoning is ignored (a device panic is already a bug
    /// reported on its own thread).
    pub fn bus(&self) -> MutexGuard<'_, Bus> {
        self.bus.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places a virtio-mmio device's registers at `base`.
    pub fn add_device(&mut self, base: u64, transport: MmioTransport) {
        self.bus().devices.push((base, transport));
    }

    /// Serves the devices' host sides until the vCPU loop stops: waits for
    /// any of their host descriptors (or `tick`, for timers) and lets each
    /// device move what is ready into the guest's queues.
    pub fn serve_host(&self, tick: Duration) {
        while !self.stopped.load(Ordering::Relaxed) {
            let fds: Vec<(RawFd, i16)> = self.bus().devices.iter().flat_map(|(_, t)| t.host_fds()).collect();
            let mut polls: Vec<libc::pollfd> = fds
                .iter()
                .map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 })
                .collect();
            let ms = tick.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: `polls` is a live, correctly sized array of pollfd.
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
            let mut bus = self.bus();
            for (_, t) in bus.devices.iter_mut() {
                t.poll_host(&self.mem);
            }
        }
    }

    /// Runs `vcpu` until the guest stops. `on_port` sees writes to ports
    /// the machine does not own and may end the run with a [`Stop`].
    pub fn run<C: Vcpu>(
        &self,
        vcpu: &mut C,
        on_port: &mut dyn FnMut(&Machine, u16, u8) -> Option<Stop>,
    ) -> Result<Stop> {
        let stop = self.run_vcpu(vcpu, on_port);
        self.stopped.store(true, Ordering::Relaxed);
        stop
    }

    fn run_vcpu<C: Vcpu>(
        &self,
        vcpu: &mut C,
        on_port: &mut dyn FnMut(&Machine, u16, u8) -> Option<Stop>,
    ) -> Result<Stop> {
        let serial_ports = SERIAL_PORT..SERIAL_PORT + 8;
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
                    let v = if serial_ports.contains(&port) {
                        self.bus().serial.read((port - SERIAL_PORT) as u8)
                    } else if port == I8042_PORT {
                        // Input buffer empty: Linux's reset path waits for it.
                        0
                    } else {
                        // Nothing here: a floating bus reads all ones.
                        0xff
                    };
                    data.fill(0);
                    if let Some(b) = data.first_mut() {
                        *b = v;
                    }
                    Next::Again
                }
                VcpuExit::MmioRead { addr, data } => {
                    data.fill(0);
                    if let Some((offset, t)) = self.bus().mmio(addr) {
                        t.read(offset, data);
                    }
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
                Next::Out(port, b) if serial_ports.contains(&port) => {
                    if let Err(e) = self.bus().serial.write((port - SERIAL_PORT) as u8, b) {
                        tracing::debug!("serial: {e:?}");
                    }
                }
                Next::Out(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC) => {
                    let mut bus = self.bus();
                    let t = bus.started.elapsed();
                    tracing::info!(ms = t.as_millis() as u64, "guest booted");
                    bus.boot_time.get_or_insert(t);
                }
                Next::Out(I8042_PORT, 0xfe) => return Ok(Stop::Reset),
                Next::Out(EXIT_PORT, code) => return Ok(Stop::Exit(code)),
                Next::Out(port, b) => {
                    if let Some(stop) = on_port(self, port, b) {
                        return Ok(stop);
                    }
                }
                Next::Write(addr, data) => {
                    if let Some((offset, t)) = self.bus().mmio(addr) {
                        t.write(offset, &data, &self.mem);
                    }
                }
                Next::Again => {}
                Next::Stop(stop) => return Ok(stop),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's 8250 driver probes the UART before using it: the scratch
    /// register must hold a value, IER must keep what is written, and the
    /// line status must show the transmitter empty.
    #[test]
    fn the_serial_port_answers_linuxs_probe_and_collects_output() {
        let out = CapturedOutput::default();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap();
        let machine = Machine::new(mem, Box::new(out.clone()), Irq(None));
        let mut bus = machine.bus();
        bus.serial.write(7, 0xa5).unwrap();
        assert_eq!(bus.serial.read(7), 0xa5, "scratch register");
        bus.serial.write(1, 0x0f).unwrap();
        assert_eq!(bus.serial.read(1) & 0x0f, 0x0f, "IER keeps its bits");
        assert_eq!(bus.serial.read(5) & 0x60, 0x60, "THR and transmitter empty");
        for b in b"hi\n" {
            bus.serial.write(0, *b).unwrap();
        }
        assert_eq!(out.contents(), b"hi\n");
    }
}
