//! The seccomp allow-list. Crates list the system calls their code makes
//! in `SYSCALLS` constants beside that code; [`install`] joins those with
//! [`RUNTIME`] (what std and tokio need in any program) into one filter.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What a call outside the list gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No filter.
    None,
    /// The call fails with EPERM (slirp4netns's `--enable-seccomp`: a
    /// refused call fails, the daemon keeps running).
    Errno,
    /// The process is killed (SIGSYS).
    Kill,
    /// The call is allowed and logged by the kernel (audit log / dmesg).
    Log,
    /// SIGSYS is delivered: ferry writes the call's name to stderr, then
    /// the process ends by that signal (a core dump where enabled).
    Trap,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "none" => Mode::None,
            "errno" => Mode::Errno,
            "kill" => Mode::Kill,
            "log" => Mode::Log,
            "trap" => Mode::Trap,
            _ => return None,
        })
    }
}

/// What every Rust program on a tokio runtime calls after start-up:
/// memory, threads' futexes, the epoll reactor, timers, signals, stderr.
pub const RUNTIME: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getrandom,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_prctl,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_clone,
    libc::SYS_clone3,
];

/// The same on x86_64, where std, tokio and libraries may still reach for
/// the calls that aarch64 never had (its kernel has only the *at forms).
#[cfg(target_arch = "x86_64")]
const LEGACY: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_poll,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_unlink,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_rename,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[libc::c_long] = &[];

/// `ferry: seccomp: NAME (system call N) is not in ferry's allow-list`,
/// written from the SIGSYS handler: async-signal-safe (a stack buffer and
/// write(2), no allocation, no locks).
extern "C" fn report_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: for SIGSYS the kernel fills siginfo's _sigsys member: after
    // si_signo, si_errno, si_code (and padding to 16 bytes) come
    // `void *_call_addr` and `int _syscall`, on every LP64 target.
    let nr = unsafe {
        *info
            .cast::<u8>()
            .add(16 + std::mem::size_of::<usize>())
            .cast::<libc::c_int>()
    };
    let mut buf = [0u8; 160];
    let mut at = 0;
    let mut put = |b: &[u8]| {
        let n = b.len().min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&b[..n]);
        at += n;
    };
    put(b"ferry: seccomp: ");
    let name = usize::try_from(nr)
        .ok()
        .and_then(|i| crate::syscall_names::NAMES.get(i))
        .copied()
        .unwrap_or("");
    put(if name.is_empty() {
        b"unknown call"
    } else {
        name.as_bytes()
    });
    put(b" (system call ");
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b") is not in ferry's allow-list; please report it\n");
    // SAFETY: write(2) of our own buffer to stderr; then SIGSYS's default
    // action is restored and the signal raised again to end the process.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), at);
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::raise(libc::SIGSYS);
    }
}

/// Installs the allow-list made of [`RUNTIME`] and `lists` on every thread
/// of the process. `Mode::None` installs nothing.
pub fn install(mode: Mode, lists: &[&[libc::c_long]]) -> io::Result<()> {
    let mismatch = match mode {
        Mode::None => return Ok(()),
        Mode::Errno => SeccompAction::Errno(libc::EPERM as u32),
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Trap => SeccompAction::Trap,
    };
    if mode == Mode::Trap {
        // SAFETY: sigaction(2) with a zeroed, then filled, struct whose
        // handler has the SA_SIGINFO signature.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = report_sigsys as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let mut rules = BTreeMap::new();
    for call in RUNTIME.iter().chain(LEGACY).chain(lists.iter().flat_map(|l| l.iter())) {
        rules.insert(*call, Vec::new());
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| io::Error::other(format!("seccomp on {}: {e}", std::env::consts::ARCH)))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| io::Error::other(format!("building the seccomp filter: {e}")))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e| io::Error::other(format!("compiling the seccomp filter: {e:?}")))?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| io::Error::other(format!("installing the seccomp filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_outside_the_list_is_refused() {
        // In a child process, so the test runner keeps its freedom.
        // SAFETY: fork(2); the child only makes raw calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match install(Mode::Errno, &[]) {
                // SAFETY: getppid(2) has no arguments; not in the list.
                Ok(()) => match unsafe { libc::syscall(libc::SYS_getppid) } {
                    -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) => 0,
                    _ => 1,
                },
                Err(_) => 2,
            };
            // SAFETY: _exit(2) from the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "getppid was not refused with EPERM");
        assert_eq!(Mode::parse("kill"), Some(Mode::Kill));
        assert_eq!(Mode::parse("maybe"), None);
    }

    #[test]
    fn trap_mode_names_the_refused_call() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fork(2); the child only redirects stderr, installs the
        // filter and makes one refused call.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: dup2(2)/getppid(2)/_exit(2) in the forked child.
            unsafe {
                libc::dup2(fds[1], 2);
                if install(Mode::Trap, &[]).is_ok() {
                    libc::syscall(libc::SYS_getppid);
                }
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let mut out = [0u8; 512];
        // SAFETY: read(2) into our buffer from the pipe's read end.
        let n = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), out.len()) };
        let said = String::from_utf8_lossy(&out[..n.max(0) as usize]).to_string();
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status}: {said}"
        );
        assert!(said.contains("getppid (system call"), "{said}");
    }
}
