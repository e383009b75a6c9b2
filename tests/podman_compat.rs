//! The real clients of the slirp4netns drop-in, unmodified: Debian's podman
//! (rootful and rootless, default network options, which include
//! `--enable-ipv6 --enable-sandbox --enable-seccomp`) with
//! `network_cmd_path` pointing at ferry, and rootlesskit with
//! `--slirp4netns-binary` and both port drivers. The image is made here from
//! busybox-static with `podman import`. Traffic goes to host services on
//! 127.0.0.1 / ::1 only.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::io::{Read, Write};

/// podman's storage is shared between the tests of one user: run them one
/// at a time.
static SERIAL: Mutex<()> = Mutex::new(());

use common::{test_user, TEST_USER as USER};

/// A directory every user can read, holding ferry linked as slirp4netns,
/// the busybox image tarball and a containers.conf.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        for (tool, pkg) in [("podman", "podman"), ("runc", "runc"), ("busybox", "busybox-static")] {
            common::require_tool(tool, pkg);
        }
        let dir = std::env::temp_dir().join(format!("ferry-podman-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_ferry"), dir.join("ferry")).unwrap();
        std::os::unix::fs::symlink(dir.join("ferry"), dir.join("slirp4netns")).unwrap();
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox")).unwrap();
        for applet in [
            "sh", "wget", "nslookup", "ip", "httpd", "echo", "cat", "sleep", "grep", "head",
        ] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(dir.join("rootfs"))
            .arg("-cf")
            .arg(dir.join("bb.tar"))
            .arg(".")
            .status()
            .unwrap();
        assert!(tar.success());
        // The machine's facts: crun fails on hybrid cgroups, the default
        // ulimits need CAP_SYS_RESOURCE, there is no systemd.
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\nnetwork_cmd_path = \"{}\"\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n",
                dir.join("slirp4netns").display()
            ),
        )
        .unwrap();
        Command::new("chmod").args(["-R", "a+rX"]).arg(&dir).status().unwrap();
        Command::new("chmod").arg("777").arg(&dir).status().unwrap();
        Fixture { dir }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("rm").arg("-rf").arg(&self.dir).status();
    }
}

