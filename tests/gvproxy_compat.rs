//! ferry as gvproxy: Go-style flags, gvproxy's address plan and static
//! lease, the ssh-port forward, pid and log files, the forwarder API.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{api_curl, Ferry};

const GVPROXY_MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];

/// A DHCPDISCOVER from `mac`, as an Ethernet frame (UDP checksum 0 = none).
fn dhcp_discover(mac: [u8; 6]) -> Vec<u8> {
    let mut dhcp = vec![0u8; 240];
    dhcp[..3].copy_from_slice(&[1, 1, 6]);
    dhcp[4..8].copy_from_slice(&[9, 9, 9, 9]);
    dhcp[28..34].copy_from_slice(&mac);
    dhcp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    dhcp.extend_from_slice(&[53, 1, 1, 255]);
    let udp = [
        &[0u8, 68, 0, 67][..],
        &((8 + dhcp.len()) as u16).to_be_bytes(),
        &[0, 0],
        &dhcp,
    ]
    .concat();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255];
    ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    let sum = common::inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    [&[0xff; 6][..], &mac, &[0x08, 0x00], &ip, &udp].concat()
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn driven_like_podman_machine() {
    let dir = std::env::temp_dir().join(format!("ferry-gvproxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("gvproxy");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), &link).unwrap();
    let (api, qemu, pid, log) = (
        dir.join("api.sock"),
        dir.join("qemu.sock"),
        dir.join("gv.pid"),
        dir.join("gv.log"),
    );
    let ssh = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = [
        "-listen".to_string(),
        format!("unix://{}", api.display()),
        format!("-listen-qemu=unix://{}", qemu.display()),
        "-ssh-port".into(),
        ssh.to_string(),
        "-pid-file".into(),
        pid.display().to_string(),
        "-log-file".into(),
        log.display().to_string(),
        "-debug".into(),
        "-mtu".into(),
        "1500".into(),
    ];
    let mut running = Ferry::with_binary(&link, &args).spawn();
    wait_for(&api);
    wait_for(&qemu);
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap().trim(),
        running.child.id().to_string()
    );

    let (code, all) = api_curl(&api, &["http://gvproxy/services/forwarder/all"]);
    assert_eq!(code, 200);
    assert_eq!(all[0]["local"], format!("127.0.0.1:{ssh}"));
    assert_eq!(all[0]["remote"], "192.168.127.2:22");

    // gvproxy's static lease over the QEMU stream.
    let mut s = UnixStream::connect(&qemu).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = dhcp_discover(GVPROXY_MAC);
    s.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&frame).unwrap();
    let offer = loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("no DHCP reply");
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut f).unwrap();
        if f.len() > 42 + 240 && f[12..14] == [8, 0] && f[23] == 17 && f[34..36] == [0, 67] {
            break f;
        }
    };
    let dhcp = &offer[42..];
    assert_eq!(&dhcp[16..20], &[192, 168, 127, 2], "yiaddr");
    assert_eq!(&dhcp[20..24], &[192, 168, 127, 1], "server");

    // SIGTERM: clean exit, pid file removed, the log file has our debug lines.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pid.exists(), "pid file left behind");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("DEBUG"), "no debug output in -log-file: {log_text:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unsupported_gvproxy_options_say_so() {
    let out = Ferry::new([
        "gvproxy",
        "-listen-qemu",
        "unix:///tmp/x.sock",
        "-forward-sock",
        "/a",
        "-forward-dest",
        "/b",
    ])
    .output();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("not supported by ferry yet"), "{}", out.stderr);
    let out = Ferry::new(["gvproxy", "-mtu", "1500"]).output();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("-listen-qemu or -listen-vfkit"), "{}", out.stderr);
}

/// A TCP SYN from `src` to `dst:port` as an Ethernet frame to `gw_mac`.
fn tcp_syn(gw_mac: &[u8], src: [u8; 4], dst: [u8; 4], port: u16) -> Vec<u8> {
    let mut tcp = [
        &[0x30u8, 0x39][..],
        &port.to_be_bytes(),
        &[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0],
    ]
    .concat();
    let pseudo = [&src[..], &dst[..], &[0, 6], &(tcp.len() as u16).to_be_bytes(), &tcp].concat();
    let sum = common::inet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = [&[0x45u8, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0][..], &src, &dst].concat();
    let sum = common::inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    [gw_mac, &GVPROXY_MAC[..], &[0x08, 0x00], &ip, &tcp].concat()
}

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("no frame from gvproxy");
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut f).unwrap();
    f
}

fn send_frame(s: &mut UnixStream, f: &[u8]) {
    s.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
    s.write_all(f).unwrap();
}

