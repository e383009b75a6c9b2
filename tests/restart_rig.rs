//! `ferry net --state-file`: the daemon restarted (here: killed, as in a
//! crash) while its guests keep running gives them back their DHCP leases,
//! port forwards and DNS names; faults on the way in (a guest that leaves
//! mid-frame, a daemon stopped and continued) do not hurt the others.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{api_curl, dhcp_frame, dhcp_reply, Ferry};

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ferry-restart-{tag}-{}", std::process::id()))
}

/// A guest on the QEMU stream socket.
struct Guest {
    s: UnixStream,
    mac: [u8; 6],
}

impl Guest {
    fn attach(sock: &Path, mac: [u8; 6]) -> Guest {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "{}: {e}", sock.display()),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Guest { s, mac }
    }

    fn send(&mut self, frame: &[u8]) {
        self.s.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
        self.s.write_all(frame).unwrap();
    }

    /// Sends a DHCP message and returns the server's answer (type, yiaddr).
    fn dhcp(&mut self, kind: u8, requested: Option<[u8; 4]>) -> (u8, [u8; 4]) {
        self.send(&dhcp_frame(self.mac, kind, requested));
        loop {
            let mut len = [0u8; 4];
            self.s.read_exact(&mut len).expect("no DHCP reply");
            let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
            self.s.read_exact(&mut f).unwrap();
            if let Some(reply) = dhcp_reply(&f) {
                return reply;
            }
        }
    }

    /// DISCOVER, then REQUEST what was offered; the address leased.
    fn lease(&mut self) -> [u8; 4] {
        let (kind, offered) = self.dhcp(1, None);
        assert_eq!(kind, 2, "an OFFER");
        let (kind, acked) = self.dhcp(3, Some(offered));
        assert_eq!((kind, acked), (5, offered), "an ACK for the offer");
        acked
    }
}

fn start(sock: &Path, api: &Path, state: &Path) -> common::Running {
    net(sock, api, state).spawn()
}

/// `ferry net` with a QEMU stream socket, the control API and a state file.
fn net(sock: &Path, api: &Path, state: &Path) -> Ferry {
    let listen = format!("unix://{}", sock.display());
    Ferry::new([
        "net",
        "--listen-qemu",
        &listen,
        "--api",
        api.to_str().unwrap(),
        "--state-file",
        state.to_str().unwrap(),
        "--dns-upstream",
        "127.0.0.1:9",
    ])
}

#[test]
fn a_restarted_daemon_gives_back_leases_forwards_and_names() {
    let (sock, api, state) = (tmp("q.sock"), tmp("api.sock"), tmp("state.json"));
    let _ = std::fs::remove_file(&state);
    let mut ferry = start(&sock, &api, &state);
    let (a, b) = ([0x02, 0, 0, 0, 0, 0xa1], [0x02, 0, 0, 0, 0, 0xb2]);
    let mut ga = Guest::attach(&sock, a);
    let first = ga.lease();
    let mut gb = Guest::attach(&sock, b);
    let second = gb.lease();
    assert_ne!(first, second);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ip = |o: [u8; 4]| std::net::Ipv4Addr::from(o).to_string();
    let body = format!(r#"{{"publish":"127.0.0.1:{port}:80/tcp","guest":"{}"}}"#, ip(second));
    let (code, v) = api_curl(&api, &["-X", "POST", "-d", &body, "http://ferry/forwards"]);
    assert_eq!(code, 201, "{v}");
    let (code, v) = api_curl(
        &api,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"name":"svc","ip":"10.0.2.50"}"#,
            "http://ferry/dns/records",
        ],
    );
    assert_eq!(code, 201, "{v}");
    // Written within a second or so of the change.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        if text.contains("svc.test") && text.contains(&port.to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "state file not written: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The daemon dies; the guests keep running and reconnect.
    drop(ferry.child.kill());
    let _ = ferry.child.wait();
    drop((ga, gb));
    let _ferry = start(&sock, &api, &state);
    // b asks first: it gets its own address back, not the first free one.
    let mut gb = Guest::attach(&sock, b);
    let (kind, offered) = gb.dhcp(1, None);
    assert_eq!((kind, offered), (2, second), "b's lease was not restored");
    let mut ga = Guest::attach(&sock, a);
    assert_eq!(ga.dhcp(1, None), (2, first), "a's lease was not restored");

    let (_, fwds) = api_curl(&api, &["http://ferry/forwards"]);
    assert!(fwds.to_string().contains(&format!("127.0.0.1:{port}")), "{fwds}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "forward not listening"
    );
    let (_, names) = api_curl(&api, &["http://ferry/dns/records"]);
    assert!(names.to_string().contains("svc.test"), "{names}");
    std::fs::remove_file(&state).ok();
}

/// A state file ferry cannot read stops it with a message naming the file
/// and what to do, instead of starting without the guests' state.
#[test]
fn an_unreadable_state_file_is_named() {
    let (sock, api, state) = (tmp("bad-q.sock"), tmp("bad-api.sock"), tmp("bad-state.json"));
    std::fs::write(&state, "{ not json").unwrap();
    let out = net(&sock, &api, &state).output();
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("state file") && out.stderr.contains("move it away"),
        "{}",
        out.stderr
    );
    std::fs::remove_file(&state).ok();
}

/// SIGSTOP for a few seconds, then SIGCONT: the guest's link and the
/// daemon's answers come back (nothing timed out for good).
#[test]
fn a_stopped_and_continued_daemon_serves_again() {
    let (sock, api, state) = (tmp("stop-q.sock"), tmp("stop-api.sock"), tmp("stop-state.json"));
    let _ = std::fs::remove_file(&state);
    let ferry = start(&sock, &api, &state);
    let mut g = Guest::attach(&sock, [0x02, 0, 0, 0, 0, 0xc3]);
    let leased = g.lease();
    let pid = ferry.child.id() as i32;
    // SAFETY: kill(2) on our own child; no memory involved.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // A frame sent meanwhile waits in the socket.
    g.send(&dhcp_frame(g.mac, 1, None));
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let mut len = [0u8; 4];
    loop {
        g.s.read_exact(&mut len).expect("no answer after SIGCONT");
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        g.s.read_exact(&mut f).unwrap();
        if let Some((2, offered)) = dhcp_reply(&f) {
            assert_eq!(offered, leased);
            break;
        }
    }
    let (code, _) = api_curl(&api, &["http://ferry/health"]);
    assert_eq!(code, 200);
    std::fs::remove_file(&state).ok();
}
