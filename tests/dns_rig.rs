//! DNS on ferry's gateway, from real clients in namespaces this test
//! creates; forwarding goes only to a resolver the test runs on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::dns::{first_a, query, tcp_exchange, udp_exchange, Upstream};
use common::netns::{FerryNet, Netns};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const DNS: &str = "10.0.2.1:53";

fn dns() -> SocketAddr {
    DNS.parse().unwrap()
}

/// Runs busybox udhcpc in `ns` with a host name; returns the leased address.
fn dhcp(ns: &Netns, hostname: &str) -> String {
    let (ok, text) = ns.udhcpc(hostname, "/bin/true");
    assert!(ok, "udhcpc: {text}");
    let ip = text
        .split("lease of ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("leased address")
        .to_string();
    // /bin/true as the script: configure the address ourselves.
    let cidr = format!("{ip}/24");
    assert!(ns
        .command(&["ip", "addr", "add", &cidr, "dev", "tap0"], Duration::from_secs(5))
        .status
        .success());
    ip
}

#[test]
fn guest_names_from_dhcp_resolve_from_another_guest() {
    let (a, b) = (Netns::new(), Netns::new());
    let (pa, pb) = (a.path().display().to_string(), b.path().display().to_string());
    let _ferry = FerryNet::start(&a, &["--netns", &pb, "--dns-upstream", "127.0.0.1:9"]);
    let _ = pa;
    let web_ip = dhcp(&a, "web");
    let db_ip = dhcp(&b, "db");
    assert_ne!(web_ip, db_ip);
    // busybox nslookup from the other guest, straight at the gateway.
    let out = b.command(
        &["busybox", "nslookup", "web.test", "10.0.2.1"],
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&web_ip), "nslookup web.test: {text}");
    // Precise checks with our own client, over UDP and TCP.
    let (udp, tcp, missing) = b.run_in(|| {
        let udp = udp_exchange(dns(), &query("web.test.", RecordType::A, false)).unwrap();
        let tcp = tcp_exchange(dns(), &query("web.test.", RecordType::A, false)).unwrap();
        let missing = udp_exchange(dns(), &query("nosuch.test.", RecordType::A, false)).unwrap();
        (udp, tcp, missing)
    });
    assert_eq!(first_a(&udp).map(|a| a.to_string()), Some(web_ip.clone()));
    assert_eq!(first_a(&tcp).map(|a| a.to_string()), Some(web_ip.clone()));
    assert!(udp.authoritative());
    assert_eq!(missing.response_code(), ResponseCode::NXDomain);
    // The guests reach each other directly through the switch.
    let ping = b.command(
        &["busybox", "ping", "-c", "1", "-W", "3", &web_ip],
        Duration::from_secs(10),
    );
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
}

