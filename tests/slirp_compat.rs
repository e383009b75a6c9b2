//! ferry as slirp4netns, driven the way podman drives slirp4netns: a link
//! named slirp4netns, --configure, a ready fd, an exit fd, --netns-type=path
//! and the JSON API socket.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::Ferry;
use serde_json::Value;

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) with a valid two-element array; the fds are inherited
    // by the child (no CLOEXEC) as slirp4netns's protocol requires.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned only here.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn api(sock: &std::path::Path, request: &str) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_to_string(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
}

#[test]
fn driven_like_podman() {
    let dir = std::env::temp_dir().join(format!("ferry-slirp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("slirp4netns");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), &link).unwrap();

    // podman checks the help text for the options it uses.
    let help = Ferry::with_binary(&link, ["--help"]).output();
    for opt in [
        "--netns-type",
        "--cidr",
        "--disable-host-loopback",
        "--mtu",
        "--enable-sandbox",
        "--enable-seccomp",
        "--enable-ipv6",
        "--outbound-addr",
        "--api-socket",
        "--ready-fd",
        "--exit-fd",
        "--configure",
    ] {
        assert!(help.stdout.contains(opt), "--help lacks {opt}:\n{}", help.stdout);
    }

    let ns = Netns::new();
    let (ready_r, ready_w) = pipe();
    let (exit_r, exit_w) = pipe();
    // Our ends are close-on-exec, as podman's are: the child must hold only
    // its own ends, or closing ours would not reach it.
    for fd in [ready_r.as_raw_fd(), exit_w.as_raw_fd()] {
        // SAFETY: fcntl(2) on fds we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let sock = dir.join("api.sock");
    let args = [
        "--configure".to_string(),
        "--mtu=65520".into(),
        format!("-r{}", ready_w.as_raw_fd()),
        format!("-e{}", exit_r.as_raw_fd()),
        format!("--api-socket={}", sock.display()),
        "--netns-type=path".into(),
        ns.path().display().to_string(),
        "tap0".into(),
    ];
    let mut running = Ferry::with_binary(&link, &args).spawn();
    drop(ready_w);
    drop(exit_r);
    // Ready: "1" on the ready fd.
    let mut ready = std::fs::File::from(ready_r);
    let mut got = [0u8; 1];
    ready.read_exact(&mut got).expect("nothing on the ready fd");
    assert_eq!(&got, b"1");

    // slirp4netns's address plan inside the namespace.
    let addr = ns.command(&["ip", "-4", "-o", "addr", "show", "tap0"], Duration::from_secs(5));
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(addr.contains("10.0.2.100/24"), "{addr}");
    let route = ns.command(&["ip", "route"], Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&route.stdout).contains("default via 10.0.2.2"));
    let link_info = ns.command(&["ip", "link", "show", "tap0"], Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&link_info.stdout).contains("mtu 65520"));

    // 10.0.2.2 reaches the host's loopback; 10.0.2.3 answers DNS.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"host loopback").unwrap();
    });
    let (reply, dns) = ns.run_in(move || {
        let mut s =
            TcpStream::connect_timeout(&format!("10.0.2.2:{port}").parse().unwrap(), Duration::from_secs(10)).unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let q = common::dns::query("host.containers.internal.", hickory_proto::rr::RecordType::A, false);
        let dns = common::dns::udp_exchange("10.0.2.3:53".parse().unwrap(), &q).unwrap();
        (r, dns)
    });
    assert_eq!(reply, "host loopback");
    assert_eq!(common::dns::first_a(&dns), Some("10.0.2.2".parse().unwrap()));

    // The API: add, list, use, remove a forward; a bad request's error shape.
    let hp = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = ns.path();
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: setns(2) on an fd we hold; affects only this thread.
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        let l = TcpListener::bind("0.0.0.0:7300").unwrap();
        tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"from the container").unwrap();
    });
    rx.recv().unwrap();
    let add = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{hp},"guest_addr":"10.0.2.100","guest_port":7300}}}}"#
    );
    let v = api(&sock, &add);
    let id = v["return"]["id"].as_u64().unwrap_or_else(|| panic!("{v}"));
    let v = api(&sock, r#"{"execute":"list_hostfwd"}"#);
    assert_eq!(v["return"]["entries"][0]["host_port"], hp);
    assert_eq!(v["return"]["entries"][0]["guest_addr"], "10.0.2.100");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let addr: SocketAddr = format!("127.0.0.1:{hp}").parse().unwrap();
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            break r;
        }
        assert!(Instant::now() < deadline);
    };
    assert_eq!(body, "from the container");
    let v = api(
        &sock,
        &format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#),
    );
    assert!(v["return"].is_object(), "{v}");
    let v = api(
        &sock,
        r#"{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}"#,
    );
    assert!(v["error"]["desc"].as_str().unwrap().contains("proto"), "{v}");
    let v = api(&sock, "not json");
    assert!(v["error"]["desc"].is_string(), "{v}");

    // Closing the exit fd stops it.
    drop(exit_w);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = running.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit when the exit fd closed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_options_get_slirp4netns_errors() {
    let ns = Netns::new();
    let target = ns.pid().to_string();
    let dir = std::env::temp_dir().join(format!("ferry-slirp-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("slirp4netns");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), &link).unwrap();
    for (args, want) in [
        (vec!["-c", "--cidr", "24"], "invalid CIDR"),
        (
            vec!["-c", "--cidr", "10.0.2.100/24"],
            "CIDR needs to be a network address like 10.0.2.0/24",
        ),
        (vec!["-c", "--cidr", "10.0.2.0/26"], "prefix length needs to be 1-25"),
        (vec!["--macaddress", "0e:d4:18:d9:38:fb"], "requires --configure"),
        (vec!["--target-type=bess"], "bess is not implemented"),
        (vec!["--outbound-addr=no-such-if0"], "no IPv4 address on interface"),
    ] {
        let mut all = args.clone();
        all.extend([target.as_str(), "tap0"]);
        let out = Ferry::with_binary(&link, &all).output();
        assert_eq!(out.code, Some(1), "{args:?}");
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    let out = Ferry::new(["slirp4netns", "--netns-type=pid", "/not/a/pid", "tap0"]).output();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("not a PID"), "{}", out.stderr);
    // The version lines clients and slirp4netns's tests parse.
    let out = Ferry::with_binary(&link, ["--version"]).output();
    assert!(out.stdout.starts_with("slirp4netns version 1.2.0"), "{}", out.stdout);
    assert!(out.stdout.contains("\nSLIRP_CONFIG_VERSION_MAX: 4\n"), "{}", out.stdout);
    std::fs::remove_dir_all(&dir).ok();
}

/// --enable-sandbox and --enable-seccomp, seen from outside: capabilities,
/// seccomp mode, no_new_privs and the root in /proc/PID; the network and
/// the API keep working inside the confinement; IPv6 with --enable-ipv6.
#[test]
fn sandbox_and_seccomp_are_real() {
    let ns = Netns::new();
    let dir = std::env::temp_dir().join(format!("ferry-slirp-sb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("slirp4netns");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), &link).unwrap();
    let (ready_r, ready_w) = pipe();
    // SAFETY: fcntl(2) on an fd we own.
    unsafe { libc::fcntl(ready_r.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let sock = dir.join("api.sock");
    let args = [
        "-c".to_string(),
        "--enable-ipv6".into(),
        "--enable-sandbox".into(),
        "--enable-seccomp".into(),
        "--disable-host-loopback".into(),
        format!("--ready-fd={}", ready_w.as_raw_fd()),
        format!("--api-socket={}", sock.display()),
        ns.pid().to_string(),
        "tap0".into(),
    ];
    let mut running = Ferry::with_binary(&link, &args).spawn();
    drop(ready_w);
    let mut got = [0u8; 1];
    std::fs::File::from(ready_r)
        .read_exact(&mut got)
        .expect("nothing on the ready fd");
    let pid = running.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .trim()
            .to_string()
    };
    // Root: everything but CAP_NET_BIND_SERVICE (bit 10) is gone.
    assert_eq!(field("CapEff"), "0000000000000400");
    assert_eq!(field("CapPrm"), "0000000000000400");
    assert_eq!(field("CapBnd"), "0000000000000400");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no seccomp filter");
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    assert!(root.join("etc").is_dir() && root.join("run").is_dir());
    for gone in ["home", "root", "var", "usr", "proc"] {
        assert!(!root.join(gone).exists(), "/{gone} is visible in the sandbox");
    }
    // The API socket, bound before confinement, still answers.
    let v = api(&sock, r#"{"execute":"list_hostfwd"}"#);
    assert!(v["return"]["entries"].is_array(), "{v}");
    // Outbound still works (to a host service through the gateway is
    // disabled: "Network is unreachable" as with slirp4netns); IPv6 comes
    // up by SLAAC in slirp4netns's fd00::/64.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let err = ns.run_in(move || {
        TcpStream::connect_timeout(&format!("10.0.2.2:{port}").parse().unwrap(), Duration::from_secs(5)).unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.command(
            &["ip", "-6", "-o", "addr", "show", "tap0", "scope", "global"],
            Duration::from_secs(5),
        );
        if String::from_utf8_lossy(&out.stdout).contains("inet6 fd00::") {
            break;
        }
        assert!(Instant::now() < deadline, "no fd00:: address by SLAAC");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ns.command(
        &["ping", "-6", "-c", "1", "-W", "3", "fd00::2"],
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "ping fd00::2: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = running.child.kill();
    std::fs::remove_dir_all(&dir).ok();
}
