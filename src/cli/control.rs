//! The host end of a VM's control channel: the vhost-user-vsock device
//! `ferry run` serves to QEMU, and `ferry exec`, which asks the guest agent
//! (guest-init) to run a process and relays its stdio and exit code.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// The guest's vsock address (the first guest CID; QEMU reads it from the
/// device's config space).
pub const GUEST_CID: u64 = 3;
/// The guest agent's vsock port (guest-init's `agent::PORT`).
pub const AGENT_PORT: u32 = 1024;
/// Where the guest agent takes host changes to replay (`agent::CHANGES_PORT`).
pub const CHANGES_PORT: u32 = 1025;

/// A VM's vsock device, served on a thread of the run's supervisor.
pub struct VsockDevice {
    vhost_socket: PathBuf,
}

impl VsockDevice {
    pub fn qemu_args(&self, accel: ferry_vmm::Accel) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", self.vhost_socket.display()),
            "-device".into(),
            format!("vhost-user-vsock-pci,chardev=vsock0{}", accel.vhost_pci_options()),
        ]
    }
}

/// Starts the device: QEMU connects to `run_dir/vsock.vhost`; host programs
/// to `vm_dir/vsock.sock` (`CONNECT PORT`), guest connections to host port P
/// go to `vm_dir/vsock.sock_P`.
#[cfg(target_os = "linux")]
pub fn start_vsock(run_dir: &Path, vm_dir: &Path) -> anyhow::Result<VsockDevice> {
    let vhost_socket = run_dir.join("vsock.vhost");
    let mut listener = vhost::vhost_user::Listener::new(&vhost_socket, true)
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", vhost_socket.display()))?;
    let device = ferry_vsock::device::VsockDevice::new(GUEST_CID, &vm_dir.join("vsock.sock"))?;
    std::thread::Builder::new().name("vsock-vhost".into()).spawn(move || {
        if let Err(e) = ferry_vsock::vhost_user::serve(&mut listener, device) {
            tracing::warn!("vsock: {e}");
        }
    })?;
    Ok(VsockDevice { vhost_socket })
}

