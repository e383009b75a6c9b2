//! The virtio-mmio transport (virtio 1.2, 4.2, version 2): a page of
//! registers per device, announced to Linux on the kernel command line
//! (`virtio_mmio.device=4K@0xd0000000:5`). The device behind it is a
//! [`VirtioDevice`]: the same queue logic ferry's vhost-user back ends
//! run, here called in-process on a queue notification.

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::hypervisor::IrqLine;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4652_5259; // "FRRY"

/// Device status bits the transport checks.
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DRIVER_OK: u32 = 4;
const INT_USED_BUFFER: u32 = 1;

/// A device's half of virtio: what it is and what it does with a queue.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 net, 19 vsock, 26 fs).
    fn device_type(&self) -> u32;
    /// Feature bits offered (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// The largest size of each queue.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Device config space bytes from `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver notified queue `index` (of `queues`, all of the
    /// device's); returns whether any buffer was used (the transport then
    /// raises its interrupt).
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool;
    /// Descriptors (with poll(2) events) whose readiness means the host
    /// side has something to move (sockets behind the device).
    fn host_fds(&self) -> Vec<(RawFd, i16)> {
        Vec::new()
    }
    /// Moves what the host side has into the guest's queues; returns
    /// whether any buffer was used.
    fn poll_host(&mut self, _queues: &mut [Queue], _mem: &GuestMemoryMmap) -> bool {
        false
    }
}

const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    interrupts: u64,
    irq: Option<Arc<dyn IrqLine>>,
}

fn set_half(v: &mut u64, high: bool, x: u32) {
    if high {
        *v = (*v & 0xffff_ffff) | (u64::from(x) << 32);
    } else {
        *v = (*v & !0xffff_ffff) | u64::from(x);
    }
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>) -> MmioTransport {
        let queues = device
            .queue_max_sizes()
            .into_iter()
            .filter_map(|max| Queue::new(max).ok())
            .collect();
        MmioTransport {
            device,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            interrupts: 0,
            irq: None,
        }
    }

    /// Raises `irq` whenever the device uses buffers (without one the
    /// driver polls the interrupt status register).
    pub fn with_irq(mut self, irq: Arc<dyn IrqLine>) -> MmioTransport {
        self.irq = Some(irq);
        self
    }

    fn used_buffers(&mut self) {
        self.interrupt_status |= INT_USED_BUFFER;
        self.interrupts += 1;
        if let Some(irq) = &self.irq {
            if let Err(e) = irq.pulse() {
                tracing::warn!("virtio-mmio: {e}");
            }
        }
    }

    fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
    }

    pub fn host_fds(&self) -> Vec<(RawFd, i16)> {
        if self.driver_ok() {
            self.device.host_fds()
        } else {
            Vec::new()
        }
    }

    /// Lets the device move host-side data into its queues.
    pub fn poll_host(&mut self, mem: &GuestMemoryMmap) {
        if self.driver_ok() && self.device.poll_host(&mut self.queues, mem) {
            self.used_buffers();
        }
    }

    /// Whether the device has raised its interrupt (used buffers) and the
    /// driver has not acknowledged it.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_status != 0
    }

    /// How many times the device has raised its interrupt.
    pub fn interrupts_raised(&self) -> u64 {
        self.interrupts
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn offered(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    /// A guest load from register `offset` (4 bytes, or config space).
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        let v: u32 = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR,
            0x010 => {
                let f = self.offered();
                if self.device_features_sel == 1 {
                    (f >> 32) as u32
                } else if self.device_features_sel == 0 {
                    f as u32
                } else {
                    0
                }
            }
            0x034 => self.selected().map_or(0, |q| u32::from(q.max_size())),
            0x044 => u32::from(self.selected().is_some_and(|q| q.ready())),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => 0,
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A guest store to register `offset`. Out-of-range values and
    /// accesses are ignored, as hardware would.
    pub fn write(&mut self, offset: u64, data: &[u8], mem: &GuestMemoryMmap) {
        if offset >= 0x100 || data.len() != 4 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let addr_part = |q: &mut Queue, which: u64, high: bool| {
            let (mut desc, mut avail, mut used) = (q.desc_table(), q.avail_ring(), q.used_ring());
            let target = match which {
                0 => &mut desc,
                1 => &mut avail,
                _ => &mut used,
            };
            set_half(target, high, v);
            let (d, a, u) = (desc, avail, used);
            q.set_desc_table_address(Some(d as u32), Some((d >> 32) as u32));
            q.set_avail_ring_address(Some(a as u32), Some((a >> 32) as u32));
            q.set_used_ring_address(Some(u as u32), Some((u >> 32) as u32));
        };
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 if self.driver_features_sel < 2 => {
                set_half(&mut self.driver_features, self.driver_features_sel == 1, v);
            }
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let Some(q) = self.selected() {
                    q.set_size(u16::try_from(v).unwrap_or(0));
                }
            }
            0x044 => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            0x050 => {
                let i = v as usize;
                let ready = self.queues.get(i).is_some_and(|q| q.ready());
                if self.driver_ok() && ready && self.device.process_queue(i, &mut self.queues, mem) {
                    self.used_buffers();
                }
            }
            0x064 => self.interrupt_status &= !v,
            0x070 => {
                if v == 0 {
                    // Reset.
                    self.status = 0;
                    self.driver_features = 0;
                    for q in &mut self.queues {
                        q.reset();
                    }
                } else if v & STATUS_FEATURES_OK != 0 && self.driver_features & !self.offered() != 0 {
                    // Features the device never offered: not OK.
                    self.status = v & !STATUS_FEATURES_OK;
                } else {
                    self.status = v;
                }
            }
            0x080 | 0x084 => {
                if let Some(q) = self.selected() {
                    addr_part(q, 0, offset == 0x084);
                }
            }
            0x090 | 0x094 => {
                if let Some(q) = self.selected() {
                    addr_part(q, 1, offset == 0x094);
                }
            }
            0x0a0 | 0x0a4 => {
                if let Some(q) = self.selected() {
                    addr_part(q, 2, offset == 0x0a4);
                }
            }
            _ => {}
        }
    }
}
