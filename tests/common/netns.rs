//! The network-namespace rig: a throwaway namespace held by a child process
//! (it disappears with that process, so nothing leaks when a test fails), a
//! `ferry net` attached to it, and helpers to run code and commands inside.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{require_tool, Ferry, Running};

/// A network namespace alive as long as this value.
pub struct Netns {
    holder: Child,
}

impl Netns {
    /// A fresh namespace (as root; see `unprivileged` for the other case).
    pub fn new() -> Netns {
        Netns::spawn(Command::new("unshare"))
    }

    /// A user + network namespace created by `uid` (not root).
    pub fn unprivileged(uid: u32) -> Netns {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "unshare",
            "--user",
            "--map-root-user",
        ]);
        Netns::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Netns {
        require_tool("unshare", "util-linux");
        cmd.args(["--net", "--", "sleep", "600"]).stdin(Stdio::null());
        // SAFETY: prctl(2) between fork and exec, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let holder = cmd.spawn().expect("starting the namespace holder");
        let ns = Netns { holder };
        // Wait until the holder is inside its new namespace.
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(ns.path()).map_or(true, |l| l == own) {
            assert!(
                Instant::now() < deadline,
                "namespace holder never entered its namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ns
    }

    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// Runs `f` on a thread inside the namespace (sockets it creates live there).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns(2) on an fd we hold; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("in-namespace thread panicked")
    }

    /// Runs a command inside the namespace with a deadline.
    pub fn command(&self, args: &[&str], timeout: Duration) -> std::process::Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").args(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        cmd.process_group(0);
        let child = cmd.spawn().expect("nsenter");
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: kill(2) on the process group we started.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                panic!("{args:?} did not finish within {timeout:?}");
            }
        }
    }
}

impl Netns {
    /// Brings tap0 up and runs busybox udhcpc on it with `hostname` and the
    /// lease script `script`; returns udhcpc's output (stdout + stderr).
    pub fn udhcpc(&self, hostname: &str, script: &str) -> (bool, String) {
        let up = self.command(&["ip", "link", "set", "tap0", "up"], Duration::from_secs(10));
        assert!(up.status.success(), "ip link set tap0 up failed");
        let host = format!("hostname:{hostname}");
        let args = [
            "busybox", "udhcpc", "-i", "tap0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-x", &host, "-s", script,
        ];
        let out = self.command(&args, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

enum Launch<'a> {
    Direct,
    /// As this unprivileged user.
    As(u32),
    /// Inside this network namespace.
    In(&'a Netns),
}

/// A running `ferry net`, killed on drop; its stderr is collected.
pub struct FerryNet {
    pub running: Running,
    pub log: mpsc::Receiver<String>,
}

impl FerryNet {
    /// Starts `ferry net --netns NS ARGS...` and waits for it to be ready.
    pub fn start(ns: &Netns, args: &[&str]) -> FerryNet {
        FerryNet::start_with(ns, args, None)
    }

    /// Starts ferry itself inside `host` (its host sockets live there: a
    /// "host" with only a loopback and no routes), serving `ns`.
    pub fn start_hosted(ns: &Netns, host: &Netns, args: &[&str]) -> FerryNet {
        FerryNet::launch(ns, args, Launch::In(host))
    }

    pub fn start_with(ns: &Netns, args: &[&str], uid: Option<u32>) -> FerryNet {
        FerryNet::launch(ns, args, uid.map_or(Launch::Direct, Launch::As))
    }

    fn launch(ns: &Netns, args: &[&str], how: Launch<'_>) -> FerryNet {
        let netns = ns.path().display().to_string();
        let mut all: Vec<String> = vec!["net".into(), "--netns".into(), netns];
        all.extend(args.iter().map(|s| s.to_string()));
        let ferry = match how {
            Launch::Direct => Ferry::new(&all),
            Launch::In(host) => {
                let mut wrapped: Vec<String> = vec![
                    format!("--net={}", host.path().display()),
                    "--".into(),
                    env!("CARGO_BIN_EXE_ferry").into(),
                ];
                wrapped.extend(all);
                Ferry::with_binary(std::path::Path::new("/usr/bin/nsenter"), &wrapped)
            }
            Launch::As(uid) => {
                let mut wrapped: Vec<String> = vec![
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    env!("CARGO_BIN_EXE_ferry").into(),
                ];
                wrapped.extend(all);
                Ferry::with_binary(std::path::Path::new("/usr/bin/setpriv"), &wrapped)
            }
        };
        let mut running = ferry.spawn();
        let stderr = running.child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ferry] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("network ready") => break,
                Ok(_) => {}
                Err(_) => panic!("ferry net did not become ready: {:?}", running.child.try_wait()),
            }
        }
        FerryNet { running, log: rx }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.running.child.try_wait(), Ok(None))
    }
}

/// Deterministic bytes: xorshift64 from a seed.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Raises this process's open-file limit to its hard limit.
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// Echoes every byte back on each of the first `conns` connections `l`
/// accepts, a thread per connection; returns when it has accepted them.
#[allow(dead_code)]
pub fn echo_each(l: std::net::TcpListener, conns: usize) {
    use std::io::{Read, Write};
    for conn in l.incoming().take(conns) {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}
