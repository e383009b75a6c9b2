//! `ferry run -v HOST:GUEST[:ro]`: one `ferry fs` child process serves
//! every share (one vhost-user-fs device each) for the life of the run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// One `-v` share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;
    fn from_str(s: &str) -> Result<Volume, String> {
        let (spec, read_only) = match s.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            _ => (s, false),
        };
        let Some((host, guest)) = spec.rsplit_once(':') else {
            return Err(format!("-v {s:?}: expected HOST_DIR:GUEST_PATH[:ro]"));
        };
        if host.is_empty() || !guest.starts_with('/') {
            return Err(format!("-v {s:?}: expected HOST_DIR:/absolute/guest/path[:ro]"));
        }
        Ok(Volume {
            host: PathBuf::from(host),
            guest: guest.to_string(),
            read_only,
        })
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// How a share server confines itself: root can confine it to the
/// shares; otherwise the file system's own checks keep requests inside.
pub fn sandbox_mode() -> &'static str {
    if is_root() {
        "namespace"
    } else {
        "none"
    }
}

/// Each volume as `ferry fs --share` and `ferry vmm --share` take it:
/// (tag, `TAG=DIR[:ro]`); share `n` gets the tag `ferryN`.
pub fn share_specs(vols: &[Volume]) -> anyhow::Result<Vec<(String, String)>> {
    let mut specs = Vec::new();
    for (n, vol) in vols.iter().enumerate() {
        let host = vol
            .host
            .canonicalize()
            .with_context(|| format!("-v {}: the host directory does not exist", vol.host.display()))?;
        anyhow::ensure!(host.is_dir(), "-v {}: not a directory", vol.host.display());
        anyhow::ensure!(
            is_root() || !vol.read_only,
            "-v {}:ro needs root here (the read-only mount lives in a mount namespace)",
            vol.host.display()
        );
        let tag = format!("ferry{n}");
        let ro = if vol.read_only { ":ro" } else { "" };
        specs.push((tag.clone(), format!("{tag}={}{ro}", host.display())));
    }
    Ok(specs)
}

/// The `ferry fs` process serving every share of a run (one vhost-user-fs
/// device, and socket, per share); killed when dropped.
pub struct ShareServer {
    child: Child,
    /// (tag, socket) of each share, in `-v` order.
    pub devices: Vec<(String, PathBuf)>,
    /// Host changes to the shares, framed for the guest agent.
    changes: Option<std::os::unix::net::UnixStream>,
}

impl Drop for ShareServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ShareServer {
    /// Starts one server for `vols` with its sockets in `dir`, and waits
    /// until they are there. Share `n` gets the tag `ferryN`.
    /// `map_owners`: as a user other than root, the guest's files are that
    /// user's on the host, and that user's files are the guest root's.
    pub fn start(vols: &[Volume], dir: &Path, map_owners: bool) -> anyhow::Result<ShareServer> {
        let exe = std::env::current_exe().context("finding ferry's own binary")?;
        let mut cmd = Command::new(exe);
        if std::env::var_os("RUST_LOG").is_none() {
            // Its progress lines are noise in the run's output; errors stay.
            cmd.args(["--log-level", "warn"]);
        }
        cmd.arg("fs")
            .arg("--socket-dir")
            .arg(dir)
            .args(["--sandbox", sandbox_mode(), "--cache", "auto", "--xattr"]);
        if map_owners && !is_root() {
            // SAFETY: getuid(2)/getgid(2) take no arguments and cannot fail.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            for (kind, id) in [("uid", uid), ("gid", gid)] {
                cmd.arg(format!("--translate-{kind}"))
                    .arg(format!("squash-guest:0:{id}:4294967295"))
                    .arg(format!("--translate-{kind}"))
                    .arg(format!("host:{id}:0:1"));
            }
        }
        let mut devices = Vec::new();
        for (tag, spec) in share_specs(vols)? {
            cmd.arg("--share").arg(spec);
            devices.push((tag.clone(), dir.join(format!("{tag}.sock"))));
        }
        // Host changes come back on this pair, for the guest agent.
        let (changes, child_end) = std::os::unix::net::UnixStream::pair().context("a socket pair for host changes")?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&child_end);
        // SAFETY: fcntl(2) on a descriptor we own: let the child inherit it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        cmd.arg("--notify-fd").arg(fd.to_string());
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let spawned = cmd.spawn().context("starting ferry fs");
        drop(child_end);
        let mut child = spawned?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !devices.iter().all(|(_, socket)| socket.exists()) {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("ferry fs exited ({status}) before its shares were ready");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "ferry fs did not start its shares within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ShareServer {
            child,
            devices,
            changes: Some(changes),
        })
    }

    /// Relays host changes to the guest agent's change port, reconnecting
    /// as needed (changes made while the guest boots are not replayed: it
    /// mounts the shares as they are by then).
    pub fn relay_changes(&mut self, vm_dir: &Path) {
        let Some(mut changes) = self.changes.take() else { return };
        let vm_dir = vm_dir.to_path_buf();
        let _ = std::thread::Builder::new().name("fs-changes".into()).spawn(move || {
            use std::io::{Read, Write};
            let mut guest: Option<std::os::unix::net::UnixStream> = None;
            let mut head = [0u8; 5];
            while changes.read_exact(&mut head).is_ok() {
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                let mut body = vec![0u8; len.min(1 << 20)];
                if changes.read_exact(&mut body).is_err() {
                    return;
                }
                if guest.is_none() {
                    guest = super::control::dial(&vm_dir, super::control::CHANGES_PORT).ok();
                }
                let sent = guest
                    .as_mut()
                    .is_some_and(|g| g.write_all(&head).and_then(|()| g.write_all(&body)).is_ok());
                if !sent {
                    guest = None;
                }
            }
        });
    }

    /// QEMU's arguments for every share's device.
    pub fn qemu_args(&self, accel: ferry_vmm::Accel) -> Vec<String> {
        let vectors = accel.vhost_pci_options();
        self.devices
            .iter()
            .flat_map(|(tag, socket)| {
                [
                    "-chardev".into(),
                    format!("socket,id={tag}chr,path={}", socket.display()),
                    "-device".into(),
                    format!("vhost-user-fs-pci,chardev={tag}chr,tag={tag}{vectors}"),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_like_docker() {
        let v: Volume = "./src:/src:ro".parse().unwrap();
        assert_eq!(
            (v.host.to_str().unwrap(), v.guest.as_str(), v.read_only),
            ("./src", "/src", true)
        );
        let v: Volume = "/data:/mnt/data".parse().unwrap();
        assert!(!v.read_only);
        assert!("/data".parse::<Volume>().is_err());
        assert!("/data:relative".parse::<Volume>().is_err());
        assert!(":/x".parse::<Volume>().is_err());
    }
}
