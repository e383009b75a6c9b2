//! Confining the server to the shared directory, as virtiofsd's
//! `--sandbox` modes do. Must run before any thread is started: a mount
//! namespace applies to the calling thread and the threads it creates.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::options::SandboxMode;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(what: &str, rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

fn mount(src: Option<&CString>, target: &CString, flags: libc::c_ulong) -> libc::c_int {
    let src = src.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a valid NUL-terminated string or null, as
    // mount(2) allows for a bind/remount/propagation change.
    unsafe { libc::mount(src, target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) }
}

/// A sandbox half set up: the share's mounts are in place, the process is
/// not yet confined. Create the file system now (it keeps a descriptor of
/// `/proc/self/fd`), then call [`Prepared::confine`]; it opens its root,
/// [`Prepared::root`], when the guest's FUSE INIT arrives.
pub struct Prepared {
    mode: SandboxMode,
    dir: PathBuf,
}

impl Prepared {
    /// Where the share will be seen once confined ("/" unless mode none).
    pub fn root(&self) -> PathBuf {
        match self.mode {
            SandboxMode::None => self.dir.clone(),
            SandboxMode::Chroot | SandboxMode::Namespace => PathBuf::from("/"),
        }
    }

    /// Leaves only the share visible to this process.
    pub fn confine(self) -> io::Result<()> {
        let c = cstr(&self.dir)?;
        match self.mode {
            SandboxMode::None => Ok(()),
            SandboxMode::Chroot => {
                // SAFETY: chroot(2) with a valid NUL-terminated path.
                let rc = unsafe { libc::chroot(c.as_ptr()) };
                check("chroot into the shared directory (needs root; try --sandbox none)", rc)?;
                // SAFETY: chdir(2) with a valid path.
                check("chdir /", unsafe { libc::chdir(c"/".as_ptr()) })
            }
            SandboxMode::Namespace => {
                // SAFETY: chdir(2) with a valid path.
                check("chdir into the share", unsafe { libc::chdir(c.as_ptr()) })?;
                let dot = c".";
                // SAFETY: pivot_root(2) through syscall(2) with two valid
                // paths: the share becomes "/", the old root is stacked on it...
                check("pivot_root into the share", unsafe {
                    libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int
                })?;
                // ...and is then detached, leaving nothing outside the share.
                // Descriptors opened before (the share, /proc/self/fd) stay valid.
                // SAFETY: umount2(2) with a valid path.
                check("detaching the old root", unsafe {
                    libc::umount2(dot.as_ptr(), libc::MNT_DETACH)
                })?;
                // SAFETY: chdir(2) with a valid path.
                check("chdir /", unsafe { libc::chdir(c"/".as_ptr()) })
            }
        }
    }
}

/// First half of confining this process to `dir`: in namespace mode, a
/// private mount namespace with the share bind-mounted on itself, read-only
/// when `readonly` (so the host kernel itself refuses every write).
pub fn prepare(mode: SandboxMode, dir: &Path, readonly: bool) -> io::Result<Prepared> {
    if readonly && mode != SandboxMode::Namespace {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--readonly needs --sandbox namespace (the read-only mount lives in ferry's own mount namespace)",
        ));
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("shared directory {}: {e}", dir.display())))?;
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shared directory {} is not a directory", dir.display()),
        ));
    }
    if mode == SandboxMode::Namespace {
        let c = cstr(&dir)?;
        // SAFETY: unshare(2) takes only flags.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        check(
            "a new mount namespace (needs root or CAP_SYS_ADMIN; try --sandbox chroot or none)",
            rc,
        )?;
        let root = c"/".to_owned();
        // Keep our mounts from propagating back to the host.
        check(
            "making mounts private",
            mount(None, &root, libc::MS_REC | libc::MS_PRIVATE),
        )?;
        check(
            "bind-mounting the shared directory",
            mount(Some(&c), &c, libc::MS_BIND | libc::MS_REC),
        )?;
        if readonly {
            check(
                "making the share read-only",
                mount(None, &c, libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY),
            )?;
        }
    }
    Ok(Prepared { mode, dir })
}
