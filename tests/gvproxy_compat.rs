//! ferry as gvproxy: Go-style flags, gvproxy's address plan and static
//! lease, the ssh-port forward, pid and log files, the forwarder API.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{api_curl, Ferry};

const GVPROXY_MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];

/// A DHCPDISCOVER from `mac`, as an Ethernet frame.
fn dhcp_discover(mac: [u8; 6]) -> Vec<u8> {
    common::dhcp_frame(mac, 1, None)
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
    // ferry confines the gvproxy mode as it does `ferry net`: a seccomp
    // filter (mode 2) once the network is up (gvproxy itself has none; the
    // ferry flag -seccomp none keeps that).
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.child.id())).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");

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

    // gvproxy's /connect: the API connection becomes a VM link with the
    // main transport's framing (QEMU's here); a frame sent in the same
    // write as the request is not lost.
    let mut c = UnixStream::connect(&api).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let other = [0x02, 0, 0, 0, 0, 0x07];
    let discover = dhcp_discover(other);
    let request = [
        &b"POST /connect HTTP/1.1\r\nHost: gvproxy\r\n\r\n"[..],
        &(discover.len() as u32).to_be_bytes(),
        &discover,
    ]
    .concat();
    c.write_all(&request).unwrap();
    let ip = offered_address(|| read_frame(&mut c));
    assert_eq!(ip[..3], [192, 168, 127], "a lease over /connect");

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

/// `ferry gvproxy ARGS` exits 1 with `expect` in its error.
fn gvproxy_refuses(args: &[&str], expect: &str) {
    let out = Ferry::new(std::iter::once("gvproxy").chain(args.iter().copied())).output();
    assert_eq!(out.code, Some(1), "{args:?}");
    assert!(out.stderr.contains(expect), "{args:?}: {}", out.stderr);
}

#[test]
fn unsupported_gvproxy_options_say_so() {
    // gvproxy's own check and message for the four forward flags.
    let forward = [
        "-listen-qemu",
        "unix:///tmp/x.sock",
        "-forward-sock",
        "/a",
        "-forward-dest",
        "/b",
    ];
    gvproxy_refuses(&forward, "must all be specified together, the same number of times");
    let identity = [
        &forward[..],
        &["-forward-user", "core", "-forward-identity", "/nonexistent/id_ed25519"],
    ]
    .concat();
    gvproxy_refuses(
        &identity,
        "-forward-identity /nonexistent/id_ed25519: cannot load the SSH private key",
    );
    gvproxy_refuses(&["-mtu", "1500"], "-listen-qemu or -listen-vfkit");
}

/// A background command inside `ns`, killed with its process group on drop.
fn spawn_in(ns: &common::netns::Netns, args: &[&str]) -> common::Running {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display())).arg("--").args(args);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    common::Running {
        child: cmd.spawn().unwrap_or_else(|e| panic!("{args:?}: {e}")),
    }
}

