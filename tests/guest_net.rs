//! A real Debian-kernel guest under QEMU on ferry's network (QEMU's stream
//! netdev): DHCP, DNS names, forwarding through a test resolver on
//! loopback, and HTTP to a host service by name.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::dns::Upstream;
use common::{require_tool, Ferry};

fn http_server(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(4) {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    port
}

/// `ferry run --name web FLAGS -- sh -c SCRIPT`, which must succeed.
fn run_web(flags: &[&str], script: &str) -> common::Output {
    let mut args = vec!["run", "--name", "web"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", script]);
    let out = Ferry::new(args).output();
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    out
}

#[test]
fn guest_gets_dhcp_dns_and_reaches_the_host_by_name() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let upstream = Upstream::start();
    let port = http_server("hello from the host\n");
    let script = format!(
        "ip -4 -o addr show eth0 | awk '{{print \"addr\", $4}}'; \
         cat /etc/resolv.conf; \
         nslookup web.test 2>&1 | tail -n +3; \
         nslookup ttl60.upstream.example 2>&1 | tail -n +3; \
         nslookup nosuch.test 2>&1 | grep -m1 NXDOMAIN; \
         wget -q -O - http://host.container.internal:{port}/"
    );
    let out = run_web(&["--dns-upstream", &upstream.addr.to_string()], &script);
    let o = &out.stdout;
    assert!(o.contains("addr 10.0.2.2/24"), "no DHCP address:\n{o}");
    assert!(
        o.contains("nameserver 10.0.2.1") && o.contains("search test"),
        "resolv.conf:\n{o}"
    );
    assert!(o.contains("Name:\tweb.test\nAddress: 10.0.2.2"), "web.test:\n{o}");
    assert!(o.contains("Address: 192.0.2.7"), "forwarded name:\n{o}");
    assert!(o.contains("NXDOMAIN"), "unknown .test name:\n{o}");
    assert!(o.ends_with("hello from the host\n"), "HTTP by name:\n{o}");
    assert!(upstream.queries.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn no_net_means_no_nic() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let out = Ferry::new(["run", "--no-net", "--", "sh", "-c", "ls /sys/class/net"]).output();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "lo");
}

/// Two QEMU guests on one `ferry net`: the second finds the first by name,
/// pings it and fetches a page from its web server.
#[test]
fn two_guests_on_one_ferry_reach_each_other() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let ns = common::netns::Netns::new();
    let sock = std::env::temp_dir().join(format!("ferry-two-guests-{}.sock", std::process::id()));
    let listen = format!("unix://{}", sock.display());
    let _net = common::netns::FerryNet::start(&ns, &["--listen-qemu", &listen, "--dns-upstream", "127.0.0.1:9"]);
    let server = Ferry::new([
        "run",
        "--network",
        &listen,
        "--name",
        "alpha",
        "--",
        "sh",
        "-c",
        "mkdir /www && echo from-alpha > /www/index.html && httpd -p 80 -h /www && sleep 90",
    ])
    .spawn();
    let client = Ferry::new([
        "run", "--network", &listen, "--name", "beta", "--", "sh", "-c",
        "for i in $(seq 1 120); do wget -q -O - http://alpha.test/ 2>/dev/null && ping -c 1 -W 2 alpha.test >/dev/null && echo pinged && exit 0; sleep 0.5; done; exit 1",
    ])
    .timeout(std::time::Duration::from_secs(150))
    .output();
    drop(server);
    std::fs::remove_file(&sock).ok();
    assert_eq!(
        client.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        client.stdout,
        client.stderr
    );
    assert_eq!(client.stdout, "from-alpha\npinged\n");
}

