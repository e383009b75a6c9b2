//! The guest agent: host programs (`ferry exec`) reach it over vsock port
//! [`PORT`] and have it run processes with pipes or a pty, stream their
//! stdio, deliver signals and window sizes, and report exit codes.
//!
//! Frames both ways: one type byte, a big-endian u32 length, the payload.
//! Host to guest: `E` exec (NUL-separated `arg=`, `env=`, `cwd=`, `uid=`,
//! `gid=`, `tty=1`, `rows=`, `cols=` items), `I` stdin bytes, `i` end of stdin, `S` signal
//! number, `W` "ROWS COLS". Guest to host: `O` stdout (the pty, with a
//! tty), `R` stderr, `X` exit code, `F` could not start (a message).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use crate::sys;

pub const PORT: u32 = 1024;
const MAX_FRAME: usize = 1 << 20;

/// Exit statuses of the agent's processes, handed over by PID 1's reaper
/// (which reaps every child with waitpid(-1)).
#[derive(Default)]
pub struct Reaper {
    exits: Mutex<HashMap<libc::pid_t, i32>>,
    changed: Condvar,
}

impl Reaper {
    pub fn record(&self, pid: libc::pid_t, code: i32) {
        if let Ok(mut exits) = self.exits.lock() {
            // Orphans nobody waits for would pile up: keep the map small.
            if exits.len() > 4096 {
                exits.clear();
            }
            exits.insert(pid, code);
            self.changed.notify_all();
        }
    }

    fn wait(&self, pid: libc::pid_t) -> i32 {
        let Ok(mut exits) = self.exits.lock() else { return 255 };
        loop {
            if let Some(code) = exits.remove(&pid) {
                return code;
            }
            exits = match self.changed.wait(exits) {
                Ok(e) => e,
                Err(_) => return 255,
            };
        }
    }
}

fn read_frame(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((head[0], body))
}

fn write_frame(w: &Mutex<File>, kind: u8, body: &[u8]) -> io::Result<()> {
    let mut w = w.lock().map_err(|_| io::Error::other("agent socket poisoned"))?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(kind);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame)
}

/// What an `E` frame asks for.
#[derive(Default)]
struct ExecSpec {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    tty: bool,
    rows: u16,
    cols: u16,
    uid: Option<u32>,
    gid: Option<u32>,
}

fn parse_exec(body: &[u8]) -> ExecSpec {
    let mut spec = ExecSpec {
        rows: 24,
        cols: 80,
        ..Default::default()
    };
    for item in body.split(|&b| b == 0).filter(|i| !i.is_empty()) {
        let item = String::from_utf8_lossy(item);
        let Some((k, v)) = item.split_once('=') else { continue };
        match k {
            "arg" => spec.argv.push(v.to_string()),
            "env" => {
                if let Some((ek, ev)) = v.split_once('=') {
                    spec.env.push((ek.to_string(), ev.to_string()));
                }
            }
            "cwd" => spec.cwd = Some(v.to_string()),
            "tty" => spec.tty = v == "1",
            "rows" => spec.rows = v.parse().unwrap_or(24),
            "cols" => spec.cols = v.parse().unwrap_or(80),
            "uid" => spec.uid = v.parse().ok(),
            "gid" => spec.gid = v.parse().ok(),
            _ => {}
        }
    }
    spec
}

/// Starts the agent's listener thread. `base_env`: the environment every
/// process starts from (the VM's `-e` settings).
pub fn start(reaper: Arc<Reaper>, base_env: Vec<(String, String)>, root: Option<String>) {
    let listener = match sys::vsock_listen(PORT) {
        Ok(l) => l,
        Err(e) => {
            // No vsock device: `ferry exec` is unavailable, the workload runs.
            eprintln!("ferry-init: agent: no vsock ({e}); ferry exec is unavailable");
            return;
        }
    };
    let base_env = Arc::new(base_env);
    let root = Arc::new(root);
    let _ = std::thread::Builder::new().name("agent".into()).spawn(move || loop {
        match sys::accept(&listener) {
            Ok(conn) => {
                let (reaper, env, root) = (reaper.clone(), base_env.clone(), root.clone());
                let _ = std::thread::Builder::new().spawn(move || {
                    if let Err(e) = session(conn, &reaper, &env, root.as_deref()) {
                        eprintln!("ferry-init: agent: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("ferry-init: agent: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    });
}

fn pump(mut from: impl Read + Send + 'static, to: Arc<Mutex<File>>, kind: u8) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if write_frame(&to, kind, &buf[..n]).is_err() {
                        // The host went away; keep draining so the process
                        // never blocks on a full pipe.
                        continue;
                    }
                }
            }
        }
    })
}

