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
impl OwnsFd for std::fs::File {}

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

/// Puts a descriptor into non-blocking mode.
pub fn set_nonblocking(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor the caller owns; F_GETFL takes no pointer.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes an integer.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads an eventfd's 8-byte counter (resetting it).
pub fn read_counter(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<u64> {
    let mut value = [0u8; 8];
    // SAFETY: `value` is a valid, writable 8-byte buffer for read(2).
    let n = unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr().cast(), value.len()) };
    match n {
        8 => Ok(u64::from_ne_bytes(value)),
        n if n < 0 => Err(std::io::Error::last_os_error()),
        _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Most descriptors one message may carry (vhost-user's limit is 8).
const MAX_PASSED_FDS: usize = 8;

/// Receives up to `buf.len()` bytes and the descriptors passed with them
/// (SCM_RIGHTS). Descriptors beyond [`MAX_PASSED_FDS`] are closed.
pub fn recv_with_fds(
    sock: &impl std::os::fd::AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> std::io::Result<usize> {
    use std::os::fd::FromRawFd;
    const SPACE: usize = 8 * std::mem::size_of::<libc::c_int>() + 64;
    let mut control = [0u64; SPACE / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `control`, both
        // alive and writable for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk the
    // control buffer within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and inside the control buffer.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<libc::c_int>();
            // SAFETY: the data of an SCM_RIGHTS message is `count` ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            for i in 0..count {
                // SAFETY: `i < count`, within the message's data; unaligned
                // read because CMSG_DATA need not be int-aligned.
                let raw = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel just installed `raw` in this process
                // for us; nothing else owns it.
                let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
                if fds.len() < MAX_PASSED_FDS {
                    fds.push(fd);
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(n)
}

/// Binds a unix listening socket at `path`, even when the path is longer
/// than `sockaddr_un` holds (108 bytes; podman's runtime directories can
/// exceed it): the socket is then bound through a descriptor of its
/// directory, `/proc/self/fd/N/NAME`, on Linux.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    const SUN_PATH: usize = 108;
    if path.as_os_str().len() < SUN_PATH || cfg!(not(target_os = "linux")) {
        return std::os::unix::net::UnixListener::bind(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return std::os::unix::net::UnixListener::bind(path);
    };
    let dir = std::fs::File::open(dir)?;
    let short = std::path::Path::new("/proc/self/fd")
        .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
        .join(name);
    std::os::unix::net::UnixListener::bind(short)
}

/// A page-aligned anonymous mapping that holds one of a TCP socket's ring
/// buffers. A `Vec` from the allocator starts 16 bytes into a page, so the
/// page where a ring's small messages live could never be given back;
/// this one starts on a page and is given back whole ([`PageRing::release`]).
/// Its pages are zero until first touched, like `vec![0; n]`'s.
pub struct PageRing {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

#[cfg(target_os = "linux")]
const MAP_ANON: libc::c_int = libc::MAP_ANONYMOUS;
#[cfg(not(target_os = "linux"))]
const MAP_ANON: libc::c_int = libc::MAP_ANON;

impl PageRing {
    pub fn new(len: usize) -> std::io::Result<PageRing> {
        let len = len.max(1);
        // SAFETY: a fresh private anonymous mapping with no address hint;
        // the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | MAP_ANON,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(PageRing { ptr, len })
    }

    /// The mapping as a socket buffer's storage.
    ///
    /// # Safety
    /// Whatever holds the slice must be dropped before this `PageRing`.
    pub unsafe fn storage(&mut self) -> &'static mut [u8] {
        // SAFETY: `len` bytes mapped read-write at `ptr`, alive until drop
        // (the caller keeps every user of the slice shorter-lived).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Gives every page back to the kernel; the contents become zeros on
    /// Linux and undefined elsewhere.
    ///
    /// # Safety
    /// No byte of the ring may be live, and no reference into it in use.
    pub unsafe fn release(&self) {
        // SAFETY: the whole mapping is ours; the caller guarantees its
        // contents are dead.
        unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_DONTNEED) };
    }
}

impl Drop for PageRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; users of `storage` are gone.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_size() -> usize {
        // SAFETY: sysconf(3) has no preconditions.
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
    }

    #[test]
    fn a_page_ring_starts_on_a_page_and_gives_every_page_back() {
        let mut ring = PageRing::new(3 * page_size()).unwrap();
        // SAFETY: the slice is dropped before `ring`.
        let bytes = unsafe { ring.storage() };
        assert_eq!(bytes.as_ptr() as usize % page_size(), 0);
        assert!(bytes.iter().all(|&b| b == 0), "zero-filled");
        bytes[0] = 7;
        bytes[3 * page_size() - 1] = 9;
        // SAFETY: nothing in it is needed any more.
        unsafe { ring.release() };
        #[cfg(target_os = "linux")]
        assert!(
            bytes[0] == 0 && bytes[3 * page_size() - 1] == 0,
            "the first and last pages went back too"
        );
    }
}