/// Runs `args` (as `uid`, with its own runtime dir, when given) with a
/// deadline; returns (success, stdout + stderr).
fn run(uid: Option<u32>, env: &[(&str, String)], args: &[&str], timeout: Duration) -> (bool, String) {
    let mut cmd = Command::new("timeout");
    cmd.arg("-s").arg("KILL").arg(format!("{}", timeout.as_secs()));
    if let Some(uid) = uid {
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--init-groups",
        ]);
    }
    cmd.arg("env");
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.args(args).stdin(Stdio::null());
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A host HTTP-ish server on `addr` answering every connection with `body`.
fn serve(addr: &str, body: &'static str) -> u16 {
    let l = TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(20) {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    port
}

/// A free host port below 32768 (slirp4netns's add_hostfwd fails on a
/// port in TIME_WAIT; ephemeral ports are above).
fn free_port() -> u16 {
    for p in (20000 + (std::process::id() % 5000) as u16)..30000 {
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

/// Fetches http://127.0.0.1:PORT/PATH, retrying until `deadline`.
fn fetch(port: u16, path: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(c, "GET /{path} HTTP/1.0\r\n\r\n");
            let mut text = String::new();
            let _ = c.read_to_string(&mut text);
            if text.contains("200 OK") {
                return text;
            }
        }
        if Instant::now() > deadline {
            return String::new();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Podman {
    fx: Fixture,
    uid: Option<u32>,
    env: Vec<(&'static str, String)>,
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Some((_, dir)) = self.env.iter().find(|(k, _)| *k == "XDG_RUNTIME_DIR") {
            let _ = Command::new("rm").arg("-rf").arg(dir).status();
        }
    }
}

impl Podman {
    fn new(rootless: bool) -> Podman {
        let fx = Fixture::new(if rootless { "rootless" } else { "rootful" });
        let uid = rootless.then(test_user);
        let mut env = vec![("CONTAINERS_CONF", fx.dir.join("containers.conf").display().to_string())];
        if uid.is_some() {
            // Short: podman dials sockets under it, and a unix socket path
            // must fit in 108 bytes.
            let run_dir = PathBuf::from(format!("/tmp/fpr-{}", std::process::id()));
            std::fs::create_dir_all(&run_dir).unwrap();
            Command::new("chown").arg(USER).arg(&run_dir).status().unwrap();
            env.push(("XDG_RUNTIME_DIR", run_dir.display().to_string()));
            env.push(("HOME", format!("/home/{USER}")));
        }
        let p = Podman { fx, uid, env };
        let (ok, text) = p.podman(&["import", &p.path("bb.tar"), "localhost/bb:latest"], 120);
        assert!(ok, "podman import: {text}");
        p
    }

    fn path(&self, name: &str) -> String {
        self.fx.dir.join(name).display().to_string()
    }

    fn podman(&self, args: &[&str], secs: u64) -> (bool, String) {
        let root = self.path("storage");
        let runroot = self.path("runroot");
        let mut all = vec!["podman", "--root", &root, "--runroot", &runroot];
        all.extend_from_slice(args);
        run(self.uid, &self.env, &all, Duration::from_secs(secs))
    }

    /// Outbound to host services on 127.0.0.1 and ::1 through the host
    /// address (allow_host_loopback), DNS on 10.0.2.3, IPv6 by SLAAC.
    fn outbound_dns_and_ipv6(&self) {
        let v4 = serve("127.0.0.1:0", "host-v4");
        let v6 = serve("[::1]:0", "host-v6");
        let script = format!(
            "ip -6 addr show tap0; \
             for i in 1 2 3 4 5 6 7 8 9 10; do ip -6 addr show tap0 | grep -q 'inet6 fd00:' && break; sleep 0.3; done; \
             wget -q -O - http://10.0.2.2:{v4}/; echo; wget -q -O - 'http://[fd00::2]:{v6}/'; echo; \
             nslookup host.containers.internal 10.0.2.3"
        );
        let (ok, text) = self.podman(
            &[
                "run",
                "--rm",
                "--network",
                "slirp4netns:allow_host_loopback=true",
                "localhost/bb:latest",
                "sh",
                "-c",
                &script,
            ],
            120,
        );
        assert!(ok, "podman run: {text}");
        assert!(text.contains("inet6 fd00:"), "no IPv6 address from SLAAC: {text}");
        assert!(text.contains("host-v4"), "IPv4 to the host: {text}");
        assert!(text.contains("host-v6"), "IPv6 to the host's ::1 via fd00::2: {text}");
        assert!(text.contains("Address: 10.0.2.2"), "DNS: {text}");
    }

    /// `-p` with the given port handler reaches a server in the container.
    fn publish(&self, handler: &str) {
        let port = free_port();
        let name = format!("ferry-pub-{handler}");
        let _ = self.podman(&["rm", "-f", &name], 60);
        let network = format!("slirp4netns:port_handler={handler}");
        let publish = format!("127.0.0.1:{port}:8000");
        let (ok, text) = self.podman(
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &network,
                "-p",
                &publish,
                "localhost/bb:latest",
                "sh",
                "-c",
                "echo published-ok > /i; exec httpd -f -p 8000 -h /",
            ],
            120,
        );
        assert!(ok, "podman run -p ({handler}): {text}");
        let got = fetch(port, "i", Duration::from_secs(20));
        let _ = self.podman(&["rm", "-f", &name], 60);
        assert!(got.contains("published-ok"), "port_handler={handler}: {got:?}");
    }
}

#[test]
fn rootful_podman_with_default_options() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = Podman::new(false);
    p.outbound_dns_and_ipv6();
    p.publish("slirp4netns");
    p.publish("rootlesskit");
}

#[test]
fn rootless_podman_with_default_options() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = Podman::new(true);
    p.outbound_dns_and_ipv6();
    p.publish("slirp4netns");
    p.publish("rootlesskit");
}

#[test]
fn rootlesskit_with_both_port_drivers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::require_tool("rootlesskit", "rootlesskit");
    let fx = Fixture::new("rootlesskit");
    let uid = test_user();
    let v4 = serve("127.0.0.1:0", "host-for-rootlesskit");
    for driver in ["slirp4netns", "builtin"] {
        let port = free_port();
        let state = fx.dir.join(format!("state-{driver}"));
        let www = fx.dir.join(format!("www-{driver}"));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("i"), format!("through-{driver}")).unwrap();
        Command::new("chmod").args(["-R", "a+rwX"]).arg(&www).status().unwrap();
        // Inside: reach the host, publish a port through the driver, serve.
        let script = format!(
            "wget -q -O - http://10.0.2.2:{v4}/ && echo && \
             rootlessctl --socket {state}/api.sock add-ports 127.0.0.1:{port}:8000/tcp && \
             exec timeout 20 busybox httpd -f -p 8000 -h {www}",
            state = state.display(),
            www = www.display()
        );
        let slirp = fx.dir.join("slirp4netns").display().to_string();
        let args = [
            "rootlesskit".to_string(),
            format!("--state-dir={}", state.display()),
            "--net=slirp4netns".into(),
            format!("--slirp4netns-binary={slirp}"),
            format!("--port-driver={driver}"),
            "--disable-host-loopback=false".into(),
            "--mtu=65520".into(),
            "sh".into(),
            "-c".into(),
            script,
        ];
        let env = [("HOME", format!("/home/{USER}"))];
        let child = std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(Some(uid), &env, &args, Duration::from_secs(60))
        });
        let got = fetch(port, "i", Duration::from_secs(30));
        let (_, text) = child.join().unwrap();
        assert!(
            text.contains("host-for-rootlesskit"),
            "--port-driver={driver}: outbound: {text}"
        );
        assert!(
            got.contains(&format!("through-{driver}")),
            "--port-driver={driver}: {got:?}\n{text}"
        );
    }
}