/// The QEMU stream front end at MTU 1500, where a TCG guest drains frames
/// slower than the gateway's stack sends them: 64 MiB from a host service
/// arrive intact (three times: twice as fast as the guest takes them, once
/// through sha256sum), and the guest is sent each byte about once. smoltcp's
/// retransmission timer expires while the guest's ACKs are still
/// advancing and it resends the whole window; ferry holds those resends
/// back (net/src/resend.rs). Before that, ferry sent such a guest 1.6-3.4
/// times the bytes it downloaded.
#[test]
fn stream_guest_at_mtu_1500_is_sent_each_byte_once() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    require_tool("curl", "curl");
    use sha2::Digest;
    const LEN: usize = 64 << 20;
    let ns = common::netns::Netns::new();
    let dir = std::env::temp_dir();
    let sock = dir.join(format!("ferry-stream-once-{}.sock", std::process::id()));
    let api = dir.join(format!("ferry-stream-once-{}.api", std::process::id()));
    let listen = format!("unix://{}", sock.display());
    let mut net = common::netns::FerryNet::start(
        &ns,
        &[
            "--listen-qemu",
            &listen,
            "--mtu",
            "1500",
            "--api",
            api.to_str().unwrap(),
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    let mut data = vec![0u8; LEN];
    common::netns::Pattern::new(11).fill(&mut data);
    let want = format!("{:x}", sha2::Sha256::digest(&data));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(3) {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", data.len());
            let _ = c.write_all(&data);
        }
    });
    // Twice as fast as the guest takes it, once through sha256sum. With
    // 1 GiB the guest's receive window grows to several MiB.
    let script = format!(
        "U=http://host.container.internal:{port}/; wget -q -O /dev/null $U && wget -q -O /dev/null $U && wget -q -O - $U | sha256sum | cut -d' ' -f1; cat /sys/class/net/eth0/mtu"
    );
    let out = Ferry::new([
        "run",
        "--memory",
        "1024",
        "--network",
        &listen,
        "--",
        "sh",
        "-c",
        &script,
    ])
    .timeout(std::time::Duration::from_secs(150))
    .output();
    let (code, stats) = common::api_curl(&api, &["http://ferry/stats"]);
    assert!(net.alive(), "ferry net died");
    std::fs::remove_file(&sock).ok();
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, format!("{want}\n1500\n"), "data damaged or wrong MTU");
    assert_eq!(code, 200, "{stats}");
    let sent = stats["tx_bytes"].as_u64().unwrap();
    // Headers of 1,460-byte segments add 3.7 %; DHCP, DNS and ARP a little.
    assert!(
        sent < 3 * LEN as u64 * 12 / 10,
        "ferry sent the guest {sent} bytes for 3 x {LEN} (held resends: {})",
        stats["tcp_resends_held"]
    );
    eprintln!(
        "tx_bytes {sent} for 3 x {LEN}; resends held: {}",
        stats["tcp_resends_held"]
    );
}

/// A guest on `ferry net --listen-vhost-user` (QEMU `-netdev vhost-user`):
/// ferry works the guest's virtqueues itself. At MTU 1500 the guest
/// negotiates segmentation offload both ways (HOST_TSO4, GUEST_TSO4): DHCP,
/// DNS, 24 MiB from a host service by the host alias and the same 24 MiB
/// back up (both checked by sha256), and a host client reaching the
/// guest's web server through `-p`.
#[test]
fn vhost_user_guest_gets_a_lease_and_moves_data_both_ways() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    use sha2::Digest;
    let ns = common::netns::Netns::new();
    let sock = std::env::temp_dir().join(format!("ferry-vhost-user-{}.sock", std::process::id()));
    let forward = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let spec = format!("127.0.0.1:{forward}:80");
    let mut net = common::netns::FerryNet::start(
        &ns,
        &[
            "--listen-vhost-user",
            sock.to_str().unwrap(),
            "--mtu",
            "1500",
            "-p",
            &spec,
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    // A host sink for the upload: reads the 24 MiB and reports its hash.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let (uploaded_tx, uploaded) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = sink.accept() {
            let mut got = vec![0u8; 24 << 20];
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(60)));
            let ok = c.read_exact(&mut got).is_ok();
            let _ = uploaded_tx.send(ok.then(|| format!("{:x}", sha2::Sha256::digest(&got))));
        }
    });
    // A host service with 24 MiB of patterned data.
    let mut data = vec![0u8; 24 << 20];
    common::netns::Pattern::new(7).fill(&mut data);
    let want = format!("{:x}", sha2::Sha256::digest(&data));
    let data = std::sync::Arc::new(data);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(2) {
            let Ok(mut c) = conn else { continue };
            let data = data.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf);
                let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", data.len());
                let _ = c.write_all(&data);
            });
        }
    });
    let script = format!(
        "ip -4 -o addr show eth0 | awk '{{print \"addr\", $4}}'; \
         nslookup vm.test 2>&1 | grep -A1 'Name:' | tail -1; \
         cat /sys/class/net/eth0/mtu; \
         for d in /sys/bus/virtio/devices/*; do [ \"$(cat $d/device)\" = 0x0001 ] && echo features $(cat $d/features); done; \
         wget -q -O /tmp/d http://host.container.internal:{port}/; sha256sum /tmp/d | cut -d' ' -f1; \
         nc host.container.internal {sink_port} < /tmp/d; echo upload-done; \
         mkdir /www && echo served-over-vhost-user > /www/index.html && httpd -p 80 -h /www && echo httpd-up; \
         sleep 60"
    );
    let mut guest = Ferry::new([
        "run",
        "--network",
        &format!("vhost-user://{}", sock.display()),
        "--name",
        "vm",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .timeout(std::time::Duration::from_secs(150))
    .spawn();
    // Reach the guest's server through the forward once it is up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let page = loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", forward))
            .ok()
            .and_then(|mut c| {
                c.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
                write!(c, "GET / HTTP/1.0\r\n\r\n").ok()?;
                let mut s = String::new();
                c.read_to_string(&mut s).ok()?;
                s.contains("served-over-vhost-user").then_some(s)
            });
        if let Some(page) = got {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest's web server never answered through -p"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(page.ends_with("served-over-vhost-user\n"), "{page}");
    let stdout = guest.kill_and_collect();
    assert!(stdout.contains("addr 10.0.2.2/24"), "no DHCP lease:\n{stdout}");
    assert!(stdout.contains("Address: 10.0.2.2"), "vm.test:\n{stdout}");
    assert!(stdout.contains(&want), "data from the host arrived damaged:\n{stdout}");
    let up = uploaded.recv_timeout(std::time::Duration::from_secs(60)).ok().flatten();
    assert_eq!(
        up.as_deref(),
        Some(want.as_str()),
        "the upload arrived damaged or not at all:\n{stdout}"
    );
    assert!(stdout.contains("\n1500\n"), "guest MTU:\n{stdout}");
    let features = stdout
        .lines()
        .find_map(|l| l.strip_prefix("features "))
        .unwrap_or_else(|| panic!("no virtio-net features:\n{stdout}"));
    // Bits 7 and 11: GUEST_TSO4 and HOST_TSO4 (guest-side bit strings).
    assert_eq!(
        (features.as_bytes().get(7), features.as_bytes().get(11)),
        (Some(&b'1'), Some(&b'1')),
        "TSO not negotiated: {features}"
    );
    assert!(net.alive(), "ferry net died");
    std::fs::remove_file(&sock).ok();
}

/// A guest on `ferry net --listen-vfkit` (one frame per unix datagram, as
/// vfkit/Virtualization.framework send them), driven by QEMU's dgram
/// netdev: DHCP, DNS and HTTP to a host service by the host alias.
#[test]
fn datagram_guest_gets_a_lease_and_reaches_the_host() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let ns = common::netns::Netns::new();
    let sock = std::env::temp_dir().join(format!("ferry-vfkit-guest-{}.sock", std::process::id()));
    let listen = format!("unixgram://{}", sock.display());
    let _net = common::netns::FerryNet::start(&ns, &["--listen-vfkit", &listen, "--dns-upstream", "127.0.0.1:9"]);
    let port = http_server("hello over datagrams\n");
    let script = format!(
        "ip -4 -o addr show eth0 | awk '{{print \"addr\", $4}}'; \
         nslookup dg.test 2>&1 | grep -A1 'Name:' | tail -1; \
         wget -q -O - http://host.container.internal:{port}/"
    );
    let out = Ferry::new(["run", "--network", &listen, "--name", "dg", "--", "sh", "-c", &script]).output();
    std::fs::remove_file(&sock).ok();
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("addr 10.0.2.2/24"), "{}", out.stdout);
    assert!(out.stdout.contains("Address: 10.0.2.2"), "{}", out.stdout);
    assert!(out.stdout.ends_with("hello over datagrams\n"), "{}", out.stdout);
}