/// Whether `program` names an executable file (directly, or in PATH).
fn runnable(program: &str, cwd: Option<&str>, root: Option<&str>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let root = root.unwrap_or("");
    let executable = |p: &std::path::Path| {
        let inside = std::path::PathBuf::from(format!("{root}{}", p.display()));
        std::fs::metadata(inside).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = std::path::Path::new(program);
        return match (path.is_relative(), cwd) {
            (true, Some(dir)) => executable(&std::path::Path::new(dir).join(path)),
            _ => executable(path),
        };
    }
    crate::setup::PATH
        .split(':')
        .any(|dir| executable(&std::path::Path::new(dir).join(program)))
}

/// One host connection: one process.
fn session(conn: File, reaper: &Reaper, base_env: &[(String, String)], root: Option<&str>) -> io::Result<()> {
    let mut input = conn.try_clone()?;
    let out = Arc::new(Mutex::new(conn));
    let (kind, body) = read_frame(&mut input)?;
    if kind != b'E' {
        return write_frame(&out, b'F', b"expected an exec request first");
    }
    let spec = parse_exec(&body);
    let Some(program) = spec.argv.first() else {
        return write_frame(&out, b'F', b"no command");
    };
    // std reaps a child whose exec failed, racing PID 1's reaper (and
    // panicking when it loses): find the program before spawning.
    if !runnable(program, spec.cwd.as_deref(), root) {
        return write_frame(
            &out,
            b'F',
            format!("cannot run {program:?}: not found or not executable").as_bytes(),
        );
    }
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .env("PATH", crate::setup::PATH)
        .env("HOME", "/root")
        .env("TERM", if spec.tty { "xterm" } else { "linux" })
        .envs(base_env.iter().map(|(k, v)| (k, v)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    match (root, &spec.cwd) {
        (Some(root), cwd) => {
            cmd.current_dir(format!("{root}{}", cwd.as_deref().unwrap_or("/")));
            sys::chroot_child(&mut cmd, root)?;
        }
        (None, Some(dir)) => {
            cmd.current_dir(dir);
        }
        (None, None) => {}
    }
    sys::default_signal_mask(&mut cmd);
    {
        use std::os::unix::process::CommandExt;
        if let Some(gid) = spec.gid {
            cmd.gid(gid);
        }
        if let Some(uid) = spec.uid {
            cmd.uid(uid);
        }
    }
    let mut pty_master = None;
    let mut pumps = Vec::new();
    let mut stdin_pipe = None;
    let child = if spec.tty {
        let (master, slave) = sys::openpty()?;
        let _ = sys::set_winsize(&master, spec.rows, spec.cols);
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        sys::controlling_tty(&mut cmd);
        let child = cmd.spawn();
        pty_master = Some(master);
        child
    } else {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn()
    };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return write_frame(&out, b'F', format!("cannot run {program:?}: {e}").as_bytes()),
    };
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
    if let Some(master) = &pty_master {
        pumps.push(pump(master.try_clone()?, out.clone(), b'O'));
    } else {
        if let Some(o) = child.stdout.take() {
            pumps.push(pump(o, out.clone(), b'O'));
        }
        if let Some(e) = child.stderr.take() {
            pumps.push(pump(e, out.clone(), b'R'));
        }
        stdin_pipe = child.stdin.take();
    }
    // PID 1 reaps; the handle must not wait.
    drop(child);
    // Host input until the host closes or the process is gone.
    let tty_in = pty_master.as_ref().map(File::try_clone).transpose()?;
    let input_thread = std::thread::spawn(move || {
        let mut tty_in = tty_in;
        while let Ok((kind, body)) = read_frame(&mut input) {
            match kind {
                b'I' => {
                    let ok = match (&mut tty_in, &mut stdin_pipe) {
                        (Some(t), _) => t.write_all(&body).is_ok(),
                        (None, Some(p)) => p.write_all(&body).is_ok(),
                        _ => false,
                    };
                    if !ok {
                        stdin_pipe = None;
                    }
                }
                b'i' => stdin_pipe = None,
                b'S' => {
                    if let Ok(sig) = String::from_utf8_lossy(&body).trim().parse::<i32>() {
                        // With a tty the process leads its own group.
                        let target = if tty_in.is_some() { -pid } else { pid };
                        sys::kill(target, sig);
                    }
                }
                b'W' => {
                    let text = String::from_utf8_lossy(&body).to_string();
                    let mut it = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
                    if let (Some(rows), Some(cols), Some(t)) = (it.next(), it.next(), &tty_in) {
                        let _ = sys::set_winsize(t, rows, cols);
                    }
                }
                _ => {}
            }
        }
    });
    let code = reaper.wait(pid);
    // The output readers end at EOF (EIO for a pty) once the last holder
    // of the pipe or terminal is gone; a background job that keeps it open
    // must not hold up the exit report.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while pumps.iter().any(|p| !p.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    write_frame(&out, b'X', code.to_string().as_bytes())?;
    drop(input_thread);
    Ok(())
}
