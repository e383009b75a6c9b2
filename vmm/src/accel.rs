//! Chooses between KVM and TCG. `/dev/kvm` existing is not enough: nested
//! hypervisors such as PVM open it and run simple code but cannot boot a
//! stock kernel. So `auto` boots the real guest under KVM once with a short
//! deadline and caches the verdict.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::qemu::{Accel, QemuConfig};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// How long a KVM boot of the probe guest may take before KVM is judged
/// unusable; a working KVM reaches guest-init in about a second.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether /dev/kvm can be opened for reading and writing.
pub fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The cache file for a probe of `kernel` with `qemu` on this host kernel.
pub fn probe_cache_file(cache: &Path, kernel: &Path, qemu: &Path) -> PathBuf {
    let meta = std::fs::metadata(kernel).ok();
    let key = format!(
        "{}|{}|{}|{}|{}",
        kernel.display(),
        meta.as_ref().map_or(0, |m| m.len()),
        meta.as_ref().and_then(|m| m.modified().ok()).map_or(0, |t| t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())),
        qemu.display(),
        host_release()
    );
    // FNV-1a: only needs to be stable, not cryptographic.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    cache.join(format!("accel-probe-{h:016x}"))
}

/// Boots `probe` (a config whose guest runs `true`) under KVM and reports
/// whether guest-init came back with exit code 0 in time.
pub fn probe_kvm(probe: &QemuConfig) -> bool {
    let mut cfg = probe.clone();
    cfg.accel = Accel::Kvm;
    let Ok(mut vm) = cfg.spawn() else { return false };
    let result = vm.wait_guest(Some(PROBE_TIMEOUT), &mut |_| {}, &mut |_| {});
    matches!(result, Ok(ref exit) if exit.code == 0 && exit.error.is_none())
}

/// Boots a probe guest in `ferry vmm` (`cmd`, whose guest runs `true`)
/// and checks that guest-init came back with exit code 0 in time; the
/// error says what happened instead.
pub fn probe_builtin(cmd: std::process::Command) -> Result<(), String> {
    let mut vm = crate::qemu::VmProcess::start(cmd, "").map_err(|e| e.to_string())?;
    match vm.wait_guest(Some(PROBE_TIMEOUT), &mut |_| {}, &mut |_| {}) {
        Ok(exit) if exit.code == 0 && exit.error.is_none() => Ok(()),
        Ok(exit) => Err(format!("the probe guest exited with code {}", exit.code)),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether KVM can boot the guest here: never without a usable /dev/kvm;
/// else the verdict cached in `cache_file`, else what `probe` finds (run
/// once, then cached). `progress` explains the wait; `fallback` names what
/// is used instead.
pub fn kvm_boots(
    cache_file: &Path,
    probe: impl FnOnce() -> bool,
    progress: &mut dyn FnMut(&str),
    fallback: &str,
) -> bool {
    if !kvm_device_usable() {
        return false;
    }
    match std::fs::read_to_string(cache_file).as_deref().map(str::trim) {
        Ok("kvm") => return true,
        Ok("tcg") => return false,
        _ => {}
    }
    progress("checking whether KVM can boot the guest kernel (once, then cached)...");
    let works = probe();
    if works {
        progress("KVM works: using it");
    } else {
        progress(&format!("KVM cannot boot this kernel here: using {fallback}"));
    }
    if let Some(dir) = cache_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(cache_file, if works { "kvm" } else { "tcg" });
    works
}

/// Resolves QEMU's accelerator; `probe` runs only for `Auto` (see
/// [`kvm_boots`]).
pub fn resolve(
    choice: AccelChoice,
    cache_file: &Path,
    probe: impl FnOnce() -> bool,
    progress: &mut dyn FnMut(&str),
) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto if kvm_boots(cache_file, probe, progress, "QEMU's TCG") => Accel::Kvm,
        AccelChoice::Auto => Accel::Tcg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_choice_skips_probe() {
        let never = || -> bool { panic!("probe must not run") };
        assert_eq!(
            resolve(AccelChoice::Tcg, Path::new("/nonexistent"), never, &mut |_| {}),
            Accel::Tcg
        );
        assert_eq!(
            resolve(AccelChoice::Kvm, Path::new("/nonexistent"), never, &mut |_| {}),
            Accel::Kvm
        );
    }

    #[test]
    fn cached_verdict_is_reused() {
        if !kvm_device_usable() {
            eprintln!("skipping: /dev/kvm not usable, auto always means tcg");
            return;
        }
        let file = std::env::temp_dir().join(format!("ferry-accel-{}", std::process::id()));
        std::fs::write(&file, "kvm").unwrap();
        let got = resolve(AccelChoice::Auto, &file, || panic!("probe must not run"), &mut |_| {});
        assert_eq!(got, Accel::Kvm);
        std::fs::remove_file(&file).unwrap();
        let got = resolve(AccelChoice::Auto, &file, || false, &mut |_| {});
        assert_eq!(got, Accel::Tcg);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "tcg");
        std::fs::remove_file(&file).unwrap();
    }
}
