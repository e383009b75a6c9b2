//! The vhost-user-vsock device QEMU's `-device vhost-user-vsock-pci`
//! talks to. Queue kicks arrive on the vhost-user-backend worker thread,
//! which only wakes the device thread; that thread owns the
//! [`VsockDevice`] and polls the host sockets and the wake-up eventfd
//! together, so guest and host events are handled in one place.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::VsockDevice;

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

const RX: usize = 0;
const TX: usize = 1;

/// What the vhost-user side shares with the device thread.
struct Shared {
    mem: Mutex<Option<Memory>>,
    vrings: Mutex<Option<Vec<VringRwLock<Memory>>>>,
    wake: EventFd,
    stop: AtomicBool,
}

struct VsockBackend {
    shared: Arc<Shared>,
    config: [u8; 8],
}

impl VhostUserBackendMut for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        3
    }

    fn max_queue_size(&self) -> usize {
        256
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let start = (offset as usize).min(self.config.len());
        let end = start.saturating_add(size as usize).min(self.config.len());
        let mut out = self.config[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn update_memory(&mut self, mem: Memory) -> io::Result<()> {
        *self
            .shared
            .mem
            .lock()
            .map_err(|_| io::Error::other("vsock state poisoned"))? = Some(mem);
        self.shared.wake.write(1)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        _queue: u16,
        evset: EventSet,
        vrings: &[VringRwLock<Memory>],
        _thread: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event {evset:?}")));
        }
        let mut slot = self
            .shared
            .vrings
            .lock()
            .map_err(|_| io::Error::other("vsock state poisoned"))?;
        if slot.is_none() {
            *slot = Some(vrings.to_vec());
        }
        self.shared.wake.write(1)
    }
}

/// The device thread: guest queues and host sockets, until `stop`.
fn run_device(mut device: VsockDevice, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let fds = device.poll_fds();
        let mut pfds: Vec<libc::pollfd> = std::iter::once(libc::pollfd {
            fd: shared.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .chain(fds.iter().map(|f| libc::pollfd {
            fd: f.fd,
            events: (if f.read { libc::POLLIN } else { 0 }) | (if f.write { libc::POLLOUT } else { 0 }),
            revents: 0,
        }))
        .collect();
        // SAFETY: `pfds` is a valid array of pollfd for the call's duration.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 200) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            tracing::warn!("vsock: poll: {}", io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = shared.wake.read();
        let vrings = shared.vrings.lock().ok().and_then(|v| v.clone());
        let mem = shared.mem.lock().ok().and_then(|m| m.clone());
        let (Some(vrings), Some(mem)) = (vrings, mem) else {
            device.poll_host();
            continue;
        };
        let mem = mem.memory();
        let tx_used = device.process_tx(vrings[TX].get_mut().get_queue_mut(), &*mem);
        if matches!(tx_used, Ok(true)) {
            let _ = vrings[TX].signal_used_queue();
        }
        device.poll_host();
        if device.has_rx() {
            let rx_used = device.fill_rx(vrings[RX].get_mut().get_queue_mut(), &*mem);
            if matches!(rx_used, Ok(true)) {
                let _ = vrings[RX].signal_used_queue();
            }
        }
        if let Err(e) = tx_used {
            tracing::warn!("vsock: {e}");
        }
    }
}

/// Serves `device` to one vhost-user connection on `listener`; returns
/// when the guest goes away.
pub fn serve(listener: &mut Listener, device: VsockDevice) -> io::Result<()> {
    let shared = Arc::new(Shared {
        mem: Mutex::new(None),
        vrings: Mutex::new(None),
        wake: EventFd::new(EFD_NONBLOCK)?,
        stop: AtomicBool::new(false),
    });
    let backend = Arc::new(RwLock::new(VsockBackend {
        shared: shared.clone(),
        config: device.config(),
    }));
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || run_device(device, shared))?
    };
    let mut daemon = VhostUserDaemon::new(
        "ferry-vsock".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| io::Error::other(format!("creating the vhost-user-vsock device: {e}")))?;
    let result = daemon
        .start(listener)
        .map_err(|e| io::Error::other(format!("accepting the vhost-user connection: {e}")))
        .and_then(|()| {
            tracing::debug!("vhost-user-vsock front end connected");
            daemon.wait().or_else(|e| match e {
                vhost_user_backend::Error::HandleRequest(
                    vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
                ) => Ok(()),
                e => Err(io::Error::other(format!("vhost-user-vsock connection: {e}"))),
            })
        });
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    shared.stop.store(true, Ordering::Relaxed);
    let _ = shared.wake.write(1);
    let _ = thread.join();
    result
}