#[test]
fn host_alias_by_name_then_http_through_it() {
    let ns = Netns::new();
    let _ferry = FerryNet::start(&ns, &["--configure", "--dns-upstream", "127.0.0.1:9"]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nby name\n");
    });
    // A real resolver (glibc, via python) with a resolv.conf pointing at
    // the gateway, in a private mount namespace.
    let dir = std::env::temp_dir().join(format!("ferry-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("resolv.conf");
    std::fs::write(&conf, "nameserver 10.0.2.1\nsearch test\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/resolv.conf && python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://host.container.internal:{port}/\", timeout=10).read().decode(), end=\"\")'",
        conf.display()
    );
    let out = ns.command(&["unshare", "--mount", "sh", "-c", &script], Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "by name\n");
}

#[test]
fn forwarding_cache_truncation_and_servfail() {
    let mut upstream = Upstream::start();
    let up = upstream.addr.to_string();
    let ns = Netns::new();
    let _ferry = FerryNet::start(&ns, &["--configure", "--dns-upstream", &up]);

    // Forwarded, then served from the cache with a lower TTL.
    let (first, second) = ns.run_in(|| {
        let first = udp_exchange(dns(), &query("ttl3.upstream.example.", RecordType::A, false)).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let second = udp_exchange(dns(), &query("ttl3.upstream.example.", RecordType::A, false)).unwrap();
        (first, second)
    });
    assert_eq!(first_a(&first), Some(Ipv4Addr::new(192, 0, 2, 7)));
    assert_eq!(first.id(), 0x4321);
    assert_eq!(first_a(&second), Some(Ipv4Addr::new(192, 0, 2, 7)));
    assert!(
        second.answers()[0].ttl() < 3,
        "cached TTL must count down: {}",
        second.answers()[0].ttl()
    );
    assert_eq!(
        upstream.queries.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second answer must come from the cache"
    );

    // Truncated upstream UDP answer: ferry retries over TCP. The client
    // with EDNS gets all 50 records over UDP; without EDNS it gets TC and
    // the whole answer over TCP to the gateway.
    let (edns, plain, tcp) = ns.run_in(|| {
        let edns = udp_exchange(dns(), &query("big.example.", RecordType::A, true)).unwrap();
        let plain = udp_exchange(dns(), &query("big.example.", RecordType::A, false)).unwrap();
        let tcp = tcp_exchange(dns(), &query("big.example.", RecordType::A, false)).unwrap();
        (edns, plain, tcp)
    });
    assert_eq!(edns.answers().len(), 50);
    assert!(!edns.truncated());
    assert!(plain.truncated() && plain.answers().is_empty());
    assert_eq!(tcp.answers().len(), 50);

    // Upstream gone: the cached name is still served until its TTL ends...
    upstream.stop();
    let (cached, uncached, uncached_time, expired) = ns.run_in(|| {
        let cached = udp_exchange(dns(), &query("ttl3.upstream.example.", RecordType::A, false)).unwrap();
        let start = Instant::now();
        let uncached = udp_exchange(dns(), &query("other.upstream.example.", RecordType::A, false)).unwrap();
        let uncached_time = start.elapsed();
        std::thread::sleep(Duration::from_secs(3));
        let expired = udp_exchange(dns(), &query("ttl3.upstream.example.", RecordType::A, false)).unwrap();
        (cached, uncached, uncached_time, expired)
    });
    assert_eq!(first_a(&cached), Some(Ipv4Addr::new(192, 0, 2, 7)));
    // ...and everything else is SERVFAIL, quickly.
    assert_eq!(uncached.response_code(), ResponseCode::ServFail);
    assert!(
        uncached_time < Duration::from_secs(3),
        "SERVFAIL took {uncached_time:?}"
    );
    assert_eq!(expired.response_code(), ResponseCode::ServFail);
}

#[test]
fn floods_and_garbage_do_not_stop_dns() {
    let ns = Netns::new();
    let mut ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--dns-upstream",
            "127.0.0.1:9",
            "--dns-record",
            "svc=10.0.2.77",
        ],
    );
    let (answered, after) = ns.run_in(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_nonblocking(true).unwrap();
        let q = query("svc.test.", RecordType::A, false).to_vec().unwrap();
        let mut answered = 0;
        let mut buf = [0u8; 1500];
        let mut drain = |answered: &mut usize| {
            while s.recv(&mut buf).is_ok() {
                *answered += 1;
            }
        };
        // A burst far above the per-source limit, with garbage mixed in.
        for i in 0..20_000u32 {
            if i % 4 == 0 {
                let junk: Vec<u8> = (0..(i % 300)).map(|j| (i ^ j) as u8).collect();
                let _ = s.send_to(&junk, dns());
            } else {
                let _ = s.send_to(&q, dns());
            }
            if i % 64 == 0 {
                drain(&mut answered);
            }
        }
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            drain(&mut answered);
            std::thread::sleep(Duration::from_millis(5));
        }
        // The bucket refills: a well-behaved query is answered again.
        std::thread::sleep(Duration::from_millis(1500));
        let after = udp_exchange(dns(), &query("svc.test.", RecordType::A, false)).unwrap();
        (answered, after)
    });
    assert!(ferry.alive());
    assert!(answered > 0);
    // The flood was cut by the per-source limit (2000 q/s, burst 4000).
    assert!(answered < 12_000, "answered {answered} of 20000: no rate limit?");
    assert_eq!(first_a(&after), Some(Ipv4Addr::new(10, 0, 2, 77)));
}

