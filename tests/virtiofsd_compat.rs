//! ferry as virtiofsd under its real clients' command lines, each with a
//! real guest kernel under QEMU (TCG) reading and writing the share:
//! - libvirt 9: a domain whose `<filesystem>` names ferry as `<binary>`
//!   (libvirt reads `--print-capabilities`, then runs it with `--fd=N -o
//!   source=DIR ...`); libvirtd and virtlogd are started by the test (no
//!   systemd here), with qemu.conf set for root-run test domains;
//! - Kata's command line (`--syslog --fd=3 -o announce_submounts ...`);
//! - podman machine's (`--sandbox none --socket-path ... --shared-dir .
//!   --seccomp=none`, run from the shared directory).

#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::require_tool;

const SOCK: &str = "/run/libvirt/libvirt-sock";

fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// qemu.conf for test domains: run QEMU as root, no security driver (no
/// AppArmor/SELinux labelling of our temp files). Then the daemons.
fn libvirtd() {
    let conf = Path::new("/etc/libvirt/qemu.conf");
    let text = std::fs::read_to_string(conf).unwrap_or_default();
    let mut add = String::new();
    for line in [
        "user = \"root\"",
        "group = \"root\"",
        "security_driver = \"none\"",
        "swtpm_user = \"root\"",
        "swtpm_group = \"root\"",
    ] {
        if !text.lines().any(|l| l.trim() == line) {
            add.push_str(line);
            add.push('\n');
        }
    }
    if !add.is_empty() {
        std::fs::write(conf, format!("{text}\n# ferry tests\n{add}")).unwrap();
        // A running daemon would not see the change.
        let _ = Command::new("pkill").args(["-x", "libvirtd"]).status();
        std::thread::sleep(Duration::from_millis(500));
    }
    // libvirtd resolves its compiled-in QEMU user before reading qemu.conf;
    // Debian's libvirt-daemon-system package would have created it.
    if !sh("id", &["libvirt-qemu"]).0 {
        let _ = sh("groupadd", &["-f", "-r", "libvirt-qemu"]);
        let _ = sh(
            "useradd",
            &[
                "-r",
                "-g",
                "libvirt-qemu",
                "-d",
                "/var/lib/libvirt",
                "-s",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ],
        );
    }
    // Without the Debian service units nothing has made their directories.
    for d in ["/var/log/libvirt/qemu", "/run/libvirt", "/var/lib/libvirt/qemu"] {
        std::fs::create_dir_all(d).unwrap();
    }
    if !sh("pgrep", &["-x", "virtlogd"]).0 {
        assert!(sh("virtlogd", &["-d"]).0, "starting virtlogd");
    }
    if !sh("pgrep", &["-x", "libvirtd"]).0 {
        let _ = std::fs::remove_file(SOCK);
        assert!(sh("libvirtd", &["-d"]).0, "starting libvirtd");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sh("virsh", &["-c", "qemu:///system", "version"]).0 {
        assert!(Instant::now() < deadline, "libvirtd did not answer within 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'=' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn libvirt_runs_ferry_as_virtiofsd_for_a_domain() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    require_tool("virsh", "libvirt-clients");
    require_tool("libvirtd", "libvirt-daemon");
    libvirtd();
    let dir = std::env::temp_dir().join(format!("ferry-libvirt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("from-host.txt"), "hello from the host\n").unwrap();
    // libvirt runs the binary it is given; ferry answers to argv[0] virtiofsd.
    let virtiofsd = dir.join("virtiofsd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), &virtiofsd).unwrap();
    let (ok, caps) = sh(virtiofsd.to_str().unwrap(), &["--print-capabilities"]);
    assert!(ok && caps.contains("\"fs\""), "{caps}");

    let script = "cat /mnt/from-host.txt > /mnt/seen-by-guest.txt && echo written-by-the-guest > /mnt/from-guest.txt";
    let (initrd, kernel, cmdline) = guest(script);
    let name = format!("ferry-test-{}", std::process::id());
    let console = dir.join("console.log");
    // QEMU 7.2 under TCG cannot wire MSI-X vectors to a vhost-user device:
    // vectors=0 through libvirt's QEMU override (ferry run does the same).
    let xml = format!(
        r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <binary path='{virtiofsd}'/>
      <source dir='{share}'/>
      <target dir='share0'/>
      <alias name='ua-fs0'/>
    </filesystem>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
    <qemu:device alias='ua-fs0'>
      <qemu:frontend><qemu:property name='vectors' type='unsigned' value='0'/></qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"#,
        initrd = initrd.display(),
        virtiofsd = virtiofsd.display(),
        share = share.display(),
        console = console.display(),
    );
    let xml_path = dir.join("domain.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let (ok, text) = sh("virsh", &["-c", "qemu:///system", "create", xml_path.to_str().unwrap()]);
    assert!(ok, "virsh create: {text}");
    // The guest writes, then powers off; the domain is destroyed with it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, state) = sh("virsh", &["-c", "qemu:///system", "domstate", &name]);
        if !state.contains("running") {
            break;
        }
        if Instant::now() > deadline {
            let _ = sh("virsh", &["-c", "qemu:///system", "destroy", &name]);
            panic!(
                "the domain still runs after 120 s; console:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(format!("/var/log/libvirt/qemu/{name}.log")).unwrap_or_default();
    let seen = std::fs::read_to_string(share.join("seen-by-guest.txt")).unwrap_or_default();
    assert_eq!(
        seen,
        "hello from the host\n",
        "the guest did not read the host file; console:\n{}\nlibvirt log:\n{log}",
        std::fs::read_to_string(&console).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap_or_default(),
        "written-by-the-guest\n"
    );
    // It was ferry that libvirt ran as the domain's virtiofsd.
    let fs_log =
        std::fs::read_to_string(format!("/var/log/libvirt/qemu/{name}-ua-fs0-virtiofsd.log")).unwrap_or_default();
    assert!(
        fs_log.contains("ferry") && fs_log.contains("front end connected"),
        "{fs_log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest image and kernel, and a kernel command line that mounts tag
/// `share0` at /mnt and runs `script`.
fn guest(script: &str) -> (PathBuf, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["guest", "build"])
        .env("FERRY_GUEST_INIT", common::guest_init())
        .output()
        .unwrap();
    let built = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry guest build: {built}");
    let initrd = PathBuf::from(built.lines().find(|l| l.trim().ends_with(".cpio.gz")).unwrap().trim());
    let (ok, kernel) = sh(env!("CARGO_BIN_EXE_ferry"), &["guest", "kernel"]);
    assert!(ok, "{kernel}");
    let kernel = kernel.split_whitespace().next().unwrap().to_string();
    let cmd: Vec<String> = ["sh", "-c", script].iter().map(|w| percent(w)).collect();
    let cmdline = format!(
        "console=ttyS0 quiet loglevel=3 panic=-1 reboot=t ferry.mount=share0:/mnt ferry.cmd={}",
        cmd.join(",")
    );
    (initrd, kernel, cmdline)
}

/// Boots QEMU with a vhost-user-fs device on `socket`; returns the console.
fn boot_qemu(socket: &Path, script: &str) -> String {
    let (initrd, kernel, cmdline) = guest(script);
    let out = Command::new("timeout")
        .args([
            "120",
            "qemu-system-x86_64",
            "-machine",
            "pc,accel=tcg",
            "-m",
            "512",
            "-nodefaults",
            "-no-reboot",
        ])
        .args([
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-numa",
            "node,memdev=mem",
        ])
        .args([
            "-kernel",
            &kernel,
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            &cmdline,
        ])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-chardev")
        .arg(format!("socket,id=fs0,path={}", socket.display()))
        // QEMU 7.2 under TCG cannot wire MSI-X vectors to a vhost back end.
        .args(["-device", "vhost-user-fs-pci,chardev=fs0,tag=share0,vectors=0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

const GUEST_SCRIPT: &str =
    "cat /mnt/from-host.txt > /mnt/seen-by-guest.txt && echo written-by-the-guest > /mnt/from-guest.txt";

fn share_with_a_host_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-vfsd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::write(dir.join("share/from-host.txt"), "hello from the host\n").unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), dir.join("virtiofsd")).unwrap();
    dir
}

fn guest_did_its_part(share: &Path, console: &str) {
    assert_eq!(
        std::fs::read_to_string(share.join("seen-by-guest.txt")).unwrap_or_default(),
        "hello from the host\n",
        "console:\n{console}"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap_or_default(),
        "written-by-the-guest\n",
        "console:\n{console}"
    );
}

/// Kata's virtiofsd command line: a listening socket inherited as fd 3.
#[test]
fn kata_command_line_serves_a_guest() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = share_with_a_host_file("kata");
    let share = dir.join("share");
    // A mount point inside the share: Kata asks for it to be announced.
    let sub = share.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap()
        .success());
    std::fs::write(sub.join("inside.txt"), "on the submount\n").unwrap();
    let socket = dir.join("vhost-fs.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut cmd = Command::new(dir.join("virtiofsd"));
    cmd.args(["--syslog", "--cache=auto"])
        .arg(format!("--shared-dir={}", share.display()))
        .args([
            "--fd=3",
            "--thread-pool-size=1",
            "-o",
            "announce_submounts",
            "--inode-file-handles=prefer",
        ])
        .stderr(std::process::Stdio::piped());
    // SAFETY: dup2(2) between fork and exec, async-signal-safe: the
    // listening socket becomes the child's fd 3, as Kata hands it over.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // dup2 onto itself would keep close-on-exec: clear it then.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = cmd.spawn().unwrap();
    drop(listener);
    let script = format!(
        // Reading through the submount mounts it (stat alone does not
        // trigger an automount).
        "{GUEST_SCRIPT} && cat /mnt/sub/inside.txt > /tmp/inside && stat -c %d /mnt /mnt/sub/ > /mnt/devs.txt && grep -c ' /mnt/sub ' /proc/mounts >> /mnt/devs.txt; cat /tmp/inside >> /mnt/devs.txt"
    );
    let console = boot_qemu(&socket, &script);
    let _ = server.kill();
    let _ = server.wait();
    let devs = std::fs::read_to_string(sub.join("../devs.txt")).unwrap_or_default();
    let _ = Command::new("umount").arg(&sub).status();
    guest_did_its_part(&share, &console);
    let lines: Vec<&str> = devs.lines().collect();
    assert_eq!(lines.len(), 4, "devs.txt: {devs}\nconsole:\n{console}");
    assert_ne!(
        lines[0], lines[1],
        "the submount has its own device in the guest: {devs}"
    );
    assert_eq!(lines[2], "1", "the guest mounted /mnt/sub: {devs}");
    assert_eq!(lines[3], "on the submount");
    let _ = std::fs::remove_dir_all(&dir);
}

/// podman machine's (QEMU) virtiofsd command line, run from the shared
/// directory (`--shared-dir .`).
#[test]
fn podman_machine_command_line_serves_a_guest() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = share_with_a_host_file("podman");
    let share = dir.join("share");
    let socket = dir.join("podman-machine-vfs.sock");
    let mut server = Command::new(dir.join("virtiofsd"))
        .current_dir(&share)
        .args(["--sandbox", "none", "--socket-path"])
        .arg(&socket)
        .args(["--shared-dir", ".", "--seccomp=none"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket at {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let console = boot_qemu(&socket, GUEST_SCRIPT);
    let _ = server.kill();
    let _ = server.wait();
    guest_did_its_part(&share, &console);
    let _ = std::fs::remove_dir_all(&dir);
}
