//! `ferry run -v HOST:GUEST[:ro]`: each share is served by a `ferry fs`
//! child process (one vhost-user-fs device each) for the life of the run.

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

/// A running `ferry fs` for one share; killed when dropped.
pub struct ShareServer {
    child: Child,
    pub socket: PathBuf,
    pub tag: String,
}

impl Drop for ShareServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ShareServer {
    /// Starts the server for share number `n` with its socket in `dir`, and
    /// waits until the socket is there.
    pub fn start(vol: &Volume, n: usize, dir: &Path) -> anyhow::Result<ShareServer> {
        let host = vol
            .host
            .canonicalize()
            .with_context(|| format!("-v {}: the host directory does not exist", vol.host.display()))?;
        anyhow::ensure!(host.is_dir(), "-v {}: not a directory", vol.host.display());
        let tag = format!("ferry{n}");
        let socket = dir.join(format!("{tag}.sock"));
        let exe = std::env::current_exe().context("finding ferry's own binary")?;
        // Root can confine the server to the share; otherwise the file
        // system's own checks keep requests inside it.
        // SAFETY: geteuid(2) takes no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let sandbox = if root { "namespace" } else { "none" };
        anyhow::ensure!(
            root || !vol.read_only,
            "-v {}:ro needs root here (the read-only mount lives in a mount namespace)",
            vol.host.display()
        );
        let mut cmd = Command::new(exe);
        if std::env::var_os("RUST_LOG").is_none() {
            // Its progress lines are noise in the run's output; errors stay.
            cmd.args(["--log-level", "warn"]);
        }
        cmd.arg("fs")
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&host)
            .args(["--tag", &tag, "--sandbox", sandbox, "--cache", "auto", "--xattr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if vol.read_only {
            cmd.arg("--readonly");
        }
        let mut child = cmd.spawn().context("starting ferry fs")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("ferry fs for {} exited ({status}) before it was ready", host.display());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "ferry fs for {} did not start",
                host.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ShareServer { child, socket, tag })
    }

    /// QEMU's arguments for this share's device.
    pub fn qemu_args(&self, accel: ferry_vmm::Accel) -> Vec<String> {
        let vectors = accel.vhost_pci_options();
        vec![
            "-chardev".into(),
            format!("socket,id={}chr,path={}", self.tag, self.socket.display()),
            "-device".into(),
            format!("vhost-user-fs-pci,chardev={}chr,tag={}{vectors}", self.tag, self.tag),
        ]
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
