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
    let out = Ferry::new([
        "run",
        "--name",
        "web",
        "--dns-upstream",
        &upstream.addr.to_string(),
        "--",
        "sh",
        "-c",
        &script,
    ])
    .output();
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
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
