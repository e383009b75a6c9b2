//! ferry's one confinement mechanism, used by every mode that asks for it:
//! after set-up, a process gives up what it no longer needs.
//!
//! - [`empty_root`]: a private mount namespace whose root is an empty,
//!   read-only tmpfs holding only the directories named (slirp4netns's
//!   `--enable-sandbox` keeps `/etc` and `/run`); [`pivot_into`] is the
//!   pivot itself, shared with the fs crate's share sandbox.
//! - [`drop_caps`]: every capability but the ones kept, from the
//!   effective, permitted, inheritable, ambient and bounding sets.
//! - [`seccomp::install`]: a syscall allow-list built with rust-vmm's
//!   `seccompiler` (as Firecracker does). The lists live beside the code
//!   that makes the calls (`SYSCALLS` constants in each crate), as passt
//!   keeps `#syscalls` beside its code; this crate only adds what every
//!   Rust program on tokio needs.
//!
//! Mount namespaces cannot be entered by a process with other threads
//! (unshare(CLONE_NEWNS) implies unsharing the thread-shared fs state):
//! call [`empty_root`] while the process is single-threaded.
#![cfg(target_os = "linux")]

pub mod seccomp;
mod syscall_names;

use std::ffi::CString;
use std::io;
use std::path::Path;

fn check(what: &str, rc: libc::c_long) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Makes `dir` the root of this mount namespace and detaches the old root
/// entirely. Descriptors opened before stay valid.
pub fn pivot_into(dir: &Path) -> io::Result<()> {
    let c = cstr(dir)?;
    // SAFETY: chdir(2) with a valid NUL-terminated path.
    check("chdir into the new root", unsafe { libc::chdir(c.as_ptr()) }.into())?;
    let dot = c".";
    // SAFETY: pivot_root(2) through syscall(2) with two valid paths: the
    // directory becomes "/", the old root is stacked on it...
    check("pivot_root", unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr())
    })?;
    // ...and is then detached, leaving nothing outside the new root.
    // SAFETY: umount2(2) with a valid path.
    let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check("detaching the old root", rc.into())?;
    // SAFETY: chdir(2) with a valid path.
    check("chdir /", unsafe { libc::chdir(c"/".as_ptr()) }.into())
}

/// Enters a new mount namespace whose root is an empty read-only tmpfs
/// with the (empty) directories `keep`, e.g. `["etc", "run"]`. The host's
/// file system is no longer reachable by path; open descriptors (sockets,
/// taps, capture files) keep working. Needs CAP_SYS_ADMIN in the current
/// user namespace and a single-threaded process.
pub fn empty_root(keep: &[&str]) -> io::Result<()> {
    // SAFETY: unshare(2) takes only flags.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(
        "a new mount namespace (needs CAP_SYS_ADMIN, and no other threads)",
        rc.into(),
    )?;
    let mount = |src: Option<&std::ffi::CStr>,
                 target: &std::ffi::CStr,
                 fstype: Option<&std::ffi::CStr>,
                 flags: libc::c_ulong,
                 data: Option<&std::ffi::CStr>| {
        let p = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: every pointer is a valid NUL-terminated string or null,
        // as mount(2) allows for the operations used here.
        let rc = unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) };
        libc::c_long::from(rc)
    };
    // Keep our mounts from propagating back to the host.
    check(
        "making mounts private",
        mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None),
    )?;
    // A directory every host has, covered only in this namespace.
    let staging = c"/tmp";
    check(
        "mounting the empty root",
        mount(
            Some(c"tmpfs"),
            staging,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(c"mode=0755,size=64k"),
        ),
    )?;
    for dir in keep {
        std::fs::create_dir_all(Path::new("/tmp").join(dir))?;
    }
    check(
        "making the empty root read-only",
        mount(
            None,
            staging,
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
    )?;
    pivot_into(Path::new("/tmp"))
}

/// Drops every capability but `keep` from all five sets, and sets
/// no_new_privs so nothing can be regained by exec. A process without
/// capabilities (an unprivileged ferry) is left as it is.
pub fn drop_caps(keep: &[caps::Capability]) -> io::Result<()> {
    use caps::{CapSet, CapsHashSet};
    let err = |what: &str, e: caps::errors::CapsError| io::Error::other(format!("{what}: {e}"));
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // next step removes.
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| err("reading the bounding set", e))?;
    let effective = caps::read(None, CapSet::Effective).map_err(|e| err("reading capabilities", e))?;
    if effective.contains(&caps::Capability::CAP_SETPCAP) {
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(|e| err("dropping from the bounding set", e))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clearing ambient capabilities", e))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("reading capabilities", e))?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| err("clearing inheritable", e))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|e| err("setting effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| err("setting permitted capabilities", e))?;
    // SAFETY: prctl(2) with integer arguments only.
    check(
        "no_new_privs",
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into(),
    )
}

pub use caps::Capability;