/// gvproxy's other options do what gvproxy does: `-version`, the address
/// plan flags, `-services` (the API on a second endpoint), `-notification`
/// (ready, then the VM's connection coming and going), `-pcap`, and the
/// EC2 metadata addresses kept from the guest unless `-ec2-metadata-access`.
#[test]
fn gvproxy_options_do_what_gvproxy_does() {
    let out = Ferry::new(["gvproxy", "-version"]).output();
    assert_eq!(out.code, Some(0));
    assert!(
        out.stdout.starts_with("gvproxy version v") && out.stdout.contains("ferry"),
        "{}",
        out.stdout
    );

    let dir = std::env::temp_dir().join(format!("ferry-gvproxy-opts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (api, svc, notify, qemu, pcap) = (
        dir.join("api.sock"),
        dir.join("svc.sock"),
        dir.join("notify.sock"),
        dir.join("qemu.sock"),
        dir.join("cap.pcap"),
    );
    let listener = std::os::unix::net::UnixListener::bind(&notify).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { break };
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    let next_note = || rx.recv_timeout(Duration::from_secs(10)).expect("no notification");
    let ssh = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = [
        format!("-listen=unix://{}", api.display()),
        format!("-services=unix://{}", svc.display()),
        format!("-notification=unix://{}", notify.display()),
        format!("-listen-qemu=unix://{}", qemu.display()),
        format!("-pcap={}", pcap.display()),
        "-subnet".into(),
        "10.77.0.0/24".into(),
        "-ssh-port".into(),
        ssh.to_string(),
    ];
    let mut running = Ferry::new(std::iter::once("gvproxy".to_string()).chain(args)).spawn();
    wait_for(&svc);
    wait_for(&qemu);
    assert!(next_note().contains(r#""notification_type":"ready""#));
    let (code, all) = api_curl(&svc, &["http://gvproxy/services/forwarder/all"]);
    assert_eq!(code, 200, "{all}");
    assert_eq!(all[0]["remote"], "10.77.0.2:22");

    let mut s = UnixStream::connect(&qemu).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(next_note().contains("connection_established"));
    send_frame(&mut s, &dhcp_discover(GVPROXY_MAC));
    let offer = loop {
        let f = read_frame(&mut s);
        if f.len() > 42 + 240 && f[12..14] == [8, 0] && f[23] == 17 && f[34..36] == [0, 67] {
            break f;
        }
    };
    assert_eq!(&offer[42 + 16..42 + 20], &[10, 77, 0, 2], "yiaddr from -subnet");
    assert_eq!(&offer[42 + 20..42 + 24], &[10, 77, 0, 1], "the gateway from -subnet");
    let gw_mac = offer[6..12].to_vec();
    // The instance metadata address: "network unreachable" at once, never
    // a host connect (nothing leaves the machine).
    send_frame(&mut s, &tcp_syn(&gw_mac, [10, 77, 0, 2], [169, 254, 169, 254], 80));
    let icmp = loop {
        let f = read_frame(&mut s);
        if f[12..14] == [8, 0] && f[23] == 1 {
            break f;
        }
    };
    assert_eq!((icmp[34], icmp[35]), (3, 0), "ICMP network unreachable");
    // gvproxy's other API paths, with its shapes.
    let (code, cam) = api_curl(&api, &["http://gvproxy/cam"]);
    assert_eq!(code, 200);
    assert!(cam.get("5a:94:ef:e4:0c:ee").is_some(), "{cam}");
    let (code, leases) = api_curl(&api, &["http://gvproxy/services/dhcp/leases"]);
    assert!(code == 200 && leases.is_object(), "{leases}");
    let zone = r#"{"Name":"podman.internal.","Records":[{"Name":"foo","IP":"10.77.0.9"}]}"#;
    let (code, v) = api_curl(&api, &["-X", "POST", "-d", zone, "http://gvproxy/services/dns/add"]);
    assert_eq!(code, 200, "{v}");
    let (_, zones) = api_curl(&api, &["http://gvproxy/services/dns/all"]);
    let added = zones
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["Name"] == "podman.internal.")
        .expect("the added zone");
    assert_eq!(added["Records"][0]["Name"], "foo");
    assert_eq!(added["Records"][0]["IP"], "10.77.0.9");
    assert!(
        zones
            .as_array()
            .unwrap()
            .iter()
            .any(|z| z["Name"] == "containers.internal."),
        "{zones}"
    );
    let (_, names) = api_curl(&api, &["http://gvproxy/dns/records"]);
    assert!(
        names
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "foo.podman.internal"),
        "{names}"
    );
    drop(s);
    assert!(next_note().contains("connection_closed"));

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
    let _ = running.child.wait();
    let cap = std::fs::read(&pcap).unwrap();
    assert_eq!(&cap[..4], &0xa1b2c3d4u32.to_le_bytes(), "pcap magic");
    assert!(
        cap.len() > 24 + 2 * 16 + 300,
        "the DHCP exchange is in the capture ({} bytes)",
        cap.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}