#[cfg(not(target_os = "linux"))]
pub fn start_vsock(_run_dir: &Path, _vm_dir: &Path) -> anyhow::Result<VsockDevice> {
    anyhow::bail!("the QEMU vsock device needs Linux (vhost-user)")
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal (a pty in the guest); this terminal goes
    /// raw so ^C, ^Z and window size changes reach it.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this numeric user (and group) in the guest.
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// The VM (see `ferry ps`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + body.len());
    f.push(kind);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > 1 << 20 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// Connects to guest port `port` through the VM's hybrid vsock socket.
pub fn dial(vm_dir: &Path, port: u32) -> anyhow::Result<UnixStream> {
    let path = vm_dir.join("vsock.sock");
    let mut s = UnixStream::connect(&path).with_context(|| format!("connecting to {}", path.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    reader.read_line(&mut line)?;
    s.set_read_timeout(None)?;
    anyhow::ensure!(
        line.starts_with("OK "),
        "the guest did not accept a connection on vsock port {port} (is it still booting? {:?})",
        line.trim()
    );
    Ok(s)
}

/// Sends SIGINT, SIGTERM and SIGHUP received here to the guest process.
/// They are blocked in this thread first (so in every thread started
/// after), and a dedicated thread takes them with sigwait(3).
fn forward_signals(mut sock: UnixStream) {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: changes this thread's mask only; `set` is valid.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return;
    }
    std::thread::spawn(move || loop {
        let mut sig = 0;
        // SAFETY: `set` and `sig` are valid for the call.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        if sock.write_all(&frame(b'S', sig.to_string().as_bytes())).is_err() {
            return;
        }
    });
}

/// Terminal size of stdin's terminal.
fn window_size() -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it on success.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
    let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawTerminal(libc::termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        // SAFETY: termios is plain data; tcgetattr fills it on success.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr on fd 0 with a valid pointer.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw edits the struct we own.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: tcsetattr on fd 0 with a valid termios.
        let rc = unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        (rc == 0).then_some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings saved by `enter`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

pub fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let vm = super::registry::find(&args.name)?;
    anyhow::ensure!(vm.running(), "{} is not running ({})", args.name, vm.status());
    let sock = dial(&vm.dir, AGENT_PORT)?;
    let session = Session {
        command: &args.command,
        env: &args.env,
        workdir: args.workdir.as_deref(),
        user: args.user.as_deref(),
        interactive: args.interactive,
        tty: args.tty,
    };
    let code = run_session(sock, &session)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// What to run through the guest agent, and how.
pub struct Session<'a> {
    pub command: &'a [String],
    pub env: &'a [String],
    pub workdir: Option<&'a str>,
    /// `UID[:GID]`.
    pub user: Option<&'a str>,
    /// Send this process's stdin.
    pub interactive: bool,
    /// A pty in the guest; this terminal goes raw while it runs.
    pub tty: bool,
}

/// Runs `s` over an agent connection, relaying stdio; returns the exit
/// code (127 when the guest could not start the command).
pub fn run_session(sock: UnixStream, s: &Session) -> anyhow::Result<i32> {
    let mut spec = Vec::new();
    for a in s.command {
        spec.extend_from_slice(format!("arg={a}\0").as_bytes());
    }
    for kv in s.env {
        anyhow::ensure!(kv.contains('='), "-e {kv:?}: expected KEY=VALUE");
        spec.extend_from_slice(format!("env={kv}\0").as_bytes());
    }
    if let Some(dir) = s.workdir {
        spec.extend_from_slice(format!("cwd={dir}\0").as_bytes());
    }
    if let Some(user) = s.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, user));
        anyhow::ensure!(
            uid.parse::<u32>().is_ok() && gid.parse::<u32>().is_ok(),
            "-u {user:?}: expected a numeric UID[:GID]"
        );
        spec.extend_from_slice(format!("uid={uid}\0gid={gid}\0").as_bytes());
    }
    let tty = s.tty && std::io::IsTerminal::is_terminal(&std::io::stdin());
    if s.tty {
        let (rows, cols) = window_size().unwrap_or((24, 80));
        spec.extend_from_slice(format!("tty=1\0rows={rows}\0cols={cols}\0").as_bytes());
    }
    let mut writer = sock.try_clone()?;
    writer.write_all(&frame(b'E', &spec))?;
    if !tty {
        // Without a terminal, ^C and `kill` reach this process: pass them on.
        forward_signals(sock.try_clone()?);
    }
    let raw = if tty { RawTerminal::enter() } else { None };
    if s.interactive || s.tty {
        let mut w = sock.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut stdin = std::io::stdin().lock();
            let mut last_size = window_size();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = w.write_all(&frame(b'i', &[]));
                        return;
                    }
                    Ok(n) => {
                        let size = window_size();
                        if tty && size != last_size {
                            if let Some((r, c)) = size {
                                let _ = w.write_all(&frame(b'W', format!("{r} {c}").as_bytes()));
                            }
                            last_size = size;
                        }
                        if w.write_all(&frame(b'I', &buf[..n])).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    } else {
        // No stdin. The agent may already have answered and closed (a
        // program that does not exist): what it said is read below.
        let _ = writer.write_all(&frame(b'i', &[]));
    }
    let mut reader = sock;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let (kind, body) = read_frame(&mut reader).context("the guest agent closed the connection")?;
        match kind {
            b'O' => {
                stdout.write_all(&body)?;
                stdout.flush()?;
            }
            b'R' => {
                stderr.write_all(&body)?;
                stderr.flush()?;
            }
            b'X' => return Ok(String::from_utf8_lossy(&body).trim().parse().unwrap_or(255)),
            b'F' => {
                drop(raw);
                eprintln!("ferry: {}", String::from_utf8_lossy(&body));
                return Ok(127);
            }
            _ => {}
        }
    }
}
