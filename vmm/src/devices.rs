//! ferry's devices for the in-process VMM, each the same device logic its
//! vhost-user back end runs: virtio-fs over [`ferry_fs::device::FsDevice`],
//! virtio-vsock over [`ferry_vsock::device::VsockDevice`], virtio-net over
//! [`ferry_net::virtio`] on a link to the NAT's switch.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

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

    fn host_fds(&self) -> Vec<(RawFd, i16)> {
        self.device
            .poll_fds()
            .into_iter()
            .map(|p| {
                let mut events = 0;
                if p.read {
                    events |= libc::POLLIN;
                }
                if p.write {
                    events |= libc::POLLOUT;
                }
                (p.fd, events)
            })
            .collect()
    }

    fn poll_host(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        VirtioVsock::poll_host(self, queues, mem)
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

/// virtio-net: queue 0 receive, 1 transmit. Frames go to and come from
/// the NAT's switch over a stream socket with QEMU's framing (a 4-byte
/// big-endian length before each frame): the same front end QEMU's
/// `-netdev stream` uses, so `ferry net --listen-qemu` and `ferry run`'s
/// network serve it unchanged.
pub struct VirtioNet {
    link: UnixStream,
    mac: [u8; 6],
    tx_buf: Vec<u8>,
    /// Bytes read from the link not yet delivered as whole frames.
    rx_bytes: Vec<u8>,
}

/// Frames above this are garbage on the link, not something to buffer.
const MAX_FRAME: usize = 65_536;

impl VirtioNet {
    pub fn new(link: UnixStream, mac: [u8; 6]) -> std::io::Result<VirtioNet> {
        link.set_nonblocking(true)?;
        Ok(VirtioNet {
            link,
            mac,
            tx_buf: vec![0u8; MAX_FRAME],
            rx_bytes: Vec::new(),
        })
    }

    /// Writes one frame to the link, waiting for room if the network is
    /// behind (the guest's transmit queue is the backpressure).
    fn send(&mut self, len: usize) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&self.tx_buf[..len]);
        let mut done = 0;
        while done < out.len() {
            match self.link.write(&out[done..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut p = libc::pollfd {
                        fd: self.link.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one live pollfd.
                    unsafe { libc::poll(&mut p, 1, 100) };
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands whole frames read from the link to the guest's receive
    /// queue while it has buffers.
    fn deliver(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(rx) = queues.get_mut(0) else { return false };
        let neg = ferry_net::virtio::Negotiated::default();
        let mut used = false;
        let mut chunk = [0u8; 16384];
        loop {
            // Deliver what is buffered before reading more.
            while self.rx_bytes.len() >= 4 {
                let len = u32::from_be_bytes([self.rx_bytes[0], self.rx_bytes[1], self.rx_bytes[2], self.rx_bytes[3]])
                    as usize;
                if len > MAX_FRAME {
                    tracing::warn!(
                        len,
                        "virtio-net: the network sent an oversized frame; dropping the link's buffer"
                    );
                    self.rx_bytes.clear();
                    break;
                }
                if self.rx_bytes.len() < 4 + len {
                    break;
                }
                match ferry_net::virtio::push_rx(rx, mem, &self.rx_bytes[4..4 + len], neg) {
                    Ok(()) => used = true,
                    Err(ferry_net::virtio::RxError::NoBuffers) => return used,
                    // A chain the device cannot use is consumed and the
                    // frame dropped, as a NIC would.
                    Err(_) => used = true,
                }
                self.rx_bytes.drain(..4 + len);
            }
            if self.rx_bytes.len() > 4 + MAX_FRAME {
                return used;
            }
            match self.link.read(&mut chunk) {
                Ok(0) => return used,
                Ok(n) => self.rx_bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return used,
            }
        }
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
                match ferry_net::virtio::pop_tx(tx, mem, &mut self.tx_buf, neg) {
                    None => break,
                    // No offloads are offered here: every frame is whole.
                    Some(Ok((len, _))) => {
                        used = true;
                        if let Err(e) = self.send(len) {
                            tracing::warn!("virtio-net: the network link failed: {e}");
                        }
                    }
                    Some(Err(_)) => used = true,
                }
            }
        }
        used | self.deliver(queues, mem)
    }

    fn host_fds(&self) -> Vec<(RawFd, i16)> {
        vec![(self.link.as_raw_fd(), libc::POLLIN)]
    }

    fn poll_host(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        self.deliver(queues, mem)
    }
}
