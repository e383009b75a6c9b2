//! Host -> guest port forwards, into namespaces and into a QEMU guest.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::netns::{FerryNet, Netns, Pattern};
use common::{require_tool, Ferry};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP echo server inside the namespace on `port`, serving `conns` connections.
fn ns_echo_server(ns: &Netns, port: u16, conns: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: setns(2) on an fd we hold; affects only this thread.
        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        common::netns::echo_each(l, conns);
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
}

/// Connects through a forward, sends `len` patterned bytes and checks the echo.
fn echo_through(addr: SocketAddr, len: usize) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut data = vec![0u8; len];
    Pattern::new(len as u64).fill(&mut data);
    let mut w = s.try_clone()?;
    let sender = std::thread::spawn(move || {
        w.write_all(&data)?;
        w.shutdown(std::net::Shutdown::Write)?;
        Ok::<_, std::io::Error>(data)
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    let sent = sender.join().unwrap()?;
    assert!(
        got == sent,
        "echo through the forward differs ({} vs {} bytes)",
        got.len(),
        sent.len()
    );
    Ok(())
}

fn curl(sock: &std::path::Path, args: &[&str]) -> (u16, Value) {
    common::api_curl(sock, args)
}

#[test]
fn tcp_and_udp_forwards_into_a_namespace() {
    let ns = Netns::new();
    let (tp, up) = (free_port(), free_port());
    let tcp_spec = format!("{tp}:7000");
    let udp_spec = format!("127.0.0.1:{up}:7001/udp");
    let _ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "-p",
            &tcp_spec,
            "-p",
            &udp_spec,
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    ns_echo_server(&ns, 7000, 3);
    echo_through(format!("127.0.0.1:{tp}").parse().unwrap(), 10 << 20).unwrap();
    echo_through(format!("127.0.0.1:{tp}").parse().unwrap(), 1).unwrap();
    // UDP echo inside the namespace.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: setns(2) on an fd we hold; affects only this thread.
        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        let s = UdpSocket::bind("0.0.0.0:7001").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            let Ok((n, from)) = s.recv_from(&mut buf) else { break };
            s.send_to(&buf[..n], from).unwrap();
        }
    });
    rx.recv().unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..5u8 {
        let msg = [i; 700];
        c.send_to(&msg, ("127.0.0.1", up)).unwrap();
        let n = c.recv(&mut buf).expect("UDP echo through the forward");
        assert_eq!(&buf[..n], &msg);
    }
}

#[test]
fn forwards_change_live_through_the_api() {
    require_tool("curl", "curl");
    let ns = Netns::new();
    let sock = std::env::temp_dir().join(format!("ferry-fwd-api-{}.sock", std::process::id()));
    let _ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--api",
            sock.to_str().unwrap(),
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    ns_echo_server(&ns, 7100, 4);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "nothing forwarded yet"
    );

    let body = format!(r#"{{"publish":"{port}:7100"}}"#);
    let (code, v) = curl(&sock, &["-X", "POST", "-d", &body, "http://ferry/forwards"]);
    assert_eq!(code, 201, "{v}");
    echo_through(addr, 4096).unwrap();
    let (_, list) = curl(&sock, &["http://ferry/forwards"]);
    assert_eq!(list[0]["host"], addr.to_string());
    // A second forward on the same port is a conflict that names the port.
    let (code, v) = curl(&sock, &["-X", "POST", "-d", &body, "http://ferry/forwards"]);
    assert_eq!(code, 409);
    assert!(v["error"].as_str().unwrap().contains(&port.to_string()), "{v}");
    let (code, _) = curl(&sock, &["-X", "DELETE", &format!("http://ferry/forwards/tcp/{addr}")]);
    assert_eq!(code, 200);
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "forward still open after DELETE"
    );

    // gvproxy's API shapes.
    let gv = free_port();
    let expose = format!(r#"{{"local":"127.0.0.1:{gv}","remote":"10.0.2.2:7100","protocol":"tcp"}}"#);
    let (code, _) = curl(
        &sock,
        &["-X", "POST", "-d", &expose, "http://ferry/services/forwarder/expose"],
    );
    assert_eq!(code, 200);
    let (_, all) = curl(&sock, &["http://ferry/services/forwarder/all"]);
    assert_eq!(all[0]["local"], format!("127.0.0.1:{gv}"));
    assert_eq!(all[0]["remote"], "10.0.2.2:7100");
    assert_eq!(all[0]["protocol"], "tcp");
    echo_through(format!("127.0.0.1:{gv}").parse().unwrap(), 1000).unwrap();
    let unexpose = format!(r#"{{"local":"127.0.0.1:{gv}","protocol":"tcp"}}"#);
    let (code, _) = curl(
        &sock,
        &[
            "-X",
            "POST",
            "-d",
            &unexpose,
            "http://ferry/services/forwarder/unexpose",
        ],
    );
    assert_eq!(code, 200);
    std::fs::remove_file(&sock).ok();
}

#[test]
fn a_forward_to_a_named_guest_waits_for_it() {
    require_tool("curl", "curl");
    let ns = Netns::new();
    let sock = std::env::temp_dir().join(format!("ferry-fwd-wait-{}.sock", std::process::id()));
    let port = free_port();
    let spec = format!("{port}:7200");
    let _ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--api",
            sock.to_str().unwrap(),
            "-p",
            &spec,
            "--publish-to",
            "late",
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    ns_echo_server(&ns, 7200, 1);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = std::thread::spawn(move || echo_through(addr, 2048));
    // The name appears a second later; the waiting connection then goes through.
    std::thread::sleep(Duration::from_secs(1));
    let (code, _) = curl(
        &sock,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"name":"late","ip":"10.0.2.2"}"#,
            "http://ferry/dns/records",
        ],
    );
    assert_eq!(code, 201);
    client
        .join()
        .unwrap()
        .expect("connection waited for the guest and went through");
    std::fs::remove_file(&sock).ok();
}

