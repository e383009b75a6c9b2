//! The control API over its unix socket, driven with curl.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use common::dns::{first_a, query, udp_exchange};
use common::netns::{FerryNet, Netns};
use common::require_tool;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::Value;

fn curl(sock: &std::path::Path, args: &[&str]) -> (u16, Value) {
    common::api_curl(sock, args)
}

fn api_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ferry-api-{tag}-{}.sock", std::process::id()))
}

#[test]
fn health_stats_leases_and_dns_records() {
    require_tool("curl", "curl");
    let sock = api_path("main");
    let ns = Netns::new();
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
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let (code, v) = curl(&sock, &["http://ferry/health"]);
    assert_eq!((code, v["status"].as_str()), (200, Some("ok")));

    // Register a name; a client in the namespace resolves it; remove it again.
    let (code, v) = curl(
        &sock,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"name":"svc","ip":"10.0.2.50"}"#,
            "http://ferry/dns/records",
        ],
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["names"][0], "svc.test");
    let (_, list) = curl(&sock, &["http://ferry/dns/records"]);
    assert_eq!(list[0]["name"], "svc.test");
    let dns: std::net::SocketAddr = "10.0.2.1:53".parse().unwrap();
    let found = ns.run_in(move || udp_exchange(dns, &query("svc.test.", RecordType::A, false)).unwrap());
    assert_eq!(first_a(&found), Some("10.0.2.50".parse().unwrap()));
    let (code, _) = curl(&sock, &["-X", "DELETE", "http://ferry/dns/records/svc"]);
    assert_eq!(code, 200);
    let gone = ns.run_in(move || udp_exchange(dns, &query("svc.test.", RecordType::A, false)).unwrap());
    assert_eq!(gone.response_code(), ResponseCode::NXDomain);

    let (code, stats) = curl(&sock, &["http://ferry/stats"]);
    assert_eq!(code, 200);
    assert!(stats["rx_frames"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["dns_queries"].as_u64().unwrap() >= 2, "{stats}");
    let (code, leases) = curl(&sock, &["http://ferry/leases"]);
    assert_eq!(code, 200);
    assert!(leases.is_array());
    std::fs::remove_file(&sock).ok();
}

#[test]
fn bad_requests_get_4xx_and_the_daemon_keeps_serving() {
    require_tool("curl", "curl");
    let sock = api_path("bad");
    let ns = Netns::new();
    let mut ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--api",
            sock.to_str().unwrap(),
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    let cases: &[(&[&str], u16, &str)] = &[
        (
            &["-X", "POST", "-d", "{not json", "http://ferry/dns/records"],
            400,
            "malformed JSON",
        ),
        (
            &["-X", "POST", "-d", r#"{"name":"x"}"#, "http://ferry/dns/records"],
            400,
            "ip",
        ),
        (
            &[
                "-X",
                "POST",
                "-d",
                r#"{"name":"bad name","ip":"10.0.2.9"}"#,
                "http://ferry/dns/records",
            ],
            400,
            "valid",
        ),
        (
            &[
                "-X",
                "POST",
                "-d",
                r#"{"name":"x","ip":"300.1.1.1"}"#,
                "http://ferry/dns/records",
            ],
            400,
            "not an IP address",
        ),
        (&["-X", "DELETE", "http://ferry/dns/records/nothere"], 404, "nothere"),
        (&["http://ferry/nope"], 404, "/nope"),
        (&["-X", "PUT", "http://ferry/health"], 405, "PUT"),
    ];
    for (args, status, says) in cases {
        let (code, v) = curl(&sock, args);
        assert_eq!(code, *status, "{args:?}: {v}");
        assert!(v["error"].as_str().unwrap_or("").contains(says), "{args:?}: {v}");
    }
    // Oversize body: 413 without reading it all.
    let big = "x".repeat(100_000);
    let (code, _) = curl(
        &sock,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &big,
            "http://ferry/dns/records",
        ],
    );
    assert_eq!(code, 413);
    // Raw garbage and a client that hangs up mid-request.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"POST /dns/records HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"na")
        .unwrap();
    drop(s);
    assert!(ferry.alive());
    let (code, _) = curl(&sock, &["http://ferry/health"]);
    assert_eq!(code, 200);
    std::fs::remove_file(&sock).ok();
}

/// Forwards added through an API are bounded (`--max-forwards`): past the
/// limit a new one is refused with a message that says so and holds no
/// socket; removing one makes room again.
#[test]
fn forwards_past_the_limit_are_refused() {
    require_tool("curl", "curl");
    let sock = api_path("maxfwd");
    let ns = Netns::new();
    let ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--api",
            sock.to_str().unwrap(),
            "--max-forwards",
            "3",
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    let ports: Vec<u16> = (0..4)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        })
        .collect();
    let add = |port: u16| {
        let body = format!(r#"{{"publish":"127.0.0.1:{port}:80/tcp","guest":"10.0.2.100"}}"#);
        curl(&sock, &["-X", "POST", "-d", &body, "http://ferry/forwards"])
    };
    for &p in &ports[..3] {
        let (code, v) = add(p);
        assert_eq!(code, 201, "{v}");
    }
    let (code, v) = add(ports[3]);
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ports[3])).is_err(),
        "a refused forward holds its port"
    );
    let (_, stats) = curl(&sock, &["http://ferry/stats"]);
    assert_eq!(stats["forwards_refused"], 1, "{stats}");
    let (code, _) = curl(
        &sock,
        &[
            "-X",
            "DELETE",
            &format!("http://ferry/forwards/tcp/127.0.0.1:{}", ports[0]),
        ],
    );
    assert_eq!(code, 200);
    let (code, v) = add(ports[3]);
    assert_eq!(code, 201, "{v}");
    drop(ferry);
    std::fs::remove_file(&sock).ok();
}
