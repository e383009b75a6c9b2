//! Confining the server to the shared directory, as virtiofsd's
//! `--sandbox` modes do. Must run before any thread is started: a mount
//! namespace applies to the calling thread and the threads it creates.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
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

/// A sandbox half set up: the shares' mounts are in place, the process is
/// not yet confined. Create the file systems now (each keeps a descriptor
/// of `/proc/self/fd`), then call [`Prepared::confine`]; each opens its
/// root, [`Prepared::root`], when its guest's FUSE INIT arrives.
pub struct Prepared {
    mode: SandboxMode,
    dirs: Vec<PathBuf>,
    /// Namespace mode: the tmpfs that becomes "/", with share `i`
    /// bind-mounted at `/i` and this process's fd directory at
    /// `/proc/self/fd`.
    staging: Option<PathBuf>,
}

/// Where the shares are gathered before the process pivots into them:
/// a directory every host has, covered by a tmpfs in ferry's own mount
/// namespace only (the shares are bound from descriptors opened before).
const STAGING: &str = "/tmp";

impl Prepared {
    /// Where share `i` will be seen once confined.
    pub fn root(&self, i: usize) -> PathBuf {
        match (self.mode, &self.staging) {
            (SandboxMode::None, _) => self.dirs[i].clone(),
            (_, Some(_)) => PathBuf::from(format!("/{i}")),
            _ => PathBuf::from("/"),
        }
    }

    /// Whether the file systems are to be created after [`Prepared::confine`]
    /// (namespace mode, whose new root carries what they open from /proc)
    /// rather than before (chroot: nothing of /proc inside).
    pub fn open_after_confine(&self) -> bool {
        self.mode == SandboxMode::Namespace
    }

    /// Leaves only the shares visible to this process.
    pub fn confine(&self) -> io::Result<()> {
        let new_root = self.staging.as_ref().unwrap_or(&self.dirs[0]);
        match self.mode {
            SandboxMode::None => Ok(()),
            SandboxMode::Chroot => {
                let c = cstr(new_root)?;
                // SAFETY: chroot(2) with a valid NUL-terminated path.
                let rc = unsafe { libc::chroot(c.as_ptr()) };
                check("chroot into the shared directory (needs root; try --sandbox none)", rc)?;
                // SAFETY: chdir(2) with a valid path.
                check("chdir /", unsafe { libc::chdir(c"/".as_ptr()) })
            }
            // The pivot is ferry-confine's, shared with every confined mode.
            SandboxMode::Namespace => ferry_confine::pivot_into(new_root)
                .map_err(|e| io::Error::new(e.kind(), format!("pivot_root into the share: {e}"))),
        }
    }
}

fn canonical_dir(dir: &Path) -> io::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("shared directory {}: {e}", dir.display())))?;
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shared directory {} is not a directory", dir.display()),
        ));
    }
    Ok(dir)
}

fn bind(src: &CString, target: &CString, readonly: bool) -> io::Result<()> {
    check(
        "bind-mounting the shared directory",
        mount(Some(src), target, libc::MS_BIND | libc::MS_REC),
    )?;
    if readonly {
        check(
            "making the share read-only",
            mount(None, target, libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY),
        )?;
    }
    Ok(())
}

/// First half of confining this process to `dir`: in namespace mode, a
/// private mount namespace whose root will be a read-only tmpfs holding
/// the share, bind-mounted read-only when `readonly` (so the host kernel
/// itself refuses every write).
pub fn prepare(mode: SandboxMode, dir: &Path, readonly: bool) -> io::Result<Prepared> {
    prepare_shares(mode, &[(dir, readonly)])
}

/// As [`prepare`], for several shares served by one process: each is seen
/// at [`Prepared::root`]`(i)`. In namespace mode they are bind-mounted into
/// a fresh read-only tmpfs that becomes the root; chroot can confine to
/// one directory only.
pub fn prepare_shares(mode: SandboxMode, shares: &[(&Path, bool)]) -> io::Result<Prepared> {
    if shares.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no directory to share"));
    }
    if mode != SandboxMode::Namespace && shares.iter().any(|&(_, ro)| ro) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--readonly needs --sandbox namespace (the read-only mount lives in ferry's own mount namespace)",
        ));
    }
    if mode == SandboxMode::Chroot && shares.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--sandbox chroot confines to one directory: serve several shares with --sandbox namespace (or none)",
        ));
    }
    let dirs = shares
        .iter()
        .map(|&(dir, _)| canonical_dir(dir))
        .collect::<io::Result<Vec<_>>>()?;
    if mode != SandboxMode::Namespace {
        return Ok(Prepared {
            mode,
            dirs,
            staging: None,
        });
    }
    // SAFETY: unshare(2) takes only flags.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(
        "a new mount namespace (needs root or CAP_SYS_ADMIN; try --sandbox chroot or none)",
        rc,
    )?;
    // Keep our mounts from propagating back to the host.
    check(
        "making mounts private",
        mount(None, &c"/".to_owned(), libc::MS_REC | libc::MS_PRIVATE),
    )?;
    // Handles on the shares, taken in the new namespace (a bind mount
    // takes its source from the caller's namespace) and before the tmpfs
    // covers any of them.
    let handles = dirs
        .iter()
        .map(|d| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(d)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let staging = PathBuf::from(STAGING);
    let st = cstr(&staging)?;
    let tmpfs = c"tmpfs";
    // SAFETY: valid NUL-terminated strings for source, target and type.
    let rc = unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            st.as_ptr(),
            tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0755".as_ptr().cast(),
        )
    };
    check("a tmpfs to gather the shares in", rc)?;
    for (i, (handle, &(_, readonly))) in handles.iter().zip(shares).enumerate() {
        let target = staging.join(i.to_string());
        std::fs::create_dir(&target)?;
        let src = cstr(Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())))?;
        bind(&src, &cstr(&target)?, readonly)?;
    }
    // fuse-backend-rs reaches xattrs through "/proc/self/fd/N" by path:
    // give the new root that one directory of /proc and nothing else.
    let fd_dir = staging.join("proc/self/fd");
    std::fs::create_dir_all(&fd_dir)?;
    check(
        "exposing this process's /proc/self/fd in the sandbox",
        mount(
            Some(&cstr(Path::new(&format!("/proc/{}/fd", std::process::id())))?),
            &cstr(&fd_dir)?,
            libc::MS_BIND,
        ),
    )?;
    // File handles (--inode-file-handles) are reopened through the mount
    // they came from, which fuse-backend-rs finds in /proc/self/mountinfo:
    // that file too, opened only once confined, so the paths in it are
    // the ones this process sees then.
    let mountinfo = staging.join("proc/self/mountinfo");
    std::fs::File::create(&mountinfo)?;
    check(
        "exposing this process's /proc/self/mountinfo in the sandbox",
        mount(
            Some(&cstr(Path::new(&format!("/proc/{}/mountinfo", std::process::id())))?),
            &cstr(&mountinfo)?,
            libc::MS_BIND,
        ),
    )?;
    check(
        "making the gathering tmpfs read-only",
        mount(
            None,
            &st,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        ),
    )?;
    Ok(Prepared {
        mode,
        dirs,
        staging: Some(staging),
    })
}
