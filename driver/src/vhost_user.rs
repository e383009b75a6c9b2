//! A vhost-user front end: connects to a back end's socket, hands it a
//! memfd as guest memory and sets up its queues, as QEMU does for
//! `-device vhost-user-*-pci`. Requests then go through [`SplitQueue`]s in
//! that memory; kicks and interrupts are eventfds.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::split_queue::{Buffer, SplitQueue};

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const QUEUE_SIZE: u16 = 256;

/// A connected vhost-user device with its guest memory and queues.
pub struct VhostUserDevice {
    frontend: Frontend,
    mem: GuestMemoryMmap,
    queues: Vec<QueueHandle>,
    /// First guest address after the queues: the caller's buffers go here.
    pub data_start: u64,
}

struct QueueHandle {
    ring: SplitQueue,
    kick: EventFd,
    call: EventFd,
}

fn vhost_err(what: &str) -> impl FnOnce(vhost::Error) -> io::Error + '_ {
    move |e| io::Error::other(format!("vhost-user {what}: {e}"))
}

/// A memfd of `size` bytes to serve as shared guest memory.
fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: memfd_create with a static NUL-terminated name; the result
    // is checked before use.
    let fd = unsafe { libc::memfd_create(c"ferry-driver-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

impl VhostUserDevice {
    /// Connects to `socket`, negotiates `features` (besides VERSION_1 and
    /// PROTOCOL_FEATURES) and starts `queues` queues over `mem_size` bytes
    /// of guest memory.
    pub fn connect(socket: &Path, queues: usize, mem_size: u64, features: u64) -> io::Result<VhostUserDevice> {
        Self::connect_advertising(socket, queues, mem_size, mem_size, features)
    }

    /// As [`connect`](Self::connect), but tells the back end the memory is
    /// `advertised` bytes long (a lie, when it differs: for tests of back
    /// ends facing a hostile front end).
    pub fn connect_advertising(
        socket: &Path,
        queues: usize,
        mem_size: u64,
        advertised: u64,
        features: u64,
    ) -> io::Result<VhostUserDevice> {
        let mut frontend = Frontend::connect(socket, queues as u64).map_err(vhost_err("connect"))?;
        frontend.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let wanted = VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | features;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(io::Error::other(format!(
                "back end offers no VIRTIO_F_VERSION_1 ({offered:#x})"
            )));
        }
        frontend
            .set_features(offered & wanted)
            .map_err(vhost_err("SET_FEATURES"))?;
        if offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let proto = frontend
                .get_protocol_features()
                .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
            frontend
                .set_protocol_features(proto & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG))
                .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
        }

        let file = memfd(mem_size)?;
        let region_fd = file.as_raw_fd();
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            mem_size as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| io::Error::other(format!("mapping guest memory: {e}")))?;
        let host_base = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| io::Error::other(format!("guest memory address: {e}")))? as u64;
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: advertised,
            userspace_addr: host_base,
            mmap_offset: 0,
            mmap_handle: region_fd,
        };
        frontend.set_mem_table(&[info]).map_err(vhost_err("SET_MEM_TABLE"))?;

        let mut handles = Vec::with_capacity(queues);
        let step = SplitQueue::footprint(QUEUE_SIZE);
        for q in 0..queues {
            let ring = SplitQueue::new(step * q as u64, QUEUE_SIZE);
            let (desc, avail, used) = ring.addresses();
            let kick = EventFd::new(EFD_NONBLOCK)?;
            let call = EventFd::new(EFD_NONBLOCK)?;
            frontend
                .set_vring_num(q, QUEUE_SIZE)
                .map_err(vhost_err("SET_VRING_NUM"))?;
            let config = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: host_base + desc,
                used_ring_addr: host_base + used,
                avail_ring_addr: host_base + avail,
                log_addr: None,
            };
            frontend
                .set_vring_addr(q, &config)
                .map_err(vhost_err("SET_VRING_ADDR"))?;
            frontend.set_vring_base(q, 0).map_err(vhost_err("SET_VRING_BASE"))?;
            frontend.set_vring_call(q, &call).map_err(vhost_err("SET_VRING_CALL"))?;
            frontend.set_vring_kick(q, &kick).map_err(vhost_err("SET_VRING_KICK"))?;
            if offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                frontend
                    .set_vring_enable(q, true)
                    .map_err(vhost_err("SET_VRING_ENABLE"))?;
            }
            handles.push(QueueHandle { ring, kick, call });
        }
        // The messages above have no replies: the back end may still be
        // working through them. A message that has one returns only after
        // they are done, so a first kick cannot find a queue not yet enabled.
        frontend.get_features().map_err(vhost_err("GET_FEATURES"))?;
        Ok(VhostUserDevice {
            frontend,
            mem,
            queues: handles,
            data_start: step * queues as u64,
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Offers a chain on queue `q` and kicks the back end; returns the head.
    pub fn submit(&mut self, q: usize, bufs: &[Buffer]) -> io::Result<u16> {
        let handle = &mut self.queues[q];
        let head = handle
            .ring
            .offer(&self.mem, bufs)
            .map_err(|e| io::Error::other(format!("writing the queue: {e}")))?;
        handle.kick.write(1)?;
        Ok(head)
    }

    /// Waits up to `timeout` for the back end to return a chain on queue
    /// `q`; returns (head, bytes written).
    pub fn complete(&mut self, q: usize, timeout: Duration) -> io::Result<(u32, u32)> {
        let handle = &mut self.queues[q];
        loop {
            if let Some(used) = handle.ring.pop_used(&self.mem) {
                return Ok(used);
            }
            let mut pfd = libc::pollfd {
                fd: handle.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd on the stack for the call's duration.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                // One last look: a back end that does not signal (or
                // signals late) still may have answered.
                return handle.ring.pop_used(&self.mem).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no reply on queue {q} within {timeout:?}"),
                    )
                });
            }
            let _ = handle.call.read();
        }
    }

    /// The control connection, for tests that send their own messages.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }
}
