//! The host side of inotify passthrough: an inotify watch on every
//! directory of a share, turned into [`Change`]s relative to its root.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::notify::{Change, ChangeKind, ShareWatcher};

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW
    | libc::IN_EXCL_UNLINK;

/// Watches one share.
pub struct Watcher {
    fd: OwnedFd,
    root: PathBuf,
    /// Watch descriptor -> directory, relative to the root ("" for it).
    dirs: HashMap<i32, String>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Watcher {
    /// Watches `root` and every directory below it.
    pub fn new(root: &Path) -> io::Result<Watcher> {
        // SAFETY: inotify_init1(2) takes only flags; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut w = Watcher {
            // SAFETY: a fresh descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            root: root.to_path_buf(),
            dirs: HashMap::new(),
        };
        w.add_tree("", false, &mut Vec::new());
        Ok(w)
    }

    /// Watches `rel` and the directories below it; what is already in them
    /// is reported to `found` (a directory made on the host may have been
    /// filled before its watch existed).
    fn add_tree(&mut self, rel: &str, report: bool, found: &mut Vec<Change>) {
        let path = self.root.join(rel);
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a valid NUL-terminated path and our inotify descriptor.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            tracing::debug!(dir = %path.display(), error = %io::Error::last_os_error(), "not watched");
            return;
        }
        self.dirs.insert(wd, rel.to_string());
        let Ok(entries) = std::fs::read_dir(&path) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let child = join(rel, &name);
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if report {
                found.push(Change {
                    kind: ChangeKind::Create,
                    path: child.clone(),
                    is_dir,
                });
            }
            if is_dir {
                self.add_tree(&child, report, found);
            }
        }
    }

    /// A watched directory moved: its watches (and its subdirectories')
    /// follow the inode, their names here must follow too.
    fn rename_dirs(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        for rel in self.dirs.values_mut() {
            if rel == from {
                *rel = to.to_string();
            } else if let Some(rest) = rel.strip_prefix(&prefix) {
                *rel = format!("{to}/{rest}");
            }
        }
    }

    fn read_queued(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            self.parse(&buf[..n as usize], &mut out);
        }
        out
    }

    fn parse(&mut self, mut b: &[u8], out: &mut Vec<Change>) {
        // MOVED_FROM waiting for its MOVED_TO (same cookie, same batch).
        let mut moves: HashMap<u32, (String, bool)> = HashMap::new();
        let head = std::mem::size_of::<libc::inotify_event>();
        while b.len() >= head {
            let wd = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            let mask = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
            let cookie = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            let len = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]) as usize;
            let Some(raw_name) = b.get(head..head + len) else { break };
            let name = String::from_utf8_lossy(raw_name.split(|&c| c == 0).next().unwrap_or(&[])).into_owned();
            b = &b[head + len..];
            if mask & libc::IN_Q_OVERFLOW != 0 {
                tracing::warn!(root = %self.root.display(), "inotify queue overflowed; some host changes were not seen");
                continue;
            }
            if mask & libc::IN_IGNORED != 0 {
                self.dirs.remove(&wd);
                continue;
            }
            let Some(dir) = self.dirs.get(&wd).cloned() else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let path = join(&dir, &name);
            let is_dir = mask & libc::IN_ISDIR != 0;
            let kind = if mask & libc::IN_CREATE != 0 {
                ChangeKind::Create
            } else if mask & libc::IN_DELETE != 0 {
                ChangeKind::Delete
            } else if mask & libc::IN_MODIFY != 0 {
                // Only writes: the guest's replay of a write raises its own
                // IN_CLOSE_WRITE, and the host's IN_CLOSE_WRITE for it (the
                // replay opens the file for writing) must not come back.
                ChangeKind::Modify
            } else if mask & libc::IN_ATTRIB != 0 {
                ChangeKind::Attrib
            } else if mask & libc::IN_MOVED_FROM != 0 {
                moves.insert(cookie, (path, is_dir));
                continue;
            } else if mask & libc::IN_MOVED_TO != 0 {
                match moves.remove(&cookie) {
                    Some((from, _)) => {
                        if is_dir {
                            self.rename_dirs(&from, &path);
                        }
                        out.push(Change {
                            kind: ChangeKind::Move(path),
                            path: from,
                            is_dir,
                        });
                        continue;
                    }
                    // Moved in from outside the share: new here.
                    None => ChangeKind::Create,
                }
            } else {
                continue;
            };
            let created_dir = is_dir && kind == ChangeKind::Create;
            out.push(Change {
                kind,
                path: path.clone(),
                is_dir,
            });
            if created_dir {
                let mut found = Vec::new();
                self.add_tree(&path, true, &mut found);
                out.extend(found);
            }
        }
        // Moved out of the share: gone, as far as the guest can tell.
        for (_, (from, is_dir)) in moves {
            out.push(Change {
                kind: ChangeKind::Delete,
                path: from,
                is_dir,
            });
        }
    }
}

impl ShareWatcher for Watcher {
    fn ready_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn read_changes(&mut self) -> Vec<Change> {
        self.read_queued()
    }
}