#[test]
fn a_port_in_use_is_named_in_the_error() {
    let ns = Netns::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Ferry::new([
        "net",
        "--netns",
        ns.path().to_str().unwrap(),
        "-p",
        &format!("{port}:80"),
    ])
    .timeout(Duration::from_secs(20))
    .output();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains(&format!("127.0.0.1:{port}/tcp")), "{}", out.stderr);
    let out = Ferry::new(["net", "--netns", ns.path().to_str().unwrap(), "-p", "80:80/sctp"]).output();
    assert!(out.stderr.contains("expected [HOST_IP:]HOST_PORT"), "{}", out.stderr);
}

#[test]
fn ferry_run_publishes_a_guest_web_server() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let port = free_port();
    let mut running = Ferry::new([
        "run",
        "-p",
        &format!("{port}:80"),
        "--",
        "sh",
        "-c",
        "mkdir /www && echo served-from-the-guest > /www/index.html && httpd -p 80 -h /www && sleep 60",
    ])
    .spawn();
    let deadline = Instant::now() + Duration::from_secs(90);
    let body = loop {
        let got = (|| {
            let mut s =
                TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok::<_, std::io::Error>(r)
        })();
        match got {
            Ok(r) if r.contains("served-from-the-guest") => break r,
            _ if Instant::now() > deadline => panic!("guest web server never reachable through -p: {got:?}"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(body.starts_with("HTTP/1.") && body.contains(" 200 "), "{body}");
    let _ = running.child.kill();
}

/// Polls `connect` until it succeeds or `limit` passes; returns how long
/// it took.
fn reachable_within(to: SocketAddr, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(200)) {
            let mut out = String::new();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            if s.read_to_string(&mut out).is_ok() && out == "auto" {
                return Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `--publish-auto` (pasta's `-t auto`): a TCP listener the namespace opens
/// after start becomes reachable on the host's 127.0.0.1 and ::1 within a
/// second and stops being reachable when it closes; UDP too; a
/// loopback-only listener is not forwarded, and a host port already taken
/// is not stolen (logged once).
#[test]
fn publish_auto_follows_the_namespaces_listeners() {
    let ns = Netns::new();
    let host_taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = host_taken.local_addr().unwrap().port();
    let mut ferry = FerryNet::start(&ns, &["--configure", "--publish-auto"]);
    let port = free_port();
    let listener = ns.run_in(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    let served = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        for c in served.incoming() {
            let Ok(mut c) = c else { return };
            let _ = c.write_all(b"auto");
        }
    });
    let took = reachable_within(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5))
        .expect("the namespace's listener never appeared on the host's 127.0.0.1");
    assert!(took < Duration::from_secs(1), "listen() to reachable took {took:?}");
    assert!(reachable_within(
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        Duration::from_secs(2)
    )
    .is_some());
    // The listener closes: so does the host port.
    // SAFETY: shutdown(2) on a socket we own: wakes the accept thread.
    unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&listener), libc::SHUT_RDWR) };
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the host port stayed open after the listener closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // UDP: a bound socket in the namespace echoes through 127.0.0.1.
    let uport = free_port();
    let echo = ns.run_in(move || UdpSocket::bind(("0.0.0.0", uport)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _ = client.send_to(b"ping", ("127.0.0.1", uport));
        let mut buf = [0u8; 16];
        if let Ok(n) = client.recv(&mut buf) {
            assert_eq!(&buf[..n], b"ping");
            break;
        }
        assert!(Instant::now() < deadline, "no UDP echo through the automatic forward");
    }

    // Loopback-only in the namespace: not forwarded. A taken host port:
    // left to its owner, logged once.
    let local_only = free_port();
    let _lo = ns.run_in(move || TcpListener::bind(("127.0.0.1", local_only)).unwrap());
    let _t = ns.run_in(move || TcpListener::bind(("0.0.0.0", taken)).unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        TcpStream::connect(("127.0.0.1", local_only)).is_err(),
        "a loopback-only listener was forwarded"
    );
    host_taken.set_nonblocking(false).unwrap();
    let _c = TcpStream::connect(("127.0.0.1", taken)).unwrap();
    let (_, peer) = host_taken.accept().unwrap();
    assert!(peer.ip().is_loopback(), "the host's own listener still owns its port");
    let said: Vec<String> = ferry.log.try_iter().collect();
    let told = said
        .iter()
        .filter(|l| l.contains("host port is not free") && l.contains(&taken.to_string()))
        .count();
    assert_eq!(told, 1, "{said:?}");
    assert!(ferry.alive(), "ferry died (a call outside its seccomp list?)");
}

/// A server inside `ns` that tells each TCP client on `tcp` and each UDP
/// sender on `udp` the address it sees them from.
fn ns_peer_reporter(ns: &Netns, tcp: u16, udp: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: setns(2) on an fd we hold; affects only this thread.
        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        let l = TcpListener::bind(("::", tcp)).unwrap();
        let u = UdpSocket::bind(("::", udp)).unwrap();
        tx.send(()).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(canonical(from).to_string().as_bytes(), from);
            }
        });
        for conn in l.incoming().take(16) {
            let Ok(mut c) = conn else { continue };
            let peer = canonical(c.peer_addr().unwrap());
            let _ = c.write_all(peer.to_string().as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// What the guest reports for a TCP connection to `to` (from `from`).
fn seen_over_tcp(from: Option<SocketAddr>, to: SocketAddr) -> (SocketAddr, String) {
    let sock = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None).unwrap();
    if let Some(f) = from {
        sock.bind(&f.into()).unwrap();
    }
    sock.connect_timeout(&to.into(), Duration::from_secs(10)).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = String::new();
    s.read_to_string(&mut seen).unwrap();
    (s.local_addr().unwrap(), seen)
}

/// Forwards show the guest the real client (issue: the real client
/// address): ferry runs in its own "host" namespace; a client on that
/// host's loopback is seen as the host alias with its own port; a client
/// in a third namespace (another machine on a veth) connecting to a
/// forward bound on the veth address is seen as itself, and the guest's
/// replies reach it; UDP the same. `--forward-source=gateway` shows the
/// gateway instead, as slirp4netns does.
#[test]
fn forwards_show_the_guest_the_real_client() {
    let (guest, host, other) = (Netns::new(), Netns::new(), Netns::new());
    for cmd in [
        &["ip", "link", "set", "lo", "up"][..],
        &[
            "ip",
            "link",
            "add",
            "vh",
            "type",
            "veth",
            "peer",
            "name",
            "vo",
            "netns",
            &other.pid().to_string(),
        ],
        &["ip", "addr", "add", "10.77.0.1/24", "dev", "vh"],
        &["ip", "link", "set", "vh", "up"],
    ] {
        let out = host.command(cmd, Duration::from_secs(5));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for cmd in [
        &["ip", "link", "set", "lo", "up"][..],
        &["ip", "addr", "add", "10.77.0.2/24", "dev", "vo"],
        &["ip", "link", "set", "vo", "up"],
    ] {
        let out = other.command(cmd, Duration::from_secs(5));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--configure",
            "-p",
            "127.0.0.1:8000:7000",
            "-p",
            "10.77.0.1:8001:7000",
            "-p",
            "[::1]:8002:7000",
            "-p",
            "127.0.0.1:8003:7001/udp",
            "-p",
            "10.77.0.1:8004:7001/udp",
            "--dns-upstream",
            "127.0.0.1:9",
        ];
        args.extend_from_slice(extra);
        FerryNet::start_hosted(&guest, &host, &args)
    };
    let ferry = run(&[]);
    ns_peer_reporter(&guest, 7000, 7001);
    // The IPv6 forward targets the guest's IPv4 address (the first guest):
    // the families differ, so the gateway speaks for the client.
    let cases = [
        (&host, None, "127.0.0.1:8000", "10.0.2.254"),
        (&other, Some("10.77.0.2:0"), "10.77.0.1:8001", "10.77.0.2"),
        (&host, None, "[::1]:8002", "10.0.2.1"),
    ];
    for (ns, from, to, want) in cases {
        let (from, to) = (from.map(|f| f.parse().unwrap()), to.parse().unwrap());
        let (local, seen) = ns.run_in(move || seen_over_tcp(from, to));
        let seen: SocketAddr = seen.parse().unwrap_or_else(|_| panic!("{to}: the guest said {seen:?}"));
        assert_eq!(seen.ip().to_string(), want, "TCP client {local} through {to}");
        if want != "10.0.2.1" {
            assert_eq!(seen.port(), local.port(), "the client's own port too");
        }
    }
    for (ns, bind, to, want) in [
        (&host, "127.0.0.1:0", "127.0.0.1:8003", "10.0.2.254"),
        (&other, "10.77.0.2:0", "10.77.0.1:8004", "10.77.0.2"),
    ] {
        let (local, seen) = ns.run_in(move || {
            let c = UdpSocket::bind(bind).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 256];
            for _ in 0..5 {
                c.send_to(b"who", to).unwrap();
                if let Ok(n) = c.recv(&mut buf) {
                    return (c.local_addr().unwrap(), String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            panic!("no UDP reply through {to}");
        });
        assert_eq!(
            seen,
            format!("{want}:{}", local.port()),
            "UDP client {local} through {to}"
        );
    }
    drop(ferry);

    let _ferry = run(&["--forward-source=gateway"]);
    let (_, seen) =
        other.run_in(|| seen_over_tcp(Some("10.77.0.2:0".parse().unwrap()), "10.77.0.1:8001".parse().unwrap()));
    assert!(
        seen.starts_with("10.0.2.1:"),
        "--forward-source=gateway: the guest saw {seen}"
    );
}

/// `ferry run --publish-auto`: guest-init reports the guest's listeners
/// over vsock; a web server the workload starts after boot becomes
/// reachable on the host's 127.0.0.1 with no -p, stops being reachable
/// when it exits; a port the host already uses is left alone and shown
/// as taken; `ferry ps` lists the automatic forwards (UDP too).
#[test]
fn ferry_run_publish_auto_follows_the_guest() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let (web, udp) = (free_port(), free_port());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let name = format!("auto{}", std::process::id());
    let script = format!(
        "mkdir /www && echo auto > /www/index.html; httpd -f -p {web} -h /www & hp=$!; \
         httpd -f -p {taken_port} -h /www & /init tool udp-echo {udp} & \
         sleep 1; echo UP; sleep 20; kill $hp; echo DOWN; sleep 60"
    );
    let mut running = Ferry::new(["run", "--name", &name, "--publish-auto", "--", "sh", "-c", &script]).spawn();
    let stdout = running.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((line, Instant::now()));
        }
    });
    let wait_line = |want: &str, limit: Duration| loop {
        match rx.recv_timeout(limit) {
            Ok((line, at)) if line.trim() == want => return at,
            Ok(_) => {}
            Err(_) => panic!("the guest never printed {want}"),
        }
    };
    let up = wait_line("UP", Duration::from_secs(120));
    let to: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    let fetch = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r)
    };
    let reached = loop {
        if fetch().is_ok_and(|r| r.contains("auto")) {
            break up.elapsed();
        }
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "the guest's web server never appeared on the host"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("publish-auto: reachable {reached:?} after the guest said UP");
    assert!(reached < Duration::from_secs(10), "took {reached:?}");

    // ferry ps: the automatic forwards, the taken port shown as such.
    let ps = Ferry::new(["ps"]).output();
    let line = ps
        .stdout
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{}", ps.stdout))
        .to_string();
    assert!(line.contains(&format!("{web}/tcp")), "{line}");
    assert!(line.contains(&format!("{udp}/udp")), "{line}");
    assert!(line.contains(&format!("{taken_port}/tcp (host port taken)")), "{line}");
    // UDP through its automatic forward.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send_to(b"over udp", ("127.0.0.1", udp)).unwrap();
    let mut buf = [0u8; 64];
    let n = c.recv(&mut buf).expect("UDP echo through the automatic forward");
    assert_eq!(&buf[..n], b"over udp");
    // Not stolen: the host's own listener still owns the port.
    assert_eq!(taken.local_addr().unwrap().port(), taken_port);

    let down = wait_line("DOWN", Duration::from_secs(60));
    let gone = loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break down.elapsed(),
            _ => {}
        }
        assert!(
            down.elapsed() < Duration::from_secs(20),
            "the forward outlived the guest's listener"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("publish-auto: gone {gone:?} after the guest said DOWN");
    let _ = running.child.kill();
}
