//! Boot-time setup steps: API filesystems, busybox applets, network, shares.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::{Mount, NetMode};
use crate::sys;

const MS_NOSUID: libc::c_ulong = libc::MS_NOSUID;
const MS_NODEV: libc::c_ulong = libc::MS_NODEV;
const MS_NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and /tmp. A failure is
/// reported but not fatal: the workload may not need the mount.
pub fn mount_api_filesystems() {
    let table: [(&str, &str, &str, libc::c_ulong, Option<&str>); 7] = [
        ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
        ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
        ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MS_NOSUID | MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        ("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, Some("mode=1777")),
    ];
    for (source, target, fstype, flags, data) in table {
        let result = fs::create_dir_all(target).and_then(|()| sys::mount(source, target, fstype, flags, data));
        match result {
            Ok(()) => {}
            // devtmpfs may already be mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => eprintln!("ferry-init: mounting {fstype} on {target}: {e}"),
        }
    }
}

/// Creates the busybox applet links (/bin/sh, /bin/ip, ...) if the image
/// ships busybox without them.
pub fn install_busybox() {
    if Path::new("/bin/sh").exists() || !Path::new("/bin/busybox").exists() {
        return;
    }
    for dir in ["/usr/bin", "/usr/sbin", "/sbin"] {
        let _ = fs::create_dir_all(dir);
    }
    match Command::new("/bin/busybox").args(["--install", "-s"]).status() {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("ferry-init: busybox --install exited with {s}"),
        Err(e) => eprintln!("ferry-init: running busybox --install: {e}"),
    }
}

/// PATH for the tools init runs and for the workload.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs a busybox tool by name (busybox installs applets across the sbin and
/// bin directories).
fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let status = Command::new(program)
        .args(args)
        .env("PATH", PATH)
        .status()
        .map_err(|e| io::Error::other(format!("running {program}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{program} {}` failed with {status}",
            args.join(" ")
        )))
    }
}

