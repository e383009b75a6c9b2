//! The vhost-user-fs device: what QEMU's `-device vhost-user-fs-pci` talks
//! to. Queue 0 is the high-priority queue (FORGET, INTERRUPT), the rest
//! carry requests; each kick is answered by [`FsDevice`] on the worker
//! thread of the rust-vmm vhost-user-backend crate.

use std::io;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use crate::device::FsDevice;

const MAX_QUEUE_SIZE: usize = 1024;

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

struct FsBackend {
    device: Arc<FsDevice>,
    mem: Option<Memory>,
    event_idx: bool,
    queues: usize,
}

impl FsBackend {
    fn process(&self, vring: &VringRwLock<Memory>) -> io::Result<()> {
        let Some(mem) = &self.mem else {
            return Err(io::Error::other("a queue was kicked before guest memory was set"));
        };
        let mem = mem.memory();
        loop {
            if self.event_idx {
                let _ = vring.disable_notification();
            }
            let used = {
                let mut state = vring.get_mut();
                self.device.process_queue(state.get_queue_mut(), &mem)?
            };
            if used && vring.needs_notification().unwrap_or(true) {
                vring.signal_used_queue()?;
            }
            // With event index, re-arm and look again: requests that came
            // while notifications were off must not wait for the next kick.
            if !self.event_idx || !vring.enable_notification().unwrap_or(false) {
                return Ok(());
            }
        }
    }
}

impl VhostUserBackendMut for FsBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn update_memory(&mut self, mem: Memory) -> io::Result<()> {
        check_regions_backed(&mem.memory())?;
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        queue: u16,
        evset: EventSet,
        vrings: &[VringRwLock<Memory>],
        _thread: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event {evset:?} on queue {queue}")));
        }
        let vring = vrings
            .get(usize::from(queue))
            .ok_or_else(|| io::Error::other(format!("kick for queue {queue}, which does not exist")))?;
        self.process(vring)
    }
}

/// Refuses a memory table whose regions run past the end of the files
/// backing them: touching such a page would kill this process with SIGBUS
/// instead of failing one request.
fn check_regions_backed(mem: &GuestMemoryMmap) -> io::Result<()> {
    for region in mem.iter() {
        let Some(backing) = region.file_offset() else { continue };
        let meta = backing.file().metadata()?;
        let end = backing.start().saturating_add(region.len());
        if meta.is_file() && meta.len() < end {
            return Err(io::Error::other(format!(
                "memory region at guest address {:#x} claims {} bytes of a {}-byte file",
                region.start_addr().0,
                end,
                meta.len()
            )));
        }
    }
    Ok(())
}

/// Serves one vhost-user connection on `listener` (as virtiofsd does: the
/// process's job ends when its guest goes away).
pub fn serve(listener: &mut Listener, device: FsDevice, request_queues: usize) -> io::Result<()> {
    let backend = Arc::new(RwLock::new(FsBackend {
        device: Arc::new(device),
        mem: None,
        event_idx: false,
        queues: 1 + request_queues.max(1),
    }));
    let mut daemon = VhostUserDaemon::new(
        "ferry-fs".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| io::Error::other(format!("creating the vhost-user-fs device: {e}")))?;
    daemon
        .start(listener)
        .map_err(|e| io::Error::other(format!("accepting the vhost-user connection: {e}")))?;
    tracing::info!("vhost-user-fs front end connected");
    let result = daemon.wait();
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    match result {
        Ok(()) => Ok(()),
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(io::Error::other(format!("vhost-user-fs connection: {e}"))),
    }
}
