//! Foreign-architecture binaries (`ferry run --platform`, `--binfmt`): the
//! image carries qemu-user interpreters and their binfmt_misc rules in
//! `/etc/ferry/binfmt/` (written by the host with flags POCF); they are
//! registered once at boot, before any chroot, so the kernel holds the
//! interpreters open (F) for every root in the guest. With `--platform`
//! and no `--rootfs`, that architecture's busybox provides the workload's
//! tools, first in its PATH.

use std::io::{self, Write};

const RULES: &str = "/etc/ferry/binfmt";
const BINFMT: &str = "/proc/sys/fs/binfmt_misc";
const BUSYBOX: &str = "/usr/lib/ferry/platform/busybox";
/// The foreign tools' directory, put first in the workload's PATH.
pub const BIN: &str = "/usr/lib/ferry/platform/bin";

/// Registers every rule the image carries; returns how many.
pub fn register() -> io::Result<usize> {
    let Ok(dir) = std::fs::read_dir(RULES) else {
        return Ok(0);
    };
    let mut rules: Vec<_> = dir.flatten().map(|e| e.path()).collect();
    rules.sort();
    if rules.is_empty() {
        return Ok(0);
    }
    if !std::path::Path::new(&format!("{BINFMT}/register")).exists() {
        crate::sys::mount("binfmt_misc", BINFMT, "binfmt_misc", 0, None).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mounting binfmt_misc on {BINFMT} (is the binfmt_misc module in the image?): {e}"),
            )
        })?;
    }
    for rule in &rules {
        let line = std::fs::read(rule)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("{BINFMT}/register"))
            .and_then(|mut f| f.write_all(&line))
            .map_err(|e| io::Error::new(e.kind(), format!("registering {}: {e}", rule.display())))?;
    }
    Ok(rules.len())
}

/// Installs the foreign busybox's applets (running it emulated, once).
pub fn install_busybox() -> io::Result<()> {
    std::fs::create_dir_all(BIN)?;
    let status = std::process::Command::new(BUSYBOX)
        .args(["--install", "-s", BIN])
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!("{BUSYBOX} --install failed: {status}")));
    }
    Ok(())
}
