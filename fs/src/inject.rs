//! The device half of inotify passthrough. The guest agent replays each
//! host change on the virtio-fs mount from PID 1 (guest-init's main
//! thread) — create, write, unlink, rename, chmod — so the guest kernel
//! itself raises the true inotify events. The host file already changed,
//! so those requests are answered here without touching it:
//!
//! - LOOKUP of a name being created (or a rename's target): "no such
//!   file", so the guest goes on to create it;
//! - LOOKUP of a name being deleted or renamed away: a stand-in inode
//!   (never cached: valid for 0 s), so the guest goes on to remove it;
//! - CREATE/MKDIR: the existing host file or directory, opened;
//! - UNLINK/RMDIR/RENAME/FALLOCATE: success, nothing done;
//! - SETATTR: the current attributes, nothing changed.
//!
//! Requests from every other guest process are served as always, and the
//! names and inodes they change are remembered for a moment so the host
//! watcher does not echo the guest's own changes back to it.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{Attr, AttrOut, EntryOut, InHeader, OpenOut, OutHeader};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap};

use crate::notify::{Change, ChangeKind};

/// The guest thread that replays host changes: guest-init's main thread.
pub const REPLAY_PID: u32 = 1;
/// Stand-in inodes are numbered from here, far above real node ids.
const STAND_IN_BASE: u64 = 0xfff0_0000_0000_0000;
/// How long a replay waits for the guest's requests.
const REPLAY_TTL: Duration = Duration::from_secs(10);
/// How long a guest change suppresses the host's event for it.
const ECHO_WINDOW: Duration = Duration::from_millis(500);

const OP_LOOKUP: u32 = 1;
const OP_FORGET: u32 = 2;
const OP_GETATTR: u32 = 3;
const OP_SETATTR: u32 = 4;
const OP_SYMLINK: u32 = 6;
const OP_MKNOD: u32 = 8;
const OP_MKDIR: u32 = 9;
const OP_UNLINK: u32 = 10;
const OP_RMDIR: u32 = 11;
const OP_RENAME: u32 = 12;
const OP_LINK: u32 = 13;
const OP_WRITE: u32 = 16;
const OP_SETXATTR: u32 = 21;
const OP_REMOVEXATTR: u32 = 24;
const OP_CREATE: u32 = 35;
const OP_FALLOCATE: u32 = 43;
const OP_RENAME2: u32 = 45;

/// A change sent to the guest, waiting for its replay requests.
struct Expected {
    change: Change,
    /// Last path components: the one requests name.
    name: Vec<u8>,
    to: Vec<u8>,
    at: Instant,
}

fn last(path: &str) -> Vec<u8> {
    path.rsplit('/').next().unwrap_or(path).as_bytes().to_vec()
}

