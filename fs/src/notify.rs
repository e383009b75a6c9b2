//! Host changes to a share, as the guest agent replays them: what changed,
//! merged over a short window so bursts (a `git checkout` touching
//! thousands of files) cost one replay per path, never losing the final
//! state.

use std::collections::HashMap;

/// What happened to a path (relative to the share's root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Appeared (a file's content included: replayed as create, modify,
    /// close-write).
    Create,
    /// Content written.
    Modify,
    /// Removed.
    Delete,
    /// Renamed within the share, to this path.
    Move(String),
    /// Mode, owner or times changed.
    Attrib,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
    pub is_dir: bool,
}

impl Change {
    /// The agent's wire form: `KIND\0TAG\0PATH\0TO\0D` (D: `d` for a
    /// directory, `f` otherwise).
    pub fn encode(&self, tag: &str) -> Vec<u8> {
        let (kind, to) = match &self.kind {
            ChangeKind::Create => ("create", ""),
            ChangeKind::Modify => ("modify", ""),
            ChangeKind::Delete => ("delete", ""),
            ChangeKind::Move(to) => ("move", to.as_str()),
            ChangeKind::Attrib => ("attrib", ""),
        };
        let d = if self.is_dir { "d" } else { "f" };
        format!("{kind}\0{tag}\0{}\0{to}\0{d}", self.path).into_bytes()
    }
}

/// A source of host changes to one share: inotify on Linux
/// ([`crate::watch::Watcher`]); FSEvents on macOS would implement the same
/// (see docs/macos.md).
pub trait ShareWatcher: Send {
    /// A descriptor that becomes readable when changes are waiting.
    fn ready_fd(&self) -> std::os::fd::RawFd;
    /// The changes seen since the last call (non-blocking).
    fn read_changes(&mut self) -> Vec<Change>;
}

/// Changes waiting to be sent, merged per path.
#[derive(Default)]
pub struct Coalescer {
    pending: Vec<Option<Change>>,
    /// Path -> indexes into `pending` of its live changes.
    by_path: HashMap<String, Vec<usize>>,
}

impl Coalescer {
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    fn kinds(&self, path: &str) -> Vec<(usize, ChangeKind)> {
        self.by_path
            .get(path)
            .map(|ix| {
                ix.iter()
                    .filter_map(|&i| self.pending[i].as_ref().map(|c| (i, c.kind.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn drop_where(&mut self, path: &str, pred: impl Fn(&ChangeKind) -> bool) {
        if let Some(ix) = self.by_path.get(path) {
            for &i in ix {
                if self.pending[i].as_ref().is_some_and(|c| pred(&c.kind)) {
                    self.pending[i] = None;
                }
            }
        }
    }

    fn push_raw(&mut self, c: Change) {
        self.by_path.entry(c.path.clone()).or_default().push(self.pending.len());
        self.pending.push(Some(c));
    }

    pub fn push(&mut self, c: Change) {
        let existing = self.kinds(&c.path);
        let created = existing.iter().any(|(_, k)| *k == ChangeKind::Create);
        match &c.kind {
            ChangeKind::Modify | ChangeKind::Attrib => {
                // A pending create replays the content too; a second
                // modify or attrib adds nothing.
                if created || existing.iter().any(|(_, k)| *k == c.kind) {
                    return;
                }
                self.push_raw(c);
            }
            ChangeKind::Create => self.push_raw(c),
            ChangeKind::Delete => {
                self.drop_where(&c.path, |k| matches!(k, ChangeKind::Modify | ChangeKind::Attrib));
                if created {
                    // Born and gone within the window: the guest never saw it.
                    self.drop_where(&c.path, |k| *k == ChangeKind::Create);
                } else {
                    self.push_raw(c);
                }
            }
            ChangeKind::Move(to) => {
                if created {
                    // The guest never saw the old name: it is a create there.
                    self.drop_where(&c.path, |_| true);
                    self.push_raw(Change {
                        kind: ChangeKind::Create,
                        path: to.clone(),
                        is_dir: c.is_dir,
                    });
                } else {
                    self.push_raw(c);
                }
            }
        }
    }

    /// Everything merged so far, in order.
    pub fn drain(&mut self) -> Vec<Change> {
        self.by_path.clear();
        std::mem::take(&mut self.pending).into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: ChangeKind, path: &str) -> Change {
        Change {
            kind,
            path: path.into(),
            is_dir: false,
        }
    }

    #[test]
    fn bursts_merge_to_their_final_state() {
        let mut q = Coalescer::default();
        q.push(c(ChangeKind::Create, "a"));
        q.push(c(ChangeKind::Modify, "a"));
        q.push(c(ChangeKind::Modify, "b"));
        q.push(c(ChangeKind::Modify, "b"));
        q.push(c(ChangeKind::Attrib, "b"));
        q.push(c(ChangeKind::Create, "tmp"));
        q.push(c(ChangeKind::Delete, "tmp"));
        q.push(c(ChangeKind::Create, "new"));
        q.push(c(ChangeKind::Move("final".into()), "new"));
        q.push(c(ChangeKind::Modify, "gone"));
        q.push(c(ChangeKind::Delete, "gone"));
        assert_eq!(
            q.drain(),
            vec![
                c(ChangeKind::Create, "a"),
                c(ChangeKind::Modify, "b"),
                c(ChangeKind::Attrib, "b"),
                c(ChangeKind::Create, "final"),
                c(ChangeKind::Delete, "gone"),
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn wire_form_names_the_share_and_both_paths() {
        let m = Change {
            kind: ChangeKind::Move("x/b".into()),
            path: "x/a".into(),
            is_dir: true,
        };
        assert_eq!(m.encode("ferry0"), b"move\0ferry0\0x/a\0x/b\0d");
    }
}
