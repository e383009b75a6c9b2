//! The vhost-user-fs device: what QEMU's `-device vhost-user-fs-pci` talks
//! to. Queue 0 is the high-priority queue (FORGET, INTERRUPT), the rest
//! carry requests; each kick is answered by [`FsDevice`] on the worker
//! thread of the rust-vmm vhost-user-backend crate.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use crate::device::FsDevice;

/// System calls of the vhost-user connection (the front end's messages,
/// the guest memory it hands over, the queues' eventfds).
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
];

const MAX_QUEUE_SIZE: usize = 1024;

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

struct FsBackend {
    device: Arc<FsDevice>,
    mem: Option<Memory>,
    event_idx: bool,
    queues: usize,
    /// `--thread-pool-size N`: requests are answered by N worker threads
    /// (blocking I/O on one file no longer holds up the rest); none: on the
    /// queue's own thread, which is faster when requests come one by one.
    pool: Option<Pool>,
}

/// One request handed to a pool worker: the chain, the memory it lives in
/// and the queue to return it to.
struct Job {
    chain: DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>,
    mem: GuestMemoryLoadGuard<GuestMemoryMmap>,
    vring: VringRwLock<Memory>,
}

struct Pool {
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    fn start(size: usize, device: Arc<FsDevice>) -> io::Result<Pool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..size {
            let (queue, device) = (queue.clone(), device.clone());
            std::thread::Builder::new()
                .name(format!("fs-worker-{n}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(Job { chain, mem, vring }) = job else { return };
                    let head = chain.head_index();
                    let len = device.handle_chain(&mem, chain);
                    if let Err(e) = vring.add_used(head, len) {
                        tracing::warn!("returning a buffer to the guest: {e}");
                        continue;
                    }
                    if vring.needs_notification().unwrap_or(true) {
                        let _ = vring.signal_used_queue();
                    }
                })?;
        }
        Ok(Pool { jobs })
    }
}

impl FsBackend {
    fn config(&self) -> Option<Vec<u8>> {
        self.device.config_space(u32::try_from(self.queues - 1).unwrap_or(1))
    }

    fn process(&self, vring: &VringRwLock<Memory>) -> io::Result<()> {
        let Some(mem) = &self.mem else {
            return Err(io::Error::other("a queue was kicked before guest memory was set"));
        };
        let guard = mem.memory();
        loop {
            if self.event_idx {
                let _ = vring.disable_notification();
            }
            if let Some(pool) = &self.pool {
                loop {
                    let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(guard.clone());
                    let Some(chain) = chain else { break };
                    let job = Job {
                        chain,
                        mem: guard.clone(),
                        vring: vring.clone(),
                    };
                    pool.jobs
                        .send(job)
                        .map_err(|_| io::Error::other("the fs worker threads have stopped"))?;
                }
            } else {
                let used = {
                    let mut state = vring.get_mut();
                    self.device.process_queue(state.get_queue_mut(), &guard)?
                };
                if used && vring.needs_notification().unwrap_or(true) {
                    vring.signal_used_queue()?;
                }
            }
            // With event index, re-arm and look again: requests that came
            // while notifications were off must not wait for the next kick.
            if !self.event_idx || !vring.enable_notification().unwrap_or(false) {
                return Ok(());
            }
        }
    }
}

/// How long the queue's thread keeps watching for the guest's next request
/// after answering one, before it goes back to sleep on the kick eventfd.
/// A guest thread doing stat/open/read in a loop sends its next request a
/// few microseconds after it sees the reply; catching it here saves two
/// thread wake-ups (a kick and an epoll return) per request.
const POLL_WINDOW: Duration = Duration::from_micros(50);

/// Spins up to `window` for a new available descriptor on any of
/// `vrings` (a FORGET on the high-priority queue must not wait out a
/// window spent watching the request queue); returns its queue.
fn next_busy(vrings: &[VringRwLock<Memory>], mem: &GuestMemoryMmap, window: Duration) -> Option<usize> {
    let deadline = Instant::now() + window;
    loop {
        for _ in 0..32 {
            for (i, vring) in vrings.iter().enumerate() {
                let state = vring.get_ref();
                let queue = state.get_queue();
                if !queue.ready() {
                    continue;
                }
                if let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) {
                    if avail.0 != queue.next_avail() {
                        return Some(i);
                    }
                }
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= deadline {
            return None;
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
        let base = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        // As virtiofsd: the configuration space (the tag) only with --tag.
        if self.config().is_some() {
            base | VhostUserProtocolFeatures::CONFIG
        } else {
            base
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.config().unwrap_or_default();
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        config[start..end].to_vec()
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
        let mut vring = vrings
            .get(usize::from(queue))
            .ok_or_else(|| io::Error::other(format!("kick for queue {queue}, which does not exist")))?;
        loop {
            self.process(vring)?;
            let Some(mem) = &self.mem else { return Ok(()) };
            match next_busy(vrings, &mem.memory(), POLL_WINDOW) {
                Some(next) => vring = &vrings[next],
                None => return Ok(()),
            }
        }
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
pub fn serve(listener: &mut Listener, device: FsDevice, request_queues: usize, thread_pool: usize) -> io::Result<()> {
    let device = Arc::new(device);
    let pool = match thread_pool {
        0 => None,
        n => Some(Pool::start(n, device.clone())?),
    };
    let backend = Arc::new(RwLock::new(FsBackend {
        device,
        mem: None,
        event_idx: false,
        queues: 1 + request_queues.max(1),
        pool,
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
