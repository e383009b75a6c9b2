//! inotify passthrough, guest side: host changes to a share arrive on
//! vsock port [`CHANGES_PORT`] and PID 1's main thread replays each on the
//! mount — create, write, unlink, rename, chmod — so the guest kernel
//! raises the true events for every watcher. ferry's fs server recognises
//! requests from PID 1 during a replay and answers them without touching
//! the host file, which has already changed (see the fs crate's `inject`).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use crate::config::Mount;
use crate::sys;

pub const CHANGES_PORT: u32 = 1025;

/// One change, as the host sent it.
#[derive(Debug)]
struct HostChange {
    kind: String,
    tag: String,
    path: String,
    to: String,
    is_dir: bool,
}

fn parse(body: &[u8]) -> Option<HostChange> {
    let text = String::from_utf8_lossy(body);
    let mut it = text.split('\0');
    let (kind, tag, path, to, d) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    // Paths stay inside their share.
    let inside = |p: &str| !p.starts_with('/') && !p.split('/').any(|c| c == ".." || c.is_empty());
    if !inside(path) || (!to.is_empty() && !inside(to)) {
        return None;
    }
    Some(HostChange {
        kind: kind.to_string(),
        tag: tag.to_string(),
        path: path.to_string(),
        to: to.to_string(),
        is_dir: d == "d",
    })
}

/// Changes waiting for PID 1, and where each share is mounted.
pub struct Replayer {
    queue: Mutex<VecDeque<HostChange>>,
    mounts: Vec<Mount>,
}

impl Replayer {
    pub fn new(mounts: &[Mount]) -> Arc<Replayer> {
        Arc::new(Replayer {
            queue: Mutex::new(VecDeque::new()),
            mounts: mounts.to_vec(),
        })
    }

    /// Listens for host changes; each wakes PID 1's main thread.
    pub fn listen(self: &Arc<Self>) {
        if self.mounts.is_empty() {
            return;
        }
        let listener = match sys::vsock_listen(CHANGES_PORT) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ferry-init: no host change notifications ({e})");
                return;
            }
        };
        let me = self.clone();
        let _ = std::thread::Builder::new().name("changes".into()).spawn(move || loop {
            let Ok(mut conn) = sys::accept(&listener) else { continue };
            let mut head = [0u8; 5];
            while conn.read_exact(&mut head).is_ok() {
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if len > 64 << 10 {
                    break;
                }
                let mut body = vec![0u8; len];
                if conn.read_exact(&mut body).is_err() {
                    break;
                }
                if let Some(c) = parse(&body) {
                    if let Ok(mut q) = me.queue.lock() {
                        q.push_back(c);
                    }
                    sys::kill(1, sys::WAKE_SIGNAL);
                }
            }
        });
    }

    /// Replays what is queued. Must run on PID 1's main thread: the fs
    /// server knows replays by that thread's id in the FUSE requests.
    pub fn run_pending(&self) {
        loop {
            let next = self.queue.lock().ok().and_then(|mut q| q.pop_front());
            let Some(c) = next else { return };
            let Some(mount) = self.mounts.iter().find(|m| m.tag == c.tag) else {
                continue;
            };
            let full = format!("{}/{}", mount.path.trim_end_matches('/'), c.path);
            if let Err(e) = apply(&c, &full, mount) {
                // A change overtaken by a later one (the file is gone again).
                let _ = e;
            }
        }
    }
}

fn apply(c: &HostChange, full: &str, mount: &Mount) -> std::io::Result<()> {
    match c.kind.as_str() {
        "create" if c.is_dir => std::fs::create_dir(full),
        "create" => {
            let f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(full)?;
            if f.metadata()?.len() > 0 {
                sys::touch_allocation(&f)?;
            }
            Ok(())
        }
        "modify" if !c.is_dir => {
            sys::refresh_attrs(full)?;
            let f = OpenOptions::new().write(true).open(full)?;
            sys::drop_cached_pages(&f);
            sys::touch_allocation(&f)
        }
        "delete" if c.is_dir => std::fs::remove_dir(full),
        "delete" => std::fs::remove_file(full),
        "move" => {
            let to = format!("{}/{}", mount.path.trim_end_matches('/'), c.to);
            std::fs::rename(full, to)
        }
        "attrib" => {
            sys::refresh_attrs(full)?;
            let perms = std::fs::symlink_metadata(full)?.permissions();
            std::fs::set_permissions(full, perms)
        }
        _ => Ok(()),
    }
}