/// What the device and the host watcher share for one share.
#[derive(Default)]
pub struct Replay {
    active: AtomicBool,
    expected: Mutex<Vec<Expected>>,
    next_stand_in: AtomicU64,
    /// Stand-in node id -> (is_dir).
    stand_ins: Mutex<HashMap<u64, bool>>,
    /// Name or inode -> when the guest last changed it, and how (bits).
    guest_names: Mutex<HashMap<Vec<u8>, (Instant, u8)>>,
    guest_inos: Mutex<HashMap<u64, (Instant, u8)>>,
    /// Names whose create replay found the host file already gone: the
    /// guest never saw them, so their delete must not be replayed either.
    unseen: Mutex<Vec<Vec<u8>>>,
    /// Node id -> host inode, for changes made through a node id.
    node_inos: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl Replay {
    pub fn new() -> Arc<Replay> {
        Arc::new(Replay::default())
    }

    /// The watcher is about to send `change` to the guest.
    pub fn expect(&self, change: &Change) {
        let to = match &change.kind {
            ChangeKind::Move(to) => last(to),
            _ => Vec::new(),
        };
        if let Ok(mut e) = self.expected.lock() {
            e.retain(|x| x.at.elapsed() < REPLAY_TTL);
            e.push(Expected {
                name: last(&change.path),
                to,
                change: change.clone(),
                at: Instant::now(),
            });
            self.active.store(true, Ordering::Release);
        }
    }

    /// Whether the host event `change` (on inode `ino` if the path still
    /// exists) is the echo of something the guest just did.
    pub fn is_echo(&self, change: &Change, ino: Option<u64>) -> bool {
        let bit = kind_bit(&change.kind);
        let hit = |e: Option<&(Instant, u8)>| e.is_some_and(|(t, kinds)| t.elapsed() < ECHO_WINDOW && kinds & bit != 0);
        if self.guest_names.lock().is_ok_and(|m| hit(m.get(&last(&change.path)))) {
            return true;
        }
        ino.is_some_and(|ino| self.guest_inos.lock().is_ok_and(|m| hit(m.get(&ino))))
    }

    fn touched_name(&self, name: &[u8], kinds: u8) {
        if let Ok(mut m) = self.guest_names.lock() {
            if m.len() > 4096 {
                m.retain(|_, (t, _)| t.elapsed() < ECHO_WINDOW);
            }
            m.insert(name.to_vec(), (Instant::now(), kinds));
        }
    }

    fn touched_node(&self, fs: &PassthroughFs, nodeid: u64, kinds: u8) {
        let ino = {
            let Ok(cache) = self.node_inos.lock() else { return };
            cache
                .get(&nodeid)
                .filter(|(_, t)| t.elapsed() < Duration::from_millis(200))
                .map(|(ino, _)| *ino)
        };
        let ino = match ino {
            Some(ino) => ino,
            None => {
                let Ok((st, _)) = fs.getattr(&Context::new(), nodeid, None) else {
                    return;
                };
                if let Ok(mut cache) = self.node_inos.lock() {
                    if cache.len() > 4096 {
                        cache.clear();
                    }
                    cache.insert(nodeid, (st.st_ino, Instant::now()));
                }
                st.st_ino
            }
        };
        if let Ok(mut m) = self.guest_inos.lock() {
            if m.len() > 4096 {
                m.retain(|_, (t, _)| t.elapsed() < ECHO_WINDOW);
            }
            m.insert(ino, (Instant::now(), kinds));
        }
    }

    fn remember_unseen(&self, name: &[u8]) {
        if let Ok(mut u) = self.unseen.lock() {
            if u.len() > 4096 {
                u.clear();
            }
            u.push(name.to_vec());
        }
    }

    fn forget_unseen(&self, name: &[u8]) -> bool {
        let Ok(mut u) = self.unseen.lock() else { return false };
        match u.iter().position(|n| n == name) {
            Some(i) => {
                u.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Takes the expected replay that `pred` picks.
    fn take(&self, pred: impl Fn(&Expected) -> bool) -> Option<Change> {
        let mut e = self.expected.lock().ok()?;
        let i = e.iter().position(|x| x.at.elapsed() < REPLAY_TTL && pred(x))?;
        let x = e.remove(i);
        if e.is_empty() {
            self.active.store(false, Ordering::Release);
        }
        Some(x.change)
    }

    fn peek(&self, pred: impl Fn(&Expected) -> bool) -> Option<Change> {
        let e = self.expected.lock().ok()?;
        e.iter()
            .find(|x| x.at.elapsed() < REPLAY_TTL && pred(x))
            .map(|x| x.change.clone())
    }
}

const CREATED: u8 = 1;
const MODIFIED: u8 = 2;
const DELETED: u8 = 4;
const MOVED: u8 = 8;
const ATTRIB: u8 = 16;

fn kind_bit(kind: &ChangeKind) -> u8 {
    match kind {
        ChangeKind::Create => CREATED,
        ChangeKind::Modify => MODIFIED,
        ChangeKind::Delete => DELETED,
        ChangeKind::Move(_) => MOVED,
        ChangeKind::Attrib => ATTRIB,
    }
}

/// The host events a guest request causes.
fn effects(opcode: u32) -> u8 {
    match opcode {
        OP_CREATE => CREATED | MODIFIED,
        OP_MKNOD | OP_MKDIR | OP_SYMLINK | OP_LINK => CREATED,
        OP_UNLINK | OP_RMDIR => DELETED,
        OP_RENAME | OP_RENAME2 => MOVED | CREATED | DELETED,
        OP_WRITE | OP_FALLOCATE => MODIFIED,
        OP_SETATTR => ATTRIB | MODIFIED,
        OP_SETXATTR | OP_REMOVEXATTR => ATTRIB,
        _ => 0,
    }
}

/// Names after an opcode's fixed argument, split at NULs.
fn names(rest: &[u8]) -> Vec<&[u8]> {
    rest.split(|&b| b == 0).collect()
}

fn fixed_len(opcode: u32) -> Option<usize> {
    Some(match opcode {
        OP_LOOKUP | OP_UNLINK | OP_RMDIR | OP_SYMLINK => 0,
        OP_MKDIR | OP_RENAME | OP_LINK => 8,
        OP_MKNOD | OP_CREATE | OP_RENAME2 => 16,
        _ => return None,
    })
}

/// Answers `chain` itself when it is part of a replay (or about a stand-in
/// inode); records guest changes. Returns the reply length when answered.
pub fn intercept<M>(
    replay: &Replay,
    fs: &PassthroughFs,
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<M>,
) -> Option<u32>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut r = Reader::from_descriptor_chain(mem, chain.clone()).ok()?;
    let h: InHeader = r.read_obj().ok()?;
    let body_len = (h.len as usize).checked_sub(std::mem::size_of::<InHeader>())?;
    if body_len > 64 << 10 && h.opcode != OP_WRITE {
        return None;
    }
    if h.pid != REPLAY_PID {
        match h.opcode {
            op @ (OP_WRITE | OP_SETATTR | OP_SETXATTR | OP_REMOVEXATTR | OP_FALLOCATE) => {
                replay.touched_node(fs, h.nodeid, effects(op))
            }
            op => {
                if let (Some(fixed), true) = (fixed_len(op), effects(op) != 0) {
                    let mut body = vec![0u8; body_len];
                    r.read_exact(&mut body).ok()?;
                    for n in names(body.get(fixed..)?).into_iter().filter(|n| !n.is_empty()) {
                        replay.touched_name(n, effects(op));
                    }
                }
            }
        }
        if h.nodeid >= STAND_IN_BASE && h.opcode != OP_FORGET {
            return reply(mem, chain, h.unique, -libc::ENOENT, &[]);
        }
        return None;
    }
    if !replay.active.load(Ordering::Acquire) && h.nodeid < STAND_IN_BASE {
        return None;
    }
    let mut body = vec![0u8; body_len.min(64 << 10)];
    r.read_exact(&mut body).ok()?;
    let ctx = Context::from(&h);
    let fixed = fixed_len(h.opcode).unwrap_or(0);
    let args = names(body.get(fixed..).unwrap_or(&[]));
    let name = args.first().copied().unwrap_or(&[]);
    match h.opcode {
        OP_FORGET if h.nodeid >= STAND_IN_BASE => {
            if let Ok(mut s) = replay.stand_ins.lock() {
                s.remove(&h.nodeid);
            }
            Some(0)
        }
        OP_GETATTR if h.nodeid >= STAND_IN_BASE => {
            let is_dir = replay.stand_ins.lock().ok()?.get(&h.nodeid).copied()?;
            let out = AttrOut {
                attr: stand_in_attr(h.nodeid, is_dir),
                ..Default::default()
            };
            reply(mem, chain, h.unique, 0, out.as_slice())
        }
        OP_LOOKUP => {
            let creating = |x: &Expected| {
                (x.change.kind == ChangeKind::Create && x.name == name) || (!x.to.is_empty() && x.to == name)
            };
            if replay.peek(creating).is_some() {
                return reply(mem, chain, h.unique, -libc::ENOENT, &[]);
            }
            let removing =
                |x: &Expected| matches!(x.change.kind, ChangeKind::Delete | ChangeKind::Move(_)) && x.name == name;
            let gone = replay.peek(removing)?;
            if replay.forget_unseen(name) {
                // Created and removed on the host before the guest saw it:
                // let the guest find nothing, so it replays nothing.
                replay.take(removing);
                return reply(mem, chain, h.unique, -libc::ENOENT, &[]);
            }
            let id = STAND_IN_BASE + replay.next_stand_in.fetch_add(1, Ordering::Relaxed);
            replay.stand_ins.lock().ok()?.insert(id, gone.is_dir);
            let out = EntryOut {
                nodeid: id,
                generation: 1,
                attr: stand_in_attr(id, gone.is_dir),
                ..Default::default()
            };
            reply(mem, chain, h.unique, 0, out.as_slice())
        }
        OP_CREATE | OP_MKDIR => {
            let want_dir = h.opcode == OP_MKDIR;
            let created = replay
                .take(|x| x.change.kind == ChangeKind::Create && x.name == name && x.change.is_dir == want_dir)?;
            if !want_dir {
                // Its content is replayed with a FALLOCATE next.
                replay.expect(&Change {
                    kind: ChangeKind::Modify,
                    ..created
                });
            }
            let cname = CString::new(name).ok()?;
            let entry = match fs.lookup(&ctx, h.nodeid, &cname) {
                Ok(e) => e,
                Err(e) => {
                    replay.remember_unseen(name);
                    return reply(mem, chain, h.unique, -e.raw_os_error().unwrap_or(libc::EIO), &[]);
                }
            };
            let mut out = EntryOut::from(entry).as_slice().to_vec();
            if h.opcode == OP_CREATE {
                let flags = u32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
                let keep = flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32);
                match fs.open(&ctx, entry.inode, keep, 0) {
                    Ok((handle, opts, _)) => {
                        let open = OpenOut {
                            fh: handle.unwrap_or(0),
                            open_flags: opts.bits(),
                            ..Default::default()
                        };
                        out.extend_from_slice(open.as_slice());
                    }
                    Err(e) => return reply(mem, chain, h.unique, -e.raw_os_error().unwrap_or(libc::EIO), &[]),
                }
            }
            reply(mem, chain, h.unique, 0, &out)
        }
        OP_UNLINK | OP_RMDIR => {
            replay.take(|x| x.change.kind == ChangeKind::Delete && x.name == name)?;
            reply(mem, chain, h.unique, 0, &[])
        }
        OP_RENAME | OP_RENAME2 => {
            replay.take(|x| matches!(x.change.kind, ChangeKind::Move(_)) && x.name == name)?;
            reply(mem, chain, h.unique, 0, &[])
        }
        // FALLOCATE and SETATTR name no file, and a replay sends them only
        // sometimes (a create's fallocate only for a non-empty file): they
        // leave the expectation for its time to end instead of consuming
        // one that may belong to another file.
        OP_FALLOCATE => {
            replay.peek(|x| matches!(x.change.kind, ChangeKind::Modify | ChangeKind::Create))?;
            reply(mem, chain, h.unique, 0, &[])
        }
        OP_SETATTR => {
            replay.peek(|x| x.change.kind == ChangeKind::Attrib)?;
            match fs.getattr(&ctx, h.nodeid, None) {
                Ok((st, valid)) => {
                    let out = AttrOut {
                        attr_valid: valid.as_secs(),
                        attr_valid_nsec: valid.subsec_nanos(),
                        dummy: 0,
                        attr: Attr::from(st),
                    };
                    reply(mem, chain, h.unique, 0, out.as_slice())
                }
                Err(e) => reply(mem, chain, h.unique, -e.raw_os_error().unwrap_or(libc::EIO), &[]),
            }
        }
        _ => None,
    }
}

fn stand_in_attr(id: u64, is_dir: bool) -> Attr {
    Attr {
        ino: id,
        mode: if is_dir {
            libc::S_IFDIR | 0o755
        } else {
            libc::S_IFREG | 0o644
        },
        nlink: if is_dir { 2 } else { 1 },
        blksize: 4096,
        ..Default::default()
    }
}

fn reply<M>(mem: &GuestMemoryMmap, chain: &DescriptorChain<M>, unique: u64, error: i32, body: &[u8]) -> Option<u32>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut w = VirtioFsWriter::new(mem, chain.clone()).ok()?;
    let len = std::mem::size_of::<OutHeader>() + body.len();
    let out = OutHeader {
        len: len as u32,
        error,
        unique,
    };
    w.write_all(out.as_slice()).ok()?;
    w.write_all(body).ok()?;
    Some(len as u32)
}
