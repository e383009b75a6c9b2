//! VM front ends driven at the socket level: framing, bad input, and
//! several guests on one ferry.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use common::netns::{FerryNet, Netns};
use serde_json::Value;

const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x01];

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ferry-fe-{tag}-{}", std::process::id()))
}

/// An ARP request from `mac`/`ip` for the gateway.
fn arp_request(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    [
        &[0xff; 6][..],
        &mac,
        &[0x08, 0x06],
        &[0, 1, 8, 0, 6, 4, 0, 1],
        &mac,
        &ip,
        &[0; 6],
        &[10, 0, 2, 1],
    ]
    .concat()
}

fn is_arp_reply_to(frame: &[u8], mac: [u8; 6]) -> bool {
    frame.len() >= 42
        && frame[..6] == mac
        && frame[6..12] == GATEWAY_MAC
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
}

fn stats(api: &std::path::Path) -> Value {
    common::api_curl(api, &["http://ferry/stats"]).1
}

/// Sends one length-prefixed frame.
fn send_frame(s: &mut UnixStream, frame: &[u8]) {
    s.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    s.write_all(frame).unwrap();
}

/// Reads frames until one satisfies `want` (bounded by the read timeout).
fn await_frame(s: &mut UnixStream, want: impl Fn(&[u8]) -> bool) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..50 {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return false;
        }
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut f).is_err() {
            return false;
        }
        if want(&f) {
            return true;
        }
    }
    false
}

#[test]
fn qemu_stream_framing_and_bad_input() {
    let ns = Netns::new();
    let (sock, api) = (tmp("stream.sock"), tmp("api.sock"));
    let listen = format!("unix://{}", sock.display());
    let _ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--listen-qemu",
            &listen,
            "--api",
            api.to_str().unwrap(),
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );

    // A well-behaved guest, attached all along.
    let good_mac = [0x02, 0, 0, 0, 0, 0x10];
    let mut good = UnixStream::connect(&sock).unwrap();
    send_frame(&mut good, &arp_request(good_mac, [10, 0, 2, 10]));
    assert!(
        await_frame(&mut good, |f| is_arp_reply_to(f, good_mac)),
        "no ARP reply over the stream"
    );

    // Bad clients, one per way of breaking the framing.
    let bad_inputs: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 0],                                     // zero-length frame
        vec![0x7f, 0xff, 0xff, 0xff],                         // absurd length
        [&100_000u32.to_be_bytes()[..], &[0u8; 64]].concat(), // over the MTU
        [&60u32.to_be_bytes()[..], &[1u8; 10]].concat(),      // half a frame, then gone
        vec![0, 0],                                           // half a length prefix, then gone
    ];
    for bad in &bad_inputs {
        let mut s = UnixStream::connect(&sock).unwrap();
        let _ = s.write_all(bad);
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = stats(&api);
    assert!(
        s["port_errors"].as_u64().unwrap() >= 3,
        "bad length prefixes not counted: {s}"
    );

    // The good guest is unaffected, and so is the namespace's tap.
    let good_mac2 = [0x02, 0, 0, 0, 0, 0x11];
    send_frame(&mut good, &arp_request(good_mac2, [10, 0, 2, 11]));
    assert!(
        await_frame(&mut good, |f| is_arp_reply_to(f, good_mac2)),
        "good guest stopped being served"
    );
    let ping = ns.command(
        &["busybox", "ping", "-c", "1", "-W", "3", "10.0.2.1"],
        Duration::from_secs(10),
    );
    assert!(ping.status.success());

    std::fs::remove_file(&api).ok();
}

#[test]
fn two_guests_on_one_switch_reach_each_other() {
    let (a, b) = (Netns::new(), Netns::new());
    let pb = b.path().display().to_string();
    let _ferry = FerryNet::start(&a, &["--configure", "--netns", &pb, "--dns-upstream", "127.0.0.1:9"]);
    // --configure gives the second namespace the second guest address.
    let ping = a.command(
        &["busybox", "ping", "-c", "2", "-W", "3", "10.0.2.3"],
        Duration::from_secs(15),
    );
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    let ping = b.command(
        &["busybox", "ping", "-c", "2", "-W", "3", "10.0.2.2"],
        Duration::from_secs(15),
    );
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
}

#[test]
fn vfkit_unixgram_greeting_frames_and_junk() {
    use std::os::unix::net::UnixDatagram;
    let ns = Netns::new();
    let (sock, client_path) = (tmp("vfkit.sock"), tmp("vfkit-client.sock"));
    let listen = format!("unixgram://{}", sock.display());
    let _ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--listen-vfkit",
            &listen,
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    let _ = std::fs::remove_file(&client_path);
    let c = UnixDatagram::bind(&client_path).unwrap();
    c.connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send(b"VFKT").unwrap();
    // Junk that must be dropped without harm: empty, tiny, garbage.
    c.send(&[]).unwrap();
    c.send(&[1, 2, 3]).unwrap();
    c.send(&[0xab; 1500]).unwrap();
    let mac = [0x02, 0, 0, 0, 0, 0x20];
    c.send(&arp_request(mac, [10, 0, 2, 20])).unwrap();
    let mut buf = [0u8; 65536];
    let mut answered = false;
    for _ in 0..20 {
        let Ok(n) = c.recv(&mut buf) else { break };
        if is_arp_reply_to(&buf[..n], mac) {
            answered = true;
            break;
        }
    }
    assert!(answered, "no ARP reply over the vfkit socket");
    std::fs::remove_file(&client_path).ok();
}

