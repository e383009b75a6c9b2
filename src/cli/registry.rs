//! The VMs `ferry run` has started on this host, for `ferry ps`, `stop`,
//! `logs` and `exec`: one directory per name under the state directory
//! (`$FERRY_STATE_DIR`, else `$XDG_RUNTIME_DIR/ferry`, else
//! `/tmp/ferry-UID`). Each `ferry run` is its VM's supervisor: it owns the
//! directory while the guest runs and marks it exited afterwards. A
//! directory whose supervisor is gone without marking it is stale and is
//! reclaimed by the next run of that name.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("ferry");
    }
    // SAFETY: getuid(2) takes no arguments and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("ferry-{uid}"))
}

/// Names are DNS labels (they become `NAME.test`).
pub fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-'),
        "--name {name:?}: use letters, digits and '-' (at most 63; it becomes {name}.test)"
    );
    Ok(())
}

pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// What one VM's directory says about it.
#[derive(Clone, Debug, Default)]
pub struct VmRecord {
    pub name: String,
    pub dir: PathBuf,
    pub fields: BTreeMap<String, String>,
}

impl VmRecord {
    fn load(dir: &Path) -> Option<VmRecord> {
        let text = std::fs::read_to_string(dir.join("info")).ok()?;
        let fields = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(VmRecord {
            name: dir.file_name()?.to_string_lossy().into_owned(),
            dir: dir.to_path_buf(),
            fields,
        })
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }

    pub fn pid(&self, key: &str) -> Option<u32> {
        self.get(key).parse().ok()
    }

    /// "running", "exited (N)", or "dead" (the supervisor vanished).
    pub fn status(&self) -> String {
        if let Some(code) = self.fields.get("exit") {
            return format!("exited ({code})");
        }
        match self.pid("pid") {
            Some(pid) if process_alive(pid) => {
                if self.fields.contains_key("qemu_pid") {
                    "running".into()
                } else {
                    "starting".into()
                }
            }
            _ => "dead".into(),
        }
    }

    pub fn running(&self) -> bool {
        matches!(self.status().as_str(), "running" | "starting")
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// Every VM with a directory, sorted by name.
pub fn list() -> Vec<VmRecord> {
    let Ok(entries) = std::fs::read_dir(state_dir().join("vms")) else {
        return Vec::new();
    };
    let mut out: Vec<VmRecord> = entries.flatten().filter_map(|e| VmRecord::load(&e.path())).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn find(name: &str) -> anyhow::Result<VmRecord> {
    VmRecord::load(&state_dir().join("vms").join(name))
        .ok_or_else(|| anyhow::anyhow!("no VM named {name:?} (see `ferry ps`)"))
}

/// This process's claim on a name, held for the life of the VM.
pub struct Registration {
    pub dir: PathBuf,
    fields: Vec<(String, String)>,
    detached: bool,
}

impl Registration {
    /// Claims `name`, or explains who has it.
    pub fn claim(name: &str, detached: bool) -> anyhow::Result<Registration> {
        check_name(name)?;
        let vms = state_dir().join("vms");
        std::fs::create_dir_all(&vms).with_context(|| format!("creating the state directory {}", vms.display()))?;
        let dir = vms.join(name);
        for _ in 0..2 {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let mut reg = Registration {
                        dir,
                        fields: Vec::new(),
                        detached,
                    };
                    reg.set("pid", &std::process::id().to_string())?;
                    return Ok(reg);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let old = VmRecord::load(&dir);
                    if old.as_ref().is_some_and(VmRecord::running) {
                        anyhow::bail!(
                            "the name {name:?} is taken by a running VM (pid {}): pick another --name, or `ferry stop {name}`",
                            old.map_or(String::new(), |o| o.get("pid").to_string())
                        );
                    }
                    // Exited or stale: the name is free again.
                    std::fs::remove_dir_all(&dir).ok();
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        anyhow::bail!("could not claim the name {name:?} in {}", vms.display())
    }

    /// Records `key=value` (rewriting the whole small file, so readers
    /// never see half a line).
    pub fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let value = value.replace('\n', " ");
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.fields.push((key.to_string(), value)),
        }
        let tmp = self.dir.join("info.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for (k, v) in &self.fields {
            writeln!(f, "{k}={v}")?;
        }
        f.sync_all().ok();
        std::fs::rename(&tmp, self.dir.join("info"))?;
        Ok(())
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A detached VM's record (and log) stays until the name is reused
        // or `ferry stop` removes it; an attached run has shown its output,
        // and a run that never booted has nothing to show.
        let booted = self.fields.iter().any(|(k, _)| k == "qemu_pid");
        if !self.detached || !booted {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