/// The first non-loopback network interface, waiting briefly for the driver
/// to register it after its module was loaded.
fn first_ethernet() -> io::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut names: Vec<String> = fs::read_dir("/sys/class/net")?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        if let Some(name) = names.into_iter().next() {
            return Ok(name);
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(
                "no network interface appeared (is virtio_net in the image and a NIC attached?)",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Written at boot: busybox udhcpc calls it with the lease in the environment.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
  ip -4 addr flush dev "$interface"
  ip addr add "$ip/${mask:-24}" dev "$interface"
  [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
  [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
  : > /etc/resolv.conf
  [ -n "$search" ] && echo "search $search" >> /etc/resolv.conf
  [ -n "$domain" ] && [ -z "$search" ] && echo "search $domain" >> /etc/resolv.conf
  for s in $dns; do echo "nameserver $s" >> /etc/resolv.conf; done
  ;;
esac
exit 0
"#;

/// IPv6 comes from the kernel's own SLAAC on ferry's router advertisement.
/// ferry is the only router on the link and guests' MACs are unique, so
/// the solicitation goes out at once and the address is usable at once
/// (no duplicate-address wait). Errors are ignored: a kernel may have
/// IPv6 disabled.
fn ipv6_quick_start(dev: &str) {
    for (key, value) in [("router_solicitation_delay", "0"), ("accept_dad", "0")] {
        let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/{key}"), value);
    }
}

/// Waits (briefly: DHCPv4 has usually taken longer than the RA) until
/// `dev` has a global IPv6 address, so the workload starts dual-stack.
/// A network without IPv6 (`ferry net --no-ipv6`) costs at most `limit`.
fn wait_for_ipv6(dev: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        // /proc/net/if_inet6: address, ifindex, prefix length, scope, flags, device.
        let table = fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        let global = table.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 6 && f[5] == dev && f[3] == "00"
        });
        if global || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn network(mode: &NetMode) -> io::Result<()> {
    run("ip", &["link", "set", "lo", "up"])?;
    match mode {
        NetMode::None => Ok(()),
        NetMode::Dhcp => {
            let dev = first_ethernet()?;
            fs::create_dir_all("/run/ferry")?;
            fs::write("/run/ferry/udhcpc.script", UDHCPC_SCRIPT)?;
            fs::set_permissions(
                "/run/ferry/udhcpc.script",
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
            let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let host_opt = format!("hostname:{}", host.trim());
            ipv6_quick_start(&dev);
            run("ip", &["link", "set", &dev, "up"])?;
            run(
                "udhcpc",
                &[
                    "-i",
                    &dev,
                    "-f",
                    "-q",
                    "-n",
                    "-t",
                    "10",
                    "-T",
                    "1",
                    "-x",
                    &host_opt,
                    "-s",
                    "/run/ferry/udhcpc.script",
                ],
            )
            .map_err(|e| io::Error::other(format!("DHCP on {dev} got no lease: {e}")))?;
            wait_for_ipv6(&dev, Duration::from_secs(2));
            Ok(())
        }
        NetMode::Static { addr, gateway, dns } => {
            let dev = first_ethernet()?;
            run("ip", &["addr", "add", addr, "dev", &dev])?;
            run("ip", &["link", "set", &dev, "up"])?;
            run("ip", &["route", "add", "default", "via", gateway])?;
            let ns = dns.as_deref().unwrap_or(gateway);
            fs::write("/etc/resolv.conf", format!("nameserver {ns}\n"))
        }
    }
}

/// Mounts each virtio-fs share; the first failure is fatal because the
/// workload would otherwise run against an empty directory.
pub fn mounts(shares: &[Mount]) -> io::Result<()> {
    for share in shares {
        fs::create_dir_all(&share.path)
            .map_err(|e| io::Error::other(format!("creating mount point {}: {e}", share.path)))?;
        let flags = if share.read_only { libc::MS_RDONLY } else { 0 };
        sys::mount(&share.tag, &share.path, "virtiofs", flags, None).map_err(|e| {
            io::Error::other(format!(
                "mounting virtio-fs tag {:?} on {}: {e} (is a vhost-user-fs device with that tag attached?)",
                share.tag, share.path
            ))
        })?;
    }
    Ok(())
}

/// Where `--rootfs` is assembled: the shared directory (read only), a
/// tmpfs for changes, and the overlay of both that the workload runs in.
pub const ROOT: &str = "/rootfs/root";

/// Builds the workload's root from virtio-fs tag `tag`: an overlay of the
/// read-only share and a tmpfs, with /proc, /sys and /dev, and this
/// guest's network configuration files. Returns its path.
pub fn rootfs(tag: &str) -> io::Result<String> {
    let (lower, rw) = ("/rootfs/lower", "/rootfs/rw");
    for d in [lower, rw, ROOT] {
        fs::create_dir_all(d)?;
    }
    sys::mount(tag, lower, "virtiofs", libc::MS_RDONLY, None)
        .map_err(|e| io::Error::other(format!("mounting the root file system (virtio-fs tag {tag:?}): {e}")))?;
    sys::mount("tmpfs", rw, "tmpfs", 0, Some("mode=0755"))?;
    fs::create_dir_all(format!("{rw}/upper"))?;
    fs::create_dir_all(format!("{rw}/work"))?;
    let opts = format!("lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work");
    sys::mount("overlay", ROOT, "overlay", 0, Some(&opts))
        .map_err(|e| io::Error::other(format!("the writable overlay on the root file system: {e}")))?;
    for d in ["proc", "sys", "dev"] {
        let target = format!("{ROOT}/{d}");
        fs::create_dir_all(&target)?;
        sys::mount(&format!("/{d}"), &target, "", libc::MS_BIND | libc::MS_REC, None)?;
    }
    fs::create_dir_all(format!("{ROOT}/etc"))?;
    for f in ["resolv.conf", "hosts", "hostname"] {
        let _ = fs::copy(format!("/etc/{f}"), format!("{ROOT}/etc/{f}"));
    }
    Ok(ROOT.to_string())
}

/// Flushes and detaches virtio-fs shares before power-off so that the host
/// sees every write.
pub fn unmount_shares() {
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(target), Some("virtiofs")) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let _ = Command::new("/bin/busybox").arg("umount").arg(target).status();
    }
}
