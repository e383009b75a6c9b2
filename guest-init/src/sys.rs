//! Safe wrappers around the raw syscalls PID 1 needs; the only `unsafe` in
//! guest-init lives here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: Option<&str>) -> io::Result<()> {
    let (source, target, fstype) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    let data = data.map(cstr).transpose()?;
    let data_ptr = data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: every pointer is a valid NUL-terminated string (or null for
    // data) that outlives the call.
    check(unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data_ptr) })
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// Loads a kernel module from an open file (finit_module(2)).
pub fn finit_module(file: &File, params: &str) -> io::Result<()> {
    let params = cstr(params)?;
    // SAFETY: the fd is open for the duration of the call and params is a
    // valid C string.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Flushes filesystems and powers the machine off; only returns on failure.
pub fn power_off() -> io::Error {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with a valid command; as PID 1 we hold the capability.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

/// The signals PID 1 handles synchronously instead of through handlers.
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, initialised sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
    }
    set
}

/// Blocks the handled signals so that `wait_signal` can collect them. Children
/// spawned through std::process start with an empty mask again.
pub fn block_signals() -> io::Result<()> {
    let set = handled_signals();
    // SAFETY: `set` is initialised; the old mask is not needed.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })
}

/// Waits up to `timeout` for one of the handled signals; `None` on timeout.
pub fn wait_signal(timeout: Duration) -> Option<libc::c_int> {
    let set = handled_signals();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: `set` and `ts` are valid for the call; siginfo is not requested.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Reaps one exited child without blocking: `Some((pid, status))`.
pub fn reap_one() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory arguments; a stale pid only yields ESRCH.
    unsafe { libc::kill(pid, sig) };
}

/// Converts a wait status to a shell-style exit code (128+N for signals).
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

pub fn setxattr(path: &str, name: &str, value: &[u8]) -> io::Result<()> {
    let (path, name) = (cstr(path)?, cstr(name)?);
    // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
    check(unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

pub fn getxattr(path: &str, name: &str) -> io::Result<Vec<u8>> {
    let (path, name) = (cstr(path)?, cstr(name)?);
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: valid strings; the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// A shared mapping of a whole file, unmapped on drop.
pub struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    pub fn new(file: &File, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of an open file; the kernel picks the address.
        let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.addr.cast(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; writable mappings come from `new(.., true)` and
        // `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast(), self.len) }
    }

    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: msync(2) on exactly the mapping this value owns.
        check(unsafe { libc::msync(self.addr, self.len, libc::MS_SYNC) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns; no slice outlives it.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}