#[test]
fn host_side_listener_answers_guest_names() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let ns = Netns::new();
    let _ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--dns-listen",
            &listen,
            "--dns-record",
            "api=10.0.2.40",
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    let addr: SocketAddr = listen.parse().unwrap();
    let udp = udp_exchange(addr, &query("api.test.", RecordType::A, false)).unwrap();
    assert_eq!(first_a(&udp), Some(Ipv4Addr::new(10, 0, 2, 40)));
    let tcp = tcp_exchange(addr, &query("host.docker.internal.", RecordType::A, false)).unwrap();
    assert_eq!(first_a(&tcp), Some(Ipv4Addr::new(10, 0, 2, 254)));
    let none = udp_exchange(addr, &query("nope.test.", RecordType::A, true)).unwrap();
    assert_eq!(none.response_code(), ResponseCode::NXDomain);
}

/// Bursts from several clients at once, over IPv4 and IPv6: the host
/// listener takes and answers queries in batches, so every answer must
/// still carry its own query's ID and name and go back to the client that
/// asked; a malformed datagram in the burst is dropped alone.
#[test]
fn host_side_listener_answers_bursts_from_many_clients() {
    use std::collections::HashMap;
    use std::net::UdpSocket;
    for host in ["127.0.0.1", "[::1]"] {
        let upstream = Upstream::start();
        let up = upstream.addr.to_string();
        let bind = format!("{host}:0");
        let port = UdpSocket::bind(&bind).unwrap().local_addr().unwrap().port();
        let listen = format!("{host}:{port}");
        let ns = Netns::new();
        let _ferry = FerryNet::start(
            &ns,
            &[
                "--dns-listen",
                &listen,
                "--dns-record",
                "api=10.0.2.40",
                "--dns-upstream",
                &up,
            ],
        );
        let addr: SocketAddr = listen.parse().unwrap();
        let clients: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind(&bind).unwrap()).collect();
        for c in &clients {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        // Forwarded once each (with and without EDNS, which the cache keeps
        // apart), so the bursts below are answered from the cache.
        for k in 0..16u16 {
            let name = format!("c{}.upstream.example.", k / 2);
            let mut q = query(&name, RecordType::A, k % 2 == 0);
            q.set_id(0xf000 | k);
            clients[0].send_to(&q.to_vec().unwrap(), addr).unwrap();
            let mut buf = [0u8; 4096];
            let n = clients[0].recv(&mut buf).expect("warm-up answer");
            let warm = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(
                (warm.id(), first_a(&warm)),
                (0xf000 | k, Some(Ipv4Addr::new(192, 0, 2, 7)))
            );
        }
        for round in 0..4u16 {
            let mut asked: Vec<HashMap<u16, String>> = vec![HashMap::new(); clients.len()];
            for (ci, c) in clients.iter().enumerate() {
                for i in 0..40u16 {
                    let name = match i % 3 {
                        0 => "api.test.".to_string(),
                        1 => format!("c{}.upstream.example.", i % 8),
                        _ => format!("nosuch{i}.test."),
                    };
                    let id = (ci as u16) << 12 | round << 8 | i;
                    let mut q = query(&name, RecordType::A, i % 2 == 0);
                    q.set_id(id);
                    c.send_to(&q.to_vec().unwrap(), addr).unwrap();
                    asked[ci].insert(id, name);
                    if i == 20 {
                        c.send_to(b"\x01\x02\x03", addr).unwrap();
                    }
                }
            }
            for (ci, c) in clients.iter().enumerate() {
                let mut buf = [0u8; 4096];
                while !asked[ci].is_empty() {
                    let n = c.recv(&mut buf).unwrap_or_else(|e| {
                        panic!("{host} round {round} client {ci}: {} unanswered: {e}", asked[ci].len())
                    });
                    let m = hickory_proto::op::Message::from_vec(&buf[..n]).expect("parseable reply");
                    let name = asked[ci]
                        .remove(&m.id())
                        .unwrap_or_else(|| panic!("client {ci} got an answer it did not ask for: id {:#x}", m.id()));
                    assert_eq!(m.queries()[0].name().to_ascii(), name, "answer {:#x}", m.id());
                    match name.as_str() {
                        "api.test." => assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 0, 2, 40))),
                        n if n.ends_with("upstream.example.") => {
                            assert_eq!(first_a(&m), Some(Ipv4Addr::new(192, 0, 2, 7)))
                        }
                        _ => assert_eq!(m.response_code(), ResponseCode::NXDomain),
                    }
                }
            }
        }
        assert_eq!(
            upstream.queries.load(std::sync::atomic::Ordering::SeqCst),
            16,
            "{host}: the bursts must be answered from the cache"
        );
    }
}