#[test]
fn pcap_capture_is_readable() {
    let ns = Netns::new();
    let pcap = tmp("capture.pcap");
    let ferry = FerryNet::start(
        &ns,
        &[
            "--configure",
            "--pcap",
            pcap.to_str().unwrap(),
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    let ping = ns.command(
        &["busybox", "ping", "-c", "2", "-W", "3", "10.0.2.1"],
        Duration::from_secs(10),
    );
    assert!(ping.status.success());
    drop(ferry);
    let data = std::fs::read(&pcap).unwrap();
    std::fs::remove_file(&pcap).ok();
    assert_eq!(&data[..4], &0xa1b2c3d4u32.to_le_bytes());
    assert_eq!(
        u32::from_le_bytes(data[20..24].try_into().unwrap()),
        1,
        "link type Ethernet"
    );
    // Walk the records: well-formed, with echo requests in and replies out.
    let (mut at, mut requests, mut replies) = (24, 0, 0);
    while at < data.len() {
        let len = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &data[at + 16..at + 16 + len];
        if frame.len() >= 35 && frame[12..14] == [8, 0] && frame[23] == 1 {
            match frame[34] {
                8 => requests += 1,
                0 => replies += 1,
                _ => {}
            }
        }
        at += 16 + len;
    }
    assert_eq!(at, data.len(), "truncated record");
    assert!(requests >= 2 && replies >= 2, "requests {requests}, replies {replies}");
}

/// One vhost-user control message: header (request, flags, size) + body.
fn vhost_msg(request: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// Whether ferry closed the connection (EOF) within a few seconds.
fn closed_by_peer(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn vhost_user_control_socket_survives_bad_input() {
    let ns = Netns::new();
    let sock = tmp("vhost-user-bad");
    let mut ferry = FerryNet::start(
        &ns,
        &[
            "--listen-vhost-user",
            sock.to_str().unwrap(),
            "--dns-upstream",
            "127.0.0.1:9",
        ],
    );
    // An oversized body, a ring that does not exist, a memory table whose
    // descriptors are missing, a ring started before any memory: each closes
    // that connection.
    let set_vring_num_7 = [7u32.to_le_bytes(), 256u32.to_le_bytes()].concat();
    let mem_table = [1u32.to_le_bytes().to_vec(), vec![0; 4], vec![0; 32]].concat();
    let bad: [Vec<u8>; 3] = [
        [
            &8u32.to_le_bytes()[..],
            &1u32.to_le_bytes(),
            &(1u32 << 30).to_le_bytes(),
        ]
        .concat(),
        vhost_msg(8, &set_vring_num_7),
        vhost_msg(5, &mem_table),
    ];
    for msg in bad {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(&msg).unwrap();
        assert!(closed_by_peer(&mut s), "ferry kept a connection after {msg:?}");
    }
    // A header cut short by a client that goes away.
    {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(&[1, 0, 0]).unwrap();
    }
    // Still serving: GET_FEATURES answers with VERSION_1, MRG_RXBUF and the
    // protocol-features bit.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&vhost_msg(1, &[])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_le_bytes(reply[..4].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(reply[4..8].try_into().unwrap()), 0x5, "reply flags");
    let features = u64::from_le_bytes(reply[12..].try_into().unwrap());
    for bit in [32, 30, 15] {
        assert!(
            features & (1 << bit) != 0,
            "feature bit {bit} missing from {features:#x}"
        );
    }
    assert!(ferry.alive());
}

/// Guests that come and go on the QEMU stream socket without ever being
/// sent a frame leave nothing behind: each kept its socket open in the
/// daemon before (a flush task waited for a frame forever; found by the api
/// fuzz target through gvproxy's /connect, which shares the code).
#[test]
fn stream_guests_that_leave_release_their_sockets() {
    let sock = tmp("visits.sock");
    let listen = format!("unix://{}", sock.display());
    let mut ferry = common::Ferry::new(["net", "--listen-qemu", &listen, "--dns-upstream", "127.0.0.1:9"]).spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(std::time::Instant::now() < deadline, "ferry net did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = ferry.child.id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    std::thread::sleep(Duration::from_millis(200));
    let before = fds();
    for _ in 0..50 {
        drop(UnixStream::connect(&sock).unwrap());
    }
    // Give the daemon time to accept them all (the count rises), then to
    // let them go (it falls back).
    std::thread::sleep(Duration::from_millis(500));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fds() > before + 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        fds() <= before + 2,
        "{} descriptors after 50 short visits, {before} before",
        fds()
    );
    drop(ferry.child.kill());
}
