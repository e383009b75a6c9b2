//! Safe wrappers for the few portable (POSIX) syscalls the core needs.
#![allow(unsafe_code)]

pub fn effective_gid() -> u32 {
    // SAFETY: getegid(2) takes no arguments and cannot fail.
    unsafe { libc::getegid() }
}

/// Raises the soft open-file limit to the hard limit (or `want`, if lower)
/// and returns the new soft limit: every NAT flow holds a host socket.
pub fn raise_nofile_limit(want: Option<u64>) -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for getrlimit(2).
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let target = want.map_or(lim.rlim_max, |w| w.min(lim.rlim_max));
    if target > lim.rlim_cur {
        lim.rlim_cur = target;
        // SAFETY: `lim` is a valid, initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Registers an fd-owning value with the tokio reactor.
pub fn async_fd<T: OwnsFd>(inner: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T: OwnsFd` owns its descriptor exclusively, so it stays open
    // and unchanged for as long as the AsyncFd holds it.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(std::io::Error::from)
}

/// Types that exclusively own one file descriptor for their whole life.
pub trait OwnsFd: std::os::fd::AsRawFd {}
impl OwnsFd for std::os::fd::OwnedFd {}
impl OwnsFd for socket2::Socket {}

/// Removes a socket file left at `path` by an earlier run (anything that is
/// not a socket is left alone, so bind then fails with a clear error).
pub fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Restricts a socket file to its owner.
pub fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
}
