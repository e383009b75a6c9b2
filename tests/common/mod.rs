//! Shared harness for ferry's end-to-end tests: runs the real `ferry` binary
//! with a deadline, captures its output, and kills its whole process group
//! (QEMU and daemons included) when the test ends, passes or not.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the static guest-init once per test process (cargo itself makes
/// concurrent test processes wait for each other) and returns its path.
pub fn guest_init() -> PathBuf {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    INIT.get_or_init(|| {
        let root = repo_root();
        let status = Command::new(root.join("scripts/build-guest-init"))
            .status()
            .expect("running scripts/build-guest-init");
        assert!(status.success(), "scripts/build-guest-init failed");
        root.join("target/x86_64-unknown-linux-gnu/release/ferry-guest-init")
    })
    .clone()
}

/// Fails loudly (never skips) when a tool the suite needs is missing: the
/// README's test command installs them.
pub fn require_tool(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed; run `apt-get install {package}` (the README's test command does)"
    );
}

pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A `ferry` invocation under test.
pub struct Ferry {
    cmd: Command,
    timeout: Duration,
}

/// Kills the child's process group on drop.
pub struct Running {
    pub child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's process group; no memory involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Running {
    /// Kills the process group and returns what it printed on stdout.
    #[allow(dead_code)]
    pub fn kill_and_collect(&mut self) -> String {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's process group; no memory involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut s);
        }
        s
    }
}

impl Ferry {
    pub fn new<I, S>(args: I) -> Ferry
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Ferry::with_binary(Path::new(env!("CARGO_BIN_EXE_ferry")), args)
    }

    pub fn with_binary<I, S>(binary: &Path, args: I) -> Ferry
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(binary);
        // VMs started by tests are registered apart from the user's.
        let state = std::env::temp_dir().join(format!("ferry-test-state-{}", std::process::id()));
        cmd.args(args)
            .env("FERRY_GUEST_INIT", guest_init())
            .env("FERRY_STATE_DIR", state)
            .env_remove("RUST_LOG");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.process_group(0);
        Ferry {
            cmd,
            timeout: Duration::from_secs(120),
        }
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Ferry {
        self.cmd.env(key, value);
        self
    }

    pub fn timeout(mut self, t: Duration) -> Ferry {
        self.timeout = t;
        self
    }

    pub fn spawn(mut self) -> Running {
        Running {
            child: self.cmd.spawn().expect("spawning ferry"),
        }
    }

    /// Runs to completion or the deadline (then kills it and panics).
    pub fn output(self) -> Output {
        let timeout = self.timeout;
        let mut running = self.spawn();
        let mut out = running.child.stdout.take().unwrap();
        let mut err = running.child.stderr.take().unwrap();
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = running.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > timeout {
                drop(running);
                panic!(
                    "ferry did not finish within {timeout:?}; killed. stderr:\n{}",
                    err_t.join().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            code: status.code(),
            stdout: out_t.join().unwrap(),
            stderr: err_t.join().unwrap(),
        }
    }
}

/// Children of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4 (ppid) follows the parenthesised command name.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            found.push(child);
        }
    }
    found
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}
/// The Internet checksum (RFC 1071) of `data`, for hand-built frames.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The unprivileged user the tests that need one run as.
pub const TEST_USER: &str = "ferrytest";

/// The unprivileged user with subordinate ids that rootless podman and
/// rootlesskit need; created on first use.
pub fn test_user() -> u32 {
    let id = || {
        Command::new("id")
            .args(["-u", TEST_USER])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    };
    if id().is_none() {
        let _ = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", TEST_USER])
            .status();
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{TEST_USER}:"))) {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(file)
                .unwrap();
            std::io::Write::write_fmt(&mut f, format_args!("{TEST_USER}:300000:65536\n")).unwrap();
        }
    }
    id().expect("creating the test user")
}

pub mod dns;
pub mod netns;

/// A request to ferry's control API with curl: (HTTP status, JSON body or Null).
pub fn api_curl(sock: &Path, args: &[&str]) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(sock)
        .args(args)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').expect("curl status line");
    (
        code.parse().expect("HTTP status"),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// A DHCP message (`kind`: 1 DISCOVER, 3 REQUEST) from `mac`, asking for
/// `requested` (option 50), as a broadcast Ethernet frame (UDP checksum 0 =
/// none).
#[allow(dead_code)]
pub fn dhcp_frame(mac: [u8; 6], kind: u8, requested: Option<[u8; 4]>) -> Vec<u8> {
    let mut dhcp = vec![0u8; 240];
    dhcp[..3].copy_from_slice(&[1, 1, 6]);
    dhcp[4..8].copy_from_slice(&[9, 9, 9, 9]);
    dhcp[28..34].copy_from_slice(&mac);
    dhcp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    dhcp.extend_from_slice(&[53, 1, kind]);
    if let Some(ip) = requested {
        dhcp.extend_from_slice(&[50, 4]);
        dhcp.extend_from_slice(&ip);
    }
    dhcp.push(255);
    let udp = [
        &[0u8, 68, 0, 67][..],
        &((8 + dhcp.len()) as u16).to_be_bytes(),
        &[0, 0],
        &dhcp,
    ]
    .concat();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255];
    ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    let sum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    [&[0xff; 6][..], &mac, &[0x08, 0x00], &ip, &udp].concat()
}

/// The DHCP message type and `yiaddr` of a frame from the server, if it is one.
#[allow(dead_code)]
pub fn dhcp_reply(f: &[u8]) -> Option<(u8, [u8; 4])> {
    if f.len() > 42 + 240 && f[12..14] == [8, 0] && f[23] == 17 && f[34..36] == [0, 67] {
        let opts = &f[42 + 240..];
        let kind = opts.windows(3).find(|w| w[0] == 53 && w[1] == 1).map(|w| w[2])?;
        return Some((kind, f[42 + 16..42 + 20].try_into().unwrap()));
    }
    None
}
