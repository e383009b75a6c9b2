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

/// Flushes filesystems and powers the machine off (or reboots it, with
/// `ferry.halt=reboot`: machines without ACPI, such as ferry's built-in
/// VMM, end when the guest resets); only returns on failure.
pub fn power_off() -> io::Error {
    let reboot = std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|line| line.split_ascii_whitespace().any(|w| w == "ferry.halt=reboot"));
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let how = if reboot { libc::RB_AUTOBOOT } else { libc::RB_POWER_OFF };
    // SAFETY: reboot(2) with a valid command; as PID 1 we hold the capability.
    unsafe { libc::reboot(how) };
    io::Error::last_os_error()
}

/// Firecracker's boot timer: a write of 123 to I/O port 0x80 tells the
/// VMM that userspace is up (it logs the time since start). QEMU ignores
/// the port; where port access is refused (not PID 1) nothing happens.
pub fn signal_boot_timer() {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: ioperm(2) only changes this process's I/O permission map.
        if unsafe { libc::ioperm(0x80, 1, 1) } != 0 {
            return;
        }
        // SAFETY: port 0x80 is the POST/diagnostic port, with no effect
        // on guest state; ioperm above granted access to it.
        unsafe { std::arch::asm!("out 0x80, al", in("al") 123u8, options(nomem, nostack, preserves_flags)) };
    }
}

/// The signals PID 1 handles synchronously instead of through handlers.
/// Wakes PID 1's main thread for work queued by other threads.
pub const WAKE_SIGNAL: libc::c_int = libc::SIGUSR1;

fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, initialised sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, WAKE_SIGNAL] {
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

/// A listening AF_VSOCK stream socket on `port` (any CID).
pub fn vsock_listen(port: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(unsafe { libc::bind(fd, std::ptr::addr_of!(addr).cast(), len) })?;
    // SAFETY: listen(2) on our own socket.
    check(unsafe { libc::listen(fd, 16) })?;
    Ok(owned)
}

/// A stream connected to the host (CID 2) on vsock `port`.
pub fn vsock_connect_host(port: u32) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_HOST;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast(), len) })?;
    Ok(file)
}

/// Accepts one connection on a listening socket.
pub fn accept(listener: &std::os::fd::OwnedFd) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: accept4(2) on a listening socket we own, without an address.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from accept4, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A new pseudo-terminal: (master, slave).
pub fn openpty() -> io::Result<(File, File)> {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty(3) writes two descriptors; no name, termios or size.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    // SAFETY: both are fresh descriptors owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) })
}

pub fn set_winsize(tty: &File, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) })
}

/// Makes `cmd`'s child a session leader with `tty` (already its stdio) as
/// its controlling terminal, so ^C and ^Z on the terminal reach it.
pub fn controlling_tty(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) and ioctl(2) are async-signal-safe and touch no
    // memory of the parent; fd 0 is the pty slave by then.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// PID 1 blocks the signals it waits for, and a blocked mask survives
/// exec: give `cmd`'s child the empty mask a program expects, so SIGINT,
/// SIGTERM and SIGHUP reach it.
pub fn default_signal_mask(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe and only
    // touch the child's own stack and mask.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Refetches `path`'s attributes from the file system (FUSE: a GETATTR),
/// whatever the guest had cached.
pub fn refresh_attrs(path: &str) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: statx is plain data; the kernel fills it.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and out-pointer.
    check(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    })
}

/// Drops `file`'s cached pages, so reads fetch the new content.
pub fn drop_cached_pages(file: &File) {
    // SAFETY: posix_fadvise(2) on an open descriptor; advice only.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// fallocate(2) without changing the size: the file system sees a write
/// (the kernel raises IN_MODIFY) and the data stays as it is.
pub fn touch_allocation(file: &File) -> io::Result<()> {
    // SAFETY: fallocate(2) on an open descriptor with constant arguments.
    check(unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1) })
}

/// An inotify descriptor watching `dir` for the events a file watcher uses.
pub fn inotify_watch(dir: &str) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: inotify_init1(2) takes only flags; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let c = cstr(dir)?;
    let mask = libc::IN_CREATE
        | libc::IN_MODIFY
        | libc::IN_CLOSE_WRITE
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_ATTRIB;
    // SAFETY: a valid path and our inotify descriptor.
    if unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Runs `cmd`'s child inside `root` (its working directory must already be
/// a directory under `root`).
pub fn chroot_child(cmd: &mut std::process::Command, root: &str) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let root = cstr(root)?;
    // SAFETY: chroot(2) is async-signal-safe and reads only `root`, which
    // the closure owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
