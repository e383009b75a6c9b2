//! ferry's devices for the in-process VMM, each the same device logic its
//! vhost-user back end runs: virtio-fs over [`ferry_fs::device::FsDevice`],
//! virtio-vsock over [`ferry_vsock::device::VsockDevice`] (virtio-net over
//! `ferry_net::virtio` is next).

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::virtio_mmio::VirtioDevice;

/// virtio-fs: queue 0 high priority, then request queues.
pub struct VirtioFs {
    device: ferry_fs::device::FsDevice,
    tag: String,
    request_queues: u16,
}

impl VirtioFs {
    pub fn new(device: ferry_fs::device::FsDevice, tag: &str, request_queues: u16) -> VirtioFs {
        VirtioFs {
            device,
            tag: tag.to_string(),
            request_queues: request_queues.max(1),
        }
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        26
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256; 1 + usize::from(self.request_queues)]
    }

    /// struct virtio_fs_config: tag[36], num_request_queues (le32).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 40];
        let tag = self.tag.as_bytes();
        config[..tag.len().min(36)].copy_from_slice(&tag[..tag.len().min(36)]);
        config[36..].copy_from_slice(&u32::from(self.request_queues).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        match self.device.process_queue(queue, mem) {
            Ok(used) => used,
            Err(e) => {
                tracing::warn!("virtio-fs: {e}");
                false
            }
        }
    }
}

/// virtio-vsock: queue 0 receive, 1 transmit, 2 events; host sockets as
/// Firecracker's hybrid vsock maps them.
pub struct VirtioVsock {
    device: ferry_vsock::device::VsockDevice,
}

impl VirtioVsock {
    pub fn new(device: ferry_vsock::device::VsockDevice) -> VirtioVsock {
        VirtioVsock { device }
    }

    /// Moves what host sockets have for the guest into its receive queue
    /// (the machine's event loop calls this when a host socket is ready).
    pub fn poll_host(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        self.device.poll_host();
        match queues.get_mut(0) {
            Some(rx) => self.device.fill_rx(rx, mem).unwrap_or(false),
            None => false,
        }
    }
}

impl VirtioDevice for VirtioVsock {
    fn device_type(&self) -> u32 {
        19
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256; 3]
    }

    /// struct virtio_vsock_config: guest_cid (le64).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.device.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        if index == 1 {
            if let Some(tx) = queues.get_mut(1) {
                used |= self.device.process_tx(tx, mem).unwrap_or(false);
            }
        }
        used | self.poll_host(queues, mem)
    }
}