fn run_ok(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// podman machine's `-forward-sock`: the "guest" is a network namespace on
/// ferry's vfkit socket (socat carries its tap's frames, one datagram each),
/// with the guest address gvproxy leases and a real OpenSSH sshd started
/// only after ferry, so the forward has to wait for it. Behind the forwards:
/// a real `podman system service` (the podman client talks to it through
/// ferry, as podman machine's host client does) and an echo server (2 MiB
/// checked byte for byte, with half-close).
#[test]
fn forward_sock_carries_podman_over_ssh() {
    common::require_tool("socat", "socat");
    common::require_tool("podman", "podman");
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "sshd is not installed; run `apt-get install openssh-server`"
    );
    let dir = std::env::temp_dir().join(format!("ferry-gvproxy-ssh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).display().to_string();
    run_ok(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &p("id"),
        "-C",
        "ferry-test",
    ]);
    run_ok(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", &p("hostkey")]);
    std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();

    // Guest-side sockets: podman's API and an echo server.
    let _podman = {
        let mut cmd = std::process::Command::new("podman");
        cmd.args([
            "--root",
            &p("storage"),
            "--runroot",
            &p("runroot"),
            "system",
            "service",
            "--time=0",
            &format!("unix://{}", p("podman.sock")),
        ]);
        use std::os::unix::process::CommandExt;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        common::Running {
            child: cmd.spawn().unwrap(),
        }
    };
    let echo = std::os::unix::net::UnixListener::bind(dir.join("echo.sock")).unwrap();
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut back = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut back);
                let _ = back.shutdown(std::net::Shutdown::Write);
            });
        }
    });

    let link = dir.join("gvproxy");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), &link).unwrap();
    let vfkit = dir.join("vfkit.sock");
    let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = [
        "-mtu".to_string(),
        "1500".into(),
        "-ssh-port".into(),
        ssh_port.to_string(),
        "-listen-vfkit".into(),
        format!("unixgram://{}", vfkit.display()),
        "-forward-sock".into(),
        p("podman-host.sock"),
        "-forward-dest".into(),
        p("podman.sock"),
        "-forward-user".into(),
        "root".into(),
        "-forward-identity".into(),
        p("id"),
        "-forward-sock".into(),
        format!("unix://{}", p("echo-host.sock")),
        "-forward-dest".into(),
        p("echo.sock"),
        "-forward-user".into(),
        "root".into(),
        "-forward-identity".into(),
        p("id"),
        "-debug".into(),
        "-log-file".into(),
        p("gvproxy.log"),
        "-listen".into(),
        format!("unix://{}", p("api.sock")),
    ];
    let mut gvproxy = Ferry::with_binary(&link, &args).spawn();
    let host_echo = dir.join("echo-host.sock");
    wait_for(&host_echo);
    wait_for(&vfkit);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&host_echo).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the forward socket is the owner's only, as gvproxy's");

    // A client that connects before the guest is even up is served once
    // sshd answers (it waits in the listen backlog).
    let early = std::thread::spawn({
        let host_echo = host_echo.clone();
        move || {
            let mut s = UnixStream::connect(&host_echo).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
            s.write_all(b"early bird").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = String::new();
            s.read_to_string(&mut back).unwrap();
            back
        }
    });

    let guest = common::netns::Netns::new();
    let tap = "TUN,tun-type=tap,tun-name=eth0,iff-no-pi,iff-up";
    let sendto = format!("UNIX-SENDTO:{},bind={}", vfkit.display(), p("guest.sock"));
    let _bridge = spawn_in(&guest, &["socat", "-b", "65536", tap, &sendto]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !guest
        .command(&["ip", "link", "show", "eth0"], Duration::from_secs(5))
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "socat never created eth0");
        std::thread::sleep(Duration::from_millis(50));
    }
    for cmd in [
        &["ip", "link", "set", "lo", "up"][..],
        &["ip", "link", "set", "eth0", "address", "5a:94:ef:e4:0c:ee", "up"],
        &["ip", "addr", "add", "192.168.127.2/24", "dev", "eth0"],
        &["ip", "route", "add", "default", "via", "192.168.127.1"],
    ] {
        let out = guest.command(cmd, Duration::from_secs(5));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // sshd comes up a while after ferry, as in a booting guest.
    std::thread::sleep(Duration::from_secs(2));
    let sshd = || {
        spawn_in(
            &guest,
            &[
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
                "/dev/null",
                "-o",
                &format!("HostKey={}", p("hostkey")),
                "-o",
                &format!("AuthorizedKeysFile={}", p("authorized_keys")),
                "-o",
                "StrictModes=no",
                "-o",
                "UsePAM=no",
                "-o",
                "PidFile=none",
                "-o",
                "PermitRootLogin=prohibit-password",
            ],
        )
    };
    let sshd_1 = sshd();

    assert_eq!(early.join().unwrap(), "early bird");

    // OpenSSH's own client through -ssh-port (127.0.0.1:PORT -> guest:22):
    // 2 MiB out and back through `cat`. The vfkit port's burst handling is
    // what keeps this fast (it used to take minutes).
    {
        let mut c = std::process::Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-p",
                &ssh_port.to_string(),
                "-i",
                &p("id"),
                "root@127.0.0.1",
                "cat",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut input = c.stdin.take().unwrap();
        let sent = std::thread::spawn(move || input.write_all(&[7u8; 2 << 20]).is_ok());
        let out = c.wait_with_output().unwrap();
        assert!(sent.join().unwrap(), "ssh did not take its input");
        assert!(
            out.stdout.len() == 2 << 20 && out.stdout.iter().all(|&b| b == 7),
            "ssh -p {ssh_port} cat: {} bytes back",
            out.stdout.len()
        );
    }
    // 2 MiB through the echo forward, checked byte for byte.
    let data: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut s = UnixStream::connect(&host_echo).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(
        back == data,
        "echo through the SSH forward differs ({} of {} bytes back)",
        back.len(),
        data.len()
    );

    // podman's own client, remote, through the forward (podman machine's path).
    let out = std::process::Command::new("podman")
        .args(["--url", &format!("unix://{}", p("podman-host.sock")), "version"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Server:") && text.contains("API Version"),
        "podman --url through -forward-sock: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // gvproxy's /tunnel: "OK", then a TCP stream to the guest (sshd's banner).
    let mut t = UnixStream::connect(dir.join("api.sock")).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.write_all(b"GET /tunnel?ip=192.168.127.2&port=22 HTTP/1.1\r\nHost: gvproxy\r\n\r\n")
        .unwrap();
    let mut ok_banner = [0u8; 9];
    t.read_exact(&mut ok_banner).unwrap();
    assert_eq!(&ok_banner, b"OKSSH-2.0", "/tunnel to the guest's sshd");
    let (code, v) = api_curl(&dir.join("api.sock"), &["-X", "POST", "http://gvproxy/connect"]);
    assert_eq!(code, 404, "/connect has no framing on a vfkit-only gvproxy: {v}");

    // The guest's sshd restarts (a reboot): the next connection brings up
    // a new session.
    drop(sshd_1);
    let _sshd_2 = sshd();
    std::thread::sleep(Duration::from_millis(500));
    let mut s = UnixStream::connect(&host_echo).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"after restart").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    assert_eq!(back, "after restart", "no new SSH session after sshd restarted");

    // SIGTERM: the forward sockets are removed, as gvproxy removes them.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(gvproxy.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while gvproxy.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!host_echo.exists(), "forward socket left behind");
    drop(_bridge);
    std::fs::remove_dir_all(&dir).ok();
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

/// Reads frames from `next` until a DHCP offer; returns its yiaddr.
fn offered_address(mut next: impl FnMut() -> Vec<u8>) -> [u8; 4] {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no DHCP offer");
        let f = next();
        if f.len() > 42 + 240 && f[12..14] == [8, 0] && f[23] == 17 && f[34..36] == [0, 67] {
            return f[42 + 16..42 + 20].try_into().unwrap();
        }
    }
}

fn read_hyperkit_frame(r: &mut impl Read) -> Vec<u8> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).expect("no frame");
    let mut f = vec![0u8; u16::from_le_bytes(len) as usize];
    r.read_exact(&mut f).unwrap();
    f
}