/// IPv6 in a real guest: the kernel's SLAAC on ferry's router advertisement
/// gives eth0 a global address in ferry's /64 before the workload starts;
/// a name with only an AAAA record reaches a host service that listens on
/// `::1` only (so IPv4 could not have carried it); the guest's own name
/// gains its IPv6 address as AAAA.
#[test]
fn guest_gets_ipv6_and_reaches_a_host_service_by_name_over_ipv6() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let l = TcpListener::bind("[::1]:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let peers = std::thread::spawn(move || {
        let (mut c, peer) = l.accept().unwrap();
        let mut buf = [0u8; 2048];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nhello over v6");
        peer
    });
    let script = format!(
        "ip -6 -o addr show dev eth0 scope global | awk '{{print \"addr6\", $4}}'; \
         ip -6 route show default | sed 's/^/route6 /'; \
         wget -q -O - http://hostv6.test:{port}/; echo; \
         nslookup -type=AAAA web.test 2>&1 | tail -n +3"
    );
    let out = run_web(&["--dns-record", "hostv6=fd66:6572:7279::fe"], &script);
    let o = &out.stdout;
    let addr = o
        .lines()
        .find_map(|l| l.strip_prefix("addr6 "))
        .unwrap_or_else(|| panic!("no global IPv6 address on eth0:\n{o}"));
    let addr = addr.split('/').next().unwrap();
    assert!(
        addr.starts_with("fd66:6572:7279:0:"),
        "SLAAC address {addr} outside ferry's /64:\n{o}"
    );
    assert!(o.contains("route6 default via fe80::1"), "no IPv6 default route:\n{o}");
    assert!(o.contains("hello over v6"), "HTTP over IPv6 by name:\n{o}");
    assert!(o.contains(&format!("Address: {addr}")), "AAAA web.test = {addr}:\n{o}");
    let peer = peers.join().unwrap();
    assert!(peer.is_ipv6(), "the host service was reached from {peer}");
}
