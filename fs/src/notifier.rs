//! The host watcher's thread: inotify on every share, guest echoes
//! dropped, bursts merged, and each change registered with the share's
//! [`Replay`] and written to `out` (a frame: `N`, a big-endian u32 length,
//! [`Change::encode`]) for the guest agent.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::inject::Replay;
use crate::notify::{Coalescer, ShareWatcher};
use crate::watch::Watcher;

/// System calls of inotify passthrough: watching the shares and writing
/// their changes to the guest agent's socket.
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
];

/// How long a burst may keep growing before it is sent: short enough for
/// the guest's event to follow the host's write within the 100 ms goal.
const SETTLE: Duration = Duration::from_millis(20);
const MAX_HOLD: Duration = Duration::from_millis(60);

struct Share {
    tag: String,
    root: PathBuf,
    replay: Arc<Replay>,
    watcher: Box<dyn ShareWatcher>,
    queue: Coalescer,
}

/// Starts watching `shares` (tag, root as this process sees it, replay).
pub fn spawn(shares: Vec<(String, PathBuf, Arc<Replay>)>, out: UnixStream) -> std::io::Result<()> {
    let mut watched = Vec::new();
    for (tag, root, replay) in shares {
        let watcher = Box::new(Watcher::new(&root)?);
        watched.push(Share {
            tag,
            root,
            replay,
            watcher,
            queue: Coalescer::default(),
        });
    }
    std::thread::Builder::new()
        .name("fs-notify".into())
        .spawn(move || run(watched, out))?;
    Ok(())
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + body.len());
    f.push(b'N');
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn run(mut shares: Vec<Share>, mut out: UnixStream) {
    let mut first_pending: Option<Instant> = None;
    let mut last_event = Instant::now();
    loop {
        let mut fds: Vec<libc::pollfd> = shares
            .iter()
            .map(|s| libc::pollfd {
                fd: s.watcher.ready_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = if first_pending.is_some() { 5 } else { 1000 };
        // SAFETY: `fds` is a valid pollfd array for the call's duration.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        for s in &mut shares {
            for c in s.watcher.read_changes() {
                let ino = std::fs::symlink_metadata(s.root.join(&c.path)).ok().map(|m| m.ino());
                if s.replay.is_echo(&c, ino) {
                    continue;
                }
                s.queue.push(c);
                last_event = Instant::now();
                first_pending.get_or_insert(last_event);
            }
        }
        let Some(first) = first_pending else { continue };
        if last_event.elapsed() < SETTLE && first.elapsed() < MAX_HOLD {
            continue;
        }
        first_pending = None;
        for s in &mut shares {
            for c in s.queue.drain() {
                s.replay.expect(&c);
                if out.write_all(&frame(&c.encode(&s.tag))).is_err() {
                    // The VM's supervisor is gone: so is the guest.
                    return;
                }
            }
        }
    }
}
