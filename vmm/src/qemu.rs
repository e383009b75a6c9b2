//! Builds and supervises a `qemu-system-x86_64` process for one guest.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::console::{parse_line, ConsoleLine};

/// How QEMU executes guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// Extra `-device` options for a virtio-pci device with a vhost back
    /// end. QEMU 7.2 under TCG (no irqfd) crashes wiring MSI-X vectors to
    /// vhost, so there the device uses legacy interrupts.
    pub fn vhost_pci_options(self) -> &'static str {
        match self {
            Accel::Kvm => "",
            Accel::Tcg => ",vectors=0",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The VM process could not be started.
    #[error("cannot start {binary}: {source}; {hint}")]
    Spawn {
        binary: String,
        source: std::io::Error,
        hint: &'static str,
    },
    /// Reading the console or waiting for QEMU failed.
    #[error("supervising QEMU: {0}")]
    Io(#[from] std::io::Error),
    /// The guest did not finish in time.
    #[error("guest did not finish within {0:?}; it was killed")]
    Timeout(Duration),
    /// QEMU ended without the guest reporting an exit status.
    #[error("the guest stopped without reporting an exit status (QEMU {status}); last console lines:\n{tail}")]
    NoExitStatus { status: String, tail: String },
}

/// One VM's QEMU command line.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line, including the `ferry.*` keys.
    pub cmdline: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// Extra QEMU arguments for devices attached by other subsystems
    /// (vhost-user-fs, netdev stream, vsock).
    pub device_args: Vec<String>,
}

impl QemuConfig {
    pub fn new(kernel: PathBuf, initrd: PathBuf, cmdline: String) -> Self {
        QemuConfig {
            binary: PathBuf::from("qemu-system-x86_64"),
            kernel,
            initrd,
            cmdline,
            memory_mib: 512,
            cpus: 1,
            accel: Accel::Tcg,
            device_args: Vec::new(),
        }
    }

    /// The full argument list. Guest RAM is a shared memfd so that
    /// vhost-user back ends in other processes can map it.
    pub fn args(&self) -> Vec<String> {
        let mem = format!("memory-backend-memfd,id=mem,size={}M,share=on", self.memory_mib);
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        let mut args: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-machine",
            "q35,memory-backend=mem",
            "-object",
            &mem,
            "-accel",
            self.accel.as_str(),
            "-cpu",
            cpu,
            "-m",
            &format!("{}M", self.memory_mib),
            "-smp",
            &self.cpus.to_string(),
            "-kernel",
            &self.kernel.to_string_lossy(),
            "-initrd",
            &self.initrd.to_string_lossy(),
            "-append",
            &self.cmdline,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.device_args.iter().cloned());
        args
    }

    /// Starts QEMU with the serial console on a pipe.
    pub fn spawn(&self) -> Result<VmProcess, QemuError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args());
        tracing::debug!(args = ?self.args(), "starting QEMU");
        VmProcess::start(cmd, "install it with `apt-get install qemu-system-x86`")
    }
}

impl VmProcess {
    /// Starts a VM process (QEMU, or `ferry vmm`) whose stdout is the
    /// guest's serial console. It is put in its own process group and is
    /// killed if this process dies, so it never outlives ferry. `hint`
    /// says what to do when it cannot be started.
    pub fn start(mut cmd: Command, hint: &'static str) -> Result<VmProcess, QemuError> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.process_group(0);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe,
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let binary = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            binary: binary.clone(),
            source,
            hint,
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // The VM process's own complaints go to our log, line by line.
        if let Some(stderr) = stderr {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    // ferry itself stops QEMU with SIGTERM (`ferry stop`, -it).
                    if line.contains("terminating on signal") {
                        tracing::debug!(target: "vm", "{line}");
                    } else {
                        tracing::warn!(target: "vm", "{binary}: {line}");
                    }
                }
            });
        }
        Ok(VmProcess { child, console: stdout })
    }
}

/// A running VM process; killed when dropped.
pub struct VmProcess {
    child: Child,
    console: Option<ChildStdout>,
}

/// How a guest run ended.
#[derive(Debug, PartialEq, Eq)]
pub struct GuestExit {
    pub code: i32,
    /// Set when guest-init could not run the workload (`config`, `mount`…).
    pub error: Option<String>,
}

impl VmProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Streams the console until the guest reports its exit, then waits for
    /// QEMU to power off. Lines before `FERRY_START` go to `on_boot_line`,
    /// the workload's lines to `on_output`.
    pub fn wait_guest(
        &mut self,
        timeout: Option<Duration>,
        on_boot_line: &mut dyn FnMut(&str),
        on_output: &mut dyn FnMut(&str),
    ) -> Result<GuestExit, QemuError> {
        let console = self
            .console
            .take()
            .ok_or_else(|| std::io::Error::other("console already consumed"))?;
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(console);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches('\n').to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut started = false;
        let mut exit = None;
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        loop {
            let wait = match deadline {
                Some((at, limit)) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.kill();
                        return Err(QemuError::Timeout(limit));
                    }
                    left
                }
                None => Duration::from_secs(3600),
            };
            let line = match rx.recv_timeout(wait) {
                Ok(line) => line,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match parse_line(&line) {
                ConsoleLine::Start => started = true,
                ConsoleLine::Exit { code, error } => {
                    exit = Some(GuestExit {
                        code,
                        error: error.map(String::from),
                    });
                }
                ConsoleLine::Text(text) => {
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(text.to_string());
                    if started && exit.is_none() {
                        on_output(text);
                    } else {
                        on_boot_line(text);
                    }
                }
            }
        }
        // The console closed: QEMU is exiting. Give it a moment, then insist.
        let status = self.wait_exit(Duration::from_secs(5))?;
        match exit {
            Some(exit) => Ok(exit),
            None => Err(QemuError::NoExitStatus {
                status: status.map_or("was killed".into(), |s| s.to_string()),
                tail: Vec::from(tail).join("\n"),
            }),
        }
    }

    fn wait_exit(&mut self, grace: Duration) -> Result<Option<std::process::ExitStatus>, QemuError> {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Ok(None)
    }

    /// Kills QEMU and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shares_memory_and_boots_direct() {
        let mut cfg = QemuConfig::new("/k".into(), "/i".into(), "console=ttyS0".into());
        cfg.memory_mib = 256;
        cfg.device_args = vec!["-device".into(), "virtio-rng-pci".into()];
        let args = cfg.args();
        let joined = args.join(" ");
        assert!(joined.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(joined.contains("-machine q35,memory-backend=mem"));
        assert!(joined.contains("-kernel /k -initrd /i -append console=ttyS0"));
        assert!(joined.ends_with("-device virtio-rng-pci"));
        assert!(joined.contains("-accel tcg"));
    }

    #[test]
    fn missing_binary_names_the_package() {
        let mut cfg = QemuConfig::new("/k".into(), "/i".into(), String::new());
        cfg.binary = "/nonexistent/qemu".into();
        let err = cfg.spawn().err().expect("spawn must fail").to_string();
        assert!(err.contains("qemu-system-x86"), "{err}");
    }
}
