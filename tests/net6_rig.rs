//! IPv6 through `ferry net`, against real kernel stacks in network
//! namespaces this test creates: SLAAC from ferry's router advertisement,
//! ping to the gateway, TCP and UDP to the host's `::1` through the IPv6
//! host alias, refusal, AAAA names, DHCPv6, forwards from `[::1]`. Traffic
//! stays on loopback and inside the namespaces.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{FerryNet, Netns, Pattern};
use sha2::{Digest, Sha256};

const ALIAS6: &str = "fd66:6572:7279::fe";
const GATEWAY6: &str = "fd66:6572:7279::1";

fn alias6(port: u16) -> SocketAddr {
    SocketAddr::new(ALIAS6.parse().unwrap(), port)
}

/// Waits for the namespace's tap0 to have a global IPv6 address from SLAAC
/// and a default route; returns the address.
fn slaac(ns: &Netns) -> Ipv6Addr {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let addr = ns.command(
            &["ip", "-6", "-o", "addr", "show", "dev", "tap0", "scope", "global"],
            Duration::from_secs(5),
        );
        let route = ns.command(&["ip", "-6", "route", "show", "default"], Duration::from_secs(5));
        let addr = String::from_utf8_lossy(&addr.stdout).to_string();
        let route = String::from_utf8_lossy(&route.stdout).to_string();
        let found = addr
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse::<Ipv6Addr>().ok());
        if let (Some(a), false, false) = (found, addr.contains("tentative"), route.is_empty()) {
            assert!(route.contains("via fe80::1"), "default route: {route}");
            assert!(
                a.segments()[..4] == [0xfd66, 0x6572, 0x7279, 0],
                "address {a} outside the prefix"
            );
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no SLAAC address and default route within 15 s: addr={addr} route={route}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slaac_ping_and_http_to_the_hosts_ipv6_loopback() {
    let ns = Netns::new();
    let _ferry = FerryNet::start(&ns, &["--configure"]);
    let addr = slaac(&ns);
    // The RA's MTU option was applied to the link.
    let mtu = ns.command(&["cat", "/proc/sys/net/ipv6/conf/tap0/mtu"], Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "65520");
    for target in [GATEWAY6, "fe80::1%tap0"] {
        let out = ns.command(&["ping", "-6", "-c", "2", "-W", "2", target], Duration::from_secs(20));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ping {target}: {text}");
        assert!(text.contains("2 received"), "{text}");
    }
    let l = TcpListener::bind("[::1]:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, peer) = l.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nhello v6\r\n");
        peer
    });
    let url = format!("http://[{ALIAS6}]:{port}/");
    let out = ns.command(&["busybox", "wget", "-q", "-O", "-", &url], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "wget {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello v6\r\n");
    // The host saw an IPv6 loopback client.
    assert_eq!(server.join().unwrap().ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    let _ = addr;
}

#[test]
fn one_gib_each_way_over_ipv6() {
    let ns = Netns::new();
    let _ferry = FerryNet::start(&ns, &["--configure"]);
    slaac(&ns);
    const GIB: u64 = 1 << 30;
    let l = TcpListener::bind("[::1]:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // The host receives 1 GiB and sends 1 GiB back on the same connection,
    // each side hashing what it sends and receives.
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut got = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        while total < GIB {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "upload ended early at {total}");
            total += n as u64;
            got.update(&buf[..n]);
        }
        let mut sent = Sha256::new();
        let mut pattern = Pattern::new(2);
        for _ in 0..GIB / (1 << 16) {
            pattern.fill(&mut buf);
            sent.update(&buf);
            c.write_all(&buf).unwrap();
        }
        (got.finalize(), sent.finalize())
    });
    let (up, down) = ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&alias6(port), Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut sent = Sha256::new();
        let mut pattern = Pattern::new(1);
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..GIB / (1 << 16) {
            pattern.fill(&mut buf);
            sent.update(&buf);
            s.write_all(&buf).unwrap();
        }
        let mut got = Sha256::new();
        let mut total = 0u64;
        while total < GIB {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "download ended early at {total}");
            total += n as u64;
            got.update(&buf[..n]);
        }
        (sent.finalize(), got.finalize())
    });
    let (server_got, server_sent) = server.join().unwrap();
    assert_eq!(up, server_got, "upload corrupted");
    assert_eq!(down, server_sent, "download corrupted");
}