fn hyperkit_frame(f: &[u8]) -> Vec<u8> {
    [&(f.len() as u16).to_le_bytes()[..], f].concat()
}

/// gvproxy's other transports, driven as their clients drive them (no
/// hyperkit or BESS program runs on Linux here, so the test speaks their
/// protocols): `-listen-vpnkit` (hyperkit's handshake, then 2-byte
/// little-endian lengths; gvproxy's UUID gets gvproxy's guest MAC and so
/// the guest's static lease), `-listen-bess` (SOCK_SEQPACKET, a frame per
/// packet) and `-listen-stdio` (2-byte lengths on standard input/output).
#[test]
fn vpnkit_bess_and_stdio_transports() {
    let dir = std::env::temp_dir().join(format!("ferry-gvproxy-tr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (vpnkit, bess) = (dir.join("vpnkit.sock"), dir.join("bess.sock"));
    // One transport per instance: gvproxy refuses vpnkit with bess.
    let gvproxy = |flag: &str, url: String| {
        Ferry::new(["gvproxy".to_string(), "-ssh-port".into(), "-1".into(), flag.into(), url]).spawn()
    };
    let mut running = gvproxy("-listen-vpnkit", format!("unix://{}", vpnkit.display()));
    wait_for(&vpnkit);

    // vpnkit: init echoed, the command answered with MTU, max frame, MAC.
    let mut v = UnixStream::connect(&vpnkit).unwrap();
    v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let init: Vec<u8> = (0..49u8).collect();
    v.write_all(&init).unwrap();
    let mut echo = [0u8; 49];
    v.read_exact(&mut echo).unwrap();
    assert_eq!(&echo[..], &init[..], "init message echoed");
    let mut command = [0u8; 41];
    command[0] = 1;
    command[1..37].copy_from_slice(b"c3d68012-0208-11ea-9fd7-f2189899ab08");
    v.write_all(&command).unwrap();
    let mut reply = [0u8; 258];
    v.read_exact(&mut reply).unwrap();
    assert_eq!(reply[0], 1);
    assert_eq!(u16::from_le_bytes([reply[1], reply[2]]), 1500, "MTU");
    assert_eq!(u16::from_le_bytes([reply[3], reply[4]]), 1514, "largest frame");
    assert_eq!(&reply[5..11], &GVPROXY_MAC, "gvproxy's MAC for its UUID");
    v.write_all(&hyperkit_frame(&dhcp_discover(GVPROXY_MAC))).unwrap();
    assert_eq!(offered_address(|| read_hyperkit_frame(&mut v)), [192, 168, 127, 2]);

    drop(running.child.kill());

    // bess: one frame per packet.
    let mut running = gvproxy("-listen-bess", format!("unixpacket://{}", bess.display()));
    wait_for(&bess);
    let b = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
    b.connect(&socket2::SockAddr::unix(&bess).unwrap()).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let other = [0x02, 0, 0, 0, 0, 0x42];
    let discover = dhcp_discover(other);
    assert_eq!(b.send(&discover).unwrap(), discover.len());
    let ip = offered_address(|| {
        let mut buf = vec![0u8; 65536];
        let n = (&b).read(&mut buf).unwrap();
        buf.truncate(n);
        buf
    });
    assert_eq!(ip[..3], [192, 168, 127], "a pool address for another MAC");
    assert_ne!(ip, [192, 168, 127, 2], "the static lease is gvproxy's MAC's only");
    drop(running.child.kill());

    // stdio: the same exchange over pipes.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["gvproxy", "-ssh-port", "-1", "-listen-stdio", "accept"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    input.write_all(&hyperkit_frame(&dhcp_discover(GVPROXY_MAC))).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ip = offered_address(|| read_hyperkit_frame(&mut output));
        let _ = tx.send(ip);
    });
    let ip = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no DHCP offer on standard output");
    assert_eq!(ip, [192, 168, 127, 2]);
    let _ = child.kill();
    let _ = child.wait();

    // gvproxy's rules on combining transports.
    let (v, q) = (
        format!("unix://{}", vpnkit.display()),
        format!("unix://{}", dir.join("q.sock").display()),
    );
    gvproxy_refuses(
        &["-listen-vpnkit", &v, "-listen-qemu", &q],
        "cannot use qemu and vpnkit protocol at the same time",
    );
    gvproxy_refuses(
        &["-listen-bess", "unix:///tmp/x.sock"],
        "bess listen address must be unixpacket:// address",
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `-config FILE`: gvproxy's YAML drives the address plan, static leases,
/// gateway MAC, forwards, DNS zones and the endpoints; keys gvproxy does
/// not know and settings ferry cannot honour are refused by name.
#[test]
fn config_file_as_gvproxy_reads_it() {
    let dir = std::env::temp_dir().join(format!("ferry-gvproxy-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (api, qemu, pid, cfg) = (
        dir.join("api.sock"),
        dir.join("qemu.sock"),
        dir.join("gv.pid"),
        dir.join("gvproxy.yaml"),
    );
    let fwd = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let guest_mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        r#"listen:
  - unix://{api}
  - tcp://127.0.0.1:{api_port}
log-level: debug
interfaces:
  qemu: unix://{qemu}
pid-file: {pid}
stack:
  mtu: 1400
  subnet: 10.99.0.0/24
  gatewayIP: 10.99.0.1
  deviceIP: 10.99.0.5
  hostIP: 10.99.0.254
  gatewayMacAddress: 5a:94:ef:e4:00:01
  dns:
    - name: example.internal.
      records:
        - name: db
          ip: 10.99.0.77
  forwards:
    127.0.0.1:{fwd}: 10.99.0.5:8080
  nat:
    10.99.0.254: 127.0.0.1
  dhcpStaticLeases:
    10.99.0.5: 02:11:22:33:44:55
"#,
        api = api.display(),
        qemu = qemu.display(),
        pid = pid.display()
    );
    std::fs::write(&cfg, yaml).unwrap();
    let mut running = Ferry::new(["gvproxy".to_string(), "-config".into(), cfg.display().to_string()]).spawn();
    wait_for(&api);
    wait_for(&qemu);
    assert!(pid.exists(), "pid-file from the config");

    let (_, all) = api_curl(&api, &["http://gvproxy/services/forwarder/all"]);
    let all = all.as_array().unwrap().clone();
    assert_eq!(
        all.len(),
        1,
        "only the file's forward, no default ssh-port one: {all:?}"
    );
    assert_eq!(all[0]["local"], format!("127.0.0.1:{fwd}"));
    assert_eq!(all[0]["remote"], "10.99.0.5:8080");
    // The same API over TCP (gvproxy's -listen tcp://).
    let mut t = std::net::TcpStream::connect(("127.0.0.1", api_port)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(b"GET /services/forwarder/all HTTP/1.1\r\nHost: gvproxy\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    t.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("10.99.0.5:8080"),
        "{reply}"
    );

    let (_, zones) = api_curl(&api, &["http://gvproxy/services/dns/all"]);
    let zone = zones
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["Name"] == "example.internal.")
        .unwrap_or_else(|| panic!("the file's zone: {zones}"))
        .clone();
    assert_eq!(zone["Records"][0]["Name"], "db");
    assert_eq!(zone["Records"][0]["IP"], "10.99.0.77");

    // The static lease and the gateway's MAC and address from the file.
    let mut s = UnixStream::connect(&qemu).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    send_frame(&mut s, &dhcp_discover(guest_mac));
    let deadline = Instant::now() + Duration::from_secs(10);
    let offer = loop {
        assert!(Instant::now() < deadline, "no DHCP offer");
        let f = read_frame(&mut s);
        if f.len() > 42 + 240 && f[12..14] == [8, 0] && f[23] == 17 && f[34..36] == [0, 67] {
            break f;
        }
    };
    assert_eq!(
        &offer[6..12],
        &[0x5a, 0x94, 0xef, 0xe4, 0x00, 0x01],
        "gatewayMacAddress"
    );
    assert_eq!(&offer[42 + 16..42 + 20], &[10, 99, 0, 5], "dhcpStaticLeases");
    assert_eq!(&offer[42 + 20..42 + 24], &[10, 99, 0, 1], "gatewayIP");
    drop(running.child.kill());

    // Refusals name what they refuse.
    let refused = |yaml: &str, expect: &str| {
        std::fs::write(&cfg, yaml).unwrap();
        gvproxy_refuses(&["-config", &cfg.display().to_string()], expect);
    };
    let q = format!("interfaces:\n  qemu: unix://{}\n", qemu.display());
    refused(&format!("{q}stack:\n  mtuu: 1500\n"), "unknown field `mtuu`");
    refused(
        &format!("{q}stack:\n  nat:\n    192.168.127.254: 10.0.0.5\n"),
        "stack.nat 192.168.127.254: 10.0.0.5",
    );
    refused(
        &format!("{q}stack:\n  dns:\n    - name: x.\n      records:\n        - regexp: '.*'\n"),
        "regexp records are not supported",
    );
    refused("stack: [", "failed to parse configuration");
    std::fs::remove_dir_all(&dir).ok();
}
