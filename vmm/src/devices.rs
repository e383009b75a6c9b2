//! ferry's devices for the in-process VMM, each the same device logic its
//! vhost-user back end runs: virtio-fs over [`ferry_fs::device::FsDevice`],
//! virtio-vsock over [`ferry_vsock::device::VsockDevice`], virtio-net over
//! [`ferry_net::virtio`] and the NAT's switch.

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

/// Frames the NAT sends to this guest, waiting for its receive buffers.
struct NetPort {
    out: std::cell::RefCell<std::collections::VecDeque<Vec<u8>>>,
}

const NET_BACKLOG: usize = 256;

impl ferry_net::Frontend for NetPort {
    fn poll_recv(&self, _cx: &mut std::task::Context<'_>, _buf: &mut [u8]) -> std::task::Poll<std::io::Result<usize>> {
        // Transmitted frames are handed to the stack on the queue
        // notification itself.
        std::task::Poll::Pending
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut out = self.out.borrow_mut();
        if out.len() >= NET_BACKLOG {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        out.push_back(frame.to_vec());
        Ok(())
    }

    fn name(&self) -> &str {
        "virtio-mmio-net"
    }
}

/// virtio-net: queue 0 receive, 1 transmit, on a port of the NAT's switch.
pub struct VirtioNet {
    stack: ferry_net::StackRef,
    port: ferry_net::switch::PortId,
    frames: std::rc::Rc<NetPort>,
    mac: [u8; 6],
    buf: Vec<u8>,
}

impl VirtioNet {
    pub fn new(stack: ferry_net::StackRef, mac: [u8; 6]) -> VirtioNet {
        let frames = std::rc::Rc::new(NetPort {
            out: Default::default(),
        });
        let port = stack.borrow_mut().add_port(frames.clone());
        VirtioNet {
            stack,
            port,
            frames,
            mac,
            buf: vec![0u8; 65536],
        }
    }

    /// Hands frames the NAT has for the guest to its receive queue.
    pub fn deliver(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(rx) = queues.get_mut(0) else { return false };
        let mut used = false;
        let neg = ferry_net::virtio::Negotiated::default();
        loop {
            let Some(frame) = self.frames.out.borrow_mut().pop_front() else {
                break;
            };
            match ferry_net::virtio::push_rx(rx, mem, &frame, neg) {
                Ok(()) => used = true,
                Err(ferry_net::virtio::RxError::NoBuffers) => {
                    self.frames.out.borrow_mut().push_front(frame);
                    break;
                }
                Err(_) => used = true,
            }
        }
        used
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        1
    }

    /// VIRTIO_NET_F_MAC.
    fn features(&self) -> u64 {
        1 << 5
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 256]
    }

    /// struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[6] = 1; // VIRTIO_NET_S_LINK_UP
        config[8] = 1;
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        if index == 1 {
            let neg = ferry_net::virtio::Negotiated::default();
            while let Some(tx) = queues.get_mut(1) {
                match ferry_net::virtio::pop_tx(tx, mem, &mut self.buf, neg) {
                    None => break,
                    Some(Ok(len)) => {
                        used = true;
                        let mut stack = self.stack.borrow_mut();
                        stack.ingress_frame(self.port, &self.buf[..len]);
                        stack.poll();
                    }
                    Some(Err(_)) => used = true,
                }
            }
        }
        used | self.deliver(queues, mem)
    }
}