#[test]
fn refused_at_once_and_udp_echo_over_ipv6() {
    let ns = Netns::new();
    let _ferry = FerryNet::start(&ns, &["--configure"]);
    slaac(&ns);
    let closed = TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port();
    let udp = UdpSocket::bind("[::1]:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            let Ok((n, from)) = udp.recv_from(&mut buf) else { return };
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    ns.run_in(move || {
        let start = Instant::now();
        let err = TcpStream::connect_timeout(&alias6(closed), Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "refusal took {:?}",
            start.elapsed()
        );
        let s = UdpSocket::bind("[::]:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.connect(alias6(udp_port)).unwrap();
        for msg in [&b"one"[..], &[7u8; 1400][..]] {
            s.send(msg).unwrap();
            let mut buf = [0u8; 2048];
            let n = s.recv(&mut buf).expect("UDP echo over IPv6");
            assert_eq!(&buf[..n], msg);
        }
        // A UDP port nothing listens on: the host's port unreachable comes
        // back as ICMPv6 and the guest socket sees ECONNREFUSED.
        let dead = UdpSocket::bind("[::1]:0").unwrap().local_addr().unwrap().port();
        s.connect(alias6(dead)).unwrap();
        s.send(b"anyone?").unwrap();
        let mut buf = [0u8; 64];
        let err = s.recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    });
}

fn free_port6() -> u16 {
    TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn aaaa_names_and_dhcpv6_information() {
    let ns = Netns::new();
    let _ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--dns-record",
            "web=10.0.2.2",
            "--search",
            "example.test",
        ],
    );
    let addr = slaac(&ns);
    // IPv4 traffic from the namespace, so ferry knows 10.0.2.2's MAC too.
    let out = ns.command(
        &["ping", "-4", "-c", "1", "-W", "2", "10.0.2.1"],
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    let lookup = |kind: &str, name: &str, server: &str| {
        let out = ns.command(&["busybox", "nslookup", kind, name, server], Duration::from_secs(10));
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    // The DNS server answers over IPv6; the built-in host name has the
    // alias's IPv6 address.
    let text = lookup("-type=AAAA", "host.container.internal", GATEWAY6);
    assert!(text.contains(ALIAS6), "AAAA host.container.internal over IPv6: {text}");
    // web.test is the namespace's IPv4 address; the SLAAC address ferry saw
    // from the same MAC becomes its AAAA.
    let text = lookup("-type=AAAA", "web.test", "10.0.2.1");
    assert!(text.contains(&addr.to_string()), "AAAA web.test = {addr}: {text}");
    // A name with an A record only: AAAA is NODATA, not NXDOMAIN.
    let out = ns.command(
        &[
            "busybox",
            "nslookup",
            "-type=AAAA",
            "gateway.containers.internal",
            "10.0.2.1",
        ],
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(GATEWAY6), "{text}");
    let text = lookup("-type=AAAA", "nothere.test", GATEWAY6);
    assert!(text.contains("NXDOMAIN"), "{text}");
    // Stateless DHCPv6: an Information-Request from the client port to
    // All_DHCP_Relay_Agents_and_Servers on the link, as dhclient -S sends it
    // (Debian's busybox-static has no udhcpc6).
    let reply = ns.run_in(|| {
        let ifindex = std::fs::read_to_string("/sys/class/net/tap0/ifindex").unwrap_or_default();
        let scope: u32 = ifindex.trim().parse().unwrap_or(0);
        let s = UdpSocket::bind("[::]:546").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = std::net::SocketAddrV6::new("ff02::1:2".parse().unwrap(), 547, 0, scope);
        // Type 11, transaction 0xabcdef, client id (DUID-LL), option request 23 24.
        let msg = [
            11u8, 0xab, 0xcd, 0xef, 0, 1, 0, 10, 0, 3, 0, 1, 2, 0, 0, 0, 0, 1, 0, 6, 0, 4, 0, 23, 0, 24,
        ];
        let mut buf = [0u8; 1500];
        for _ in 0..3 {
            s.send_to(&msg, to).unwrap();
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                return (buf[..n].to_vec(), from);
            }
        }
        panic!("no DHCPv6 reply");
    });
    let (reply, from) = reply;
    assert_eq!(from.ip().to_string(), "fe80::1");
    assert_eq!(&reply[..4], &[7, 0xab, 0xcd, 0xef]);
    let gw: Ipv6Addr = GATEWAY6.parse().unwrap();
    assert!(
        reply.windows(16).any(|w| w == gw.octets()),
        "no DNS server in {reply:?}"
    );
    assert!(
        reply.windows(14).any(|w| w == b"\x07example\x04test\x00"),
        "no search list in {reply:?}"
    );
}

#[test]
fn forwards_from_ipv6_loopback_to_either_family() {
    common::require_tool("curl", "curl");
    let ns = Netns::new();
    let api = std::env::temp_dir().join(format!("ferry-api6-{}.sock", std::process::id()));
    let (p1, p2) = (free_port6(), free_port6());
    let publish = format!("[::1]:{p1}:8080");
    let _ferry = FerryNet::start(&ns, &["--configure", "-p", &publish, "--api", api.to_str().unwrap()]);
    let addr = slaac(&ns);
    // A dual-stack server in the namespace: prints each peer, echoes a line.
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = std::thread::spawn({
        let path = ns.path();
        move || {
            let file = std::fs::File::open(path).unwrap();
            // SAFETY: setns(2) on an fd we hold; affects only this thread.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let l = TcpListener::bind("[::]:8080").unwrap();
            tx.send(()).unwrap();
            for conn in l.incoming().take(2) {
                let mut c = conn.unwrap();
                let mut buf = [0u8; 64];
                let n = c.read(&mut buf).unwrap();
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    rx.recv().unwrap();
    // 1: [::1]:p1 → the namespace's IPv4 address (an IPv6 host client
    // reaching an IPv4 guest service).
    let echo = |port: u16, msg: &[u8]| {
        let mut c = TcpStream::connect_timeout(&SocketAddr::new("::1".parse().unwrap(), port), Duration::from_secs(10))
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(msg).unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        buf[..n].to_vec()
    };
    assert_eq!(echo(p1, b"to v4"), b"to v4");
    // 2: added through the control API, [::1]:p2 → the SLAAC address.
    let body = format!("{{\"publish\": \"[::1]:{p2}:8080\", \"guest\": \"{addr}\"}}");
    let (code, v) = common::api_curl(&api, &["-X", "POST", "-d", &body, "http://ferry/forwards"]);
    assert_eq!(code, 201, "{v}");
    assert_eq!(echo(p2, b"to v6"), b"to v6");
    let _ = std::fs::remove_file(&api);
}

/// Stateful DHCPv6 with ISC dhclient (-6), the client Debian ships: a static
/// lease by DUID lands on the interface, and the FQDN the client sends
/// becomes an AAAA name; a second client from the pool gets PREFIX::1:0.
#[test]
fn dhcpv6_stateful_leases_with_dhclient() {
    let ns = Netns::new();
    let fixed = "fd66:6572:7279::10";
    let lease_arg = format!("00:03:00:01:02:03:04:05:06:07={fixed}");
    let _ferry = FerryNet::start(&ns, &["--configure", "--dhcp6-lease", &lease_arg]);
    slaac(&ns);
    let dir = std::env::temp_dir().join(format!("ferry-dhcp6-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, duid: &str| {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!("send fqdn.fqdn \"{name}\";\nsend fqdn.server-update on;\n"),
        )
        .unwrap();
        let leases = dir.join(format!("{name}.leases"));
        // dhclient takes its DUID from the lease file's default-duid.
        std::fs::write(&leases, format!("default-duid \"{duid}\";\n")).unwrap();
        let pid = dir.join(format!("{name}.pid"));
        // Our own lease script: Debian's dhclient-script would rewrite the
        // host's /etc/resolv.conf (a network namespace shares /etc).
        let script = dir.join("script");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$reason\" in BOUND6|RENEW6|REBIND6|REBOOT6)\n  ip -6 addr add \"$new_ip6_address/${new_ip6_prefixlen:-128}\" dev \"$interface\" nodad ;;\nesac\nexit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let resolv_before = std::fs::read("/etc/resolv.conf").ok();
        let out = ns.command(
            &[
                "dhclient",
                "-6",
                "-1",
                "-v",
                "-cf",
                conf.to_str().unwrap(),
                "-lf",
                leases.to_str().unwrap(),
                "-pf",
                pid.to_str().unwrap(),
                "-sf",
                script.to_str().unwrap(),
                "tap0",
            ],
            Duration::from_secs(60),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if let Ok(p) = std::fs::read_to_string(&pid) {
            let _ = Command::new("kill").arg(p.trim()).status();
        }
        assert!(out.status.success(), "dhclient -6: {text}");
        assert_eq!(
            std::fs::read("/etc/resolv.conf").ok(),
            resolv_before,
            "the host's resolv.conf changed"
        );
        text
    };
    // DUID-LL (type 3, Ethernet) 02:03:04:05:06:07, octal-escaped as
    // dhclient writes it.
    let text = run("web6", "\\000\\003\\000\\001\\002\\003\\004\\005\\006\\007");
    assert!(text.contains(fixed), "dhclient did not bind {fixed}: {text}");
    let addrs = ns.command(&["ip", "-6", "addr", "show", "dev", "tap0"], Duration::from_secs(5));
    let addrs = String::from_utf8_lossy(&addrs.stdout).to_string();
    assert!(addrs.contains(&format!("{fixed}/")), "{fixed} not on tap0: {addrs}");
    let out = ns.command(
        &["busybox", "nslookup", "-type=AAAA", "web6.test", GATEWAY6],
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(fixed), "AAAA web6.test: {text}");
    // Another client (another DUID): the first pool address.
    let text = run("db6", "\\000\\003\\000\\001\\002\\011\\011\\011\\011\\011");
    assert!(text.contains("fd66:6572:7279::1:0"), "pool lease: {text}");
    let out = ns.command(
        &["busybox", "nslookup", "-type=AAAA", "db6.test", GATEWAY6],
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fd66:6572:7279::1:0"));
}

/// A host without an IPv6 route: ferry runs in a namespace that has only
/// a loopback, so its connect() to a global IPv6 address fails at once
/// (nothing leaves the machine), and the guest hears "unreachable" at once
/// rather than waiting out its SYN retries.
#[test]
fn no_ipv6_route_on_the_host_is_unreachable_at_once() {
    let host = Netns::new();
    let up = host.command(&["ip", "link", "set", "lo", "up"], Duration::from_secs(5));
    assert!(up.status.success());
    let ns = Netns::new();
    let _ferry = FerryNet::start_hosted(&ns, &host, &["--configure"]);
    slaac(&ns);
    ns.run_in(|| {
        // 2001:db8::/32 is the documentation prefix; the host namespace has
        // no route to it (nor to anything but ::1).
        let target: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let start = Instant::now();
        let err = TcpStream::connect_timeout(&target, Duration::from_secs(20)).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "took {:?} to fail: {err}",
            start.elapsed()
        );
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable
            ),
            "{err}"
        );
    });
}

/// IPv6 in the control API and gvproxy's API: a guest's IPv6 addresses
/// beside its DHCP lease, names with AAAA records, and a gvproxy-style
/// expose from `[::1]` to the guest's IPv6 address.
#[test]
fn ipv6_in_the_control_and_gvproxy_apis() {
    common::require_tool("curl", "curl");
    let sock = std::env::temp_dir().join(format!("ferry-api6-{}.sock", std::process::id()));
    let ns = Netns::new();
    let _ferry = FerryNet::start(&ns, &["--configure", "--api", sock.to_str().unwrap()]);
    let addr = slaac(&ns);
    let (ok, text) = ns.udhcpc("api6", "/bin/true");
    assert!(ok, "udhcpc: {text}");
    // Traffic from the SLAAC address, so ferry has seen it.
    let out = ns.command(&["ping", "-6", "-c", "1", "-W", "2", GATEWAY6], Duration::from_secs(10));
    assert!(out.status.success());
    let (code, leases) = common::api_curl(&sock, &["http://ferry/leases"]);
    assert_eq!(code, 200);
    let lease = &leases[0];
    let ip6: Vec<&str> = lease["ip6"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(ip6.contains(&addr.to_string().as_str()), "{leases}");

    let (code, v) = common::api_curl(
        &sock,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"name":"svc6","ip":"10.0.2.60","ip6":"fd66:6572:7279::60"}"#,
            "http://ferry/dns/records",
        ],
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["ip6"], "fd66:6572:7279::60");
    let out = ns.command(
        &["busybox", "nslookup", "-type=AAAA", "svc6.test", GATEWAY6],
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fd66:6572:7279::60"));
    let (code, v) = common::api_curl(
        &sock,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"name":"bad","ip6":"10.0.2.61"}"#,
            "http://ferry/dns/records",
        ],
    );
    assert_eq!(code, 400, "{v}");

    // gvproxy's expose, IPv6 on both sides.
    let guest_port = 8086;
    let local = free_port6();
    let listener = ns.run_in(move || std::net::TcpListener::bind(("::", guest_port)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.write_all(b"from the guest over v6").unwrap();
    });
    let body = format!(r#"{{"local":"[::1]:{local}","remote":"[{addr}]:{guest_port}","protocol":"tcp"}}"#);
    let (code, v) = common::api_curl(
        &sock,
        &["-X", "POST", "-d", &body, "http://ferry/services/forwarder/expose"],
    );
    assert_eq!(code, 200, "{v}");
    let (_, all) = common::api_curl(&sock, &["http://ferry/services/forwarder/all"]);
    let remote = format!("[{addr}]:{guest_port}");
    assert!(
        all.as_array().unwrap().iter().any(|f| f["remote"] == remote.as_str()),
        "{all}"
    );
    let mut c = TcpStream::connect(("::1", local)).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "from the guest over v6");
    server.join().unwrap();
    std::fs::remove_file(&sock).ok();
}

/// The host alias stands for the host's loopback in both families: a
/// service on 127.0.0.1 only is reached through the IPv6 alias, one on ::1
/// only (Node's "localhost") through the IPv4 alias, and a port open on
/// neither is still refused at once.
#[test]
fn the_host_alias_reaches_a_service_bound_to_either_loopback() {
    let ns = Netns::new();
    let _ferry = FerryNet::start(&ns, &["--configure"]);
    slaac(&ns);
    let serve = |bind: &str| {
        let l = TcpListener::bind(bind).unwrap();
        let port = l.local_addr().unwrap().port();
        let greeting = format!("served on {bind}");
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.write_all(greeting.as_bytes()).unwrap();
        });
        port
    };
    let v4_only = serve("127.0.0.1:0");
    let v6_only = serve("[::1]:0");
    let closed = free_port6();
    ns.run_in(move || {
        let read = |to: SocketAddr| {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        assert_eq!(read(alias6(v4_only)), "served on 127.0.0.1:0");
        assert_eq!(
            read(SocketAddr::new("10.0.2.254".parse().unwrap(), v6_only)),
            "served on [::1]:0"
        );
        let start = Instant::now();
        let err = TcpStream::connect_timeout(&alias6(closed), Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(start.elapsed() < Duration::from_secs(2));
    });
}
