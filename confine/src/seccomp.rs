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
    /// SIGSYS is delivered to the process.
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
}
