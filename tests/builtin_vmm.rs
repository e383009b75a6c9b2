//! A real Linux guest in ferry's built-in VMM: `ferry run --hypervisor
//! kvm` to guest-init and back, with the network (DHCP, DNS, a port
//! forward's NAT), a virtio-fs share and the boot timer.
//!
//! It needs a KVM that boots stock kernels, which nested "PVM" hosts lack
//! (long-mode entry, port I/O and MMIO work there, the kernel does not get
//! through its start-up). So it is ignored by default; `scripts/test` runs
//! it when `ferry guest check-kvm` passes and prints the reason otherwise.

mod common;

use common::Ferry;

#[test]
#[ignore = "needs a KVM that boots stock Linux; scripts/test runs it where `ferry guest check-kvm` passes"]
fn linux_boots_in_the_builtin_vmm() {
    let share = std::env::temp_dir().join(format!("ferry-builtin-share-{}", std::process::id()));
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "from the host\n").unwrap();
    let vol = format!("{}:/mnt/share", share.display());
    let out = Ferry::new([
        "run",
        "--hypervisor",
        "kvm",
        "--name",
        "builtin",
        "--timeout",
        "120",
        "-v",
        &vol,
        "--",
        "sh",
        "-c",
        "cat /mnt/share/hello.txt; echo guest > /mnt/share/back.txt; \
         ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; \
         nslookup builtin.test 2>&1 | grep -c Address; exit 7",
    ])
    .env("RUST_LOG", "info")
    .output();
    assert_eq!(out.code, Some(7), "the guest's exit code; stderr: {}", out.stderr);
    assert!(out.stdout.contains("from the host"), "{}", out.stdout);
    assert!(out.stdout.contains("inet 10.0.2."), "DHCP lease: {}", out.stdout);
    assert_eq!(std::fs::read_to_string(share.join("back.txt")).unwrap(), "guest\n");
    assert!(out.stderr.contains("guest booted in"), "boot timer: {}", out.stderr);
    std::fs::remove_dir_all(&share).unwrap();
}

/// Where KVM cannot boot Linux, `ferry run --hypervisor kvm` fails with a
/// message that says what to use instead (it must not hang or pass).
#[test]
fn builtin_vmm_failure_names_the_alternative() {
    let out = Ferry::new(["run", "--hypervisor", "kvm", "--cpus", "2", "--", "true"]).output();
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("--hypervisor qemu"), "{}", out.stderr);
}

/// A stand-in kernel (ELF, entry at 16 MiB) that writes "up" to the serial
/// port and spins: enough for `ferry vmm` to set the VM up and confine
/// itself, which this KVM runs.
fn spinning_kernel(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::process::Command;
    let (src, obj, elf) = (dir.join("k.S"), dir.join("k.o"), dir.join("vmlinux"));
    std::fs::write(
        &src,
        ".code64\n.text\n.globl entry\nentry:\n mov $0x3f8, %dx\n mov $'u', %al\n out %al, (%dx)\n mov $'p', %al\n out %al, (%dx)\n mov $10, %al\n out %al, (%dx)\nspin:\n pause\n jmp spin\n",
    )
    .unwrap();
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    (ok(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src))
        && ok(Command::new("ld")
            .args(["-N", "-e", "entry", "-Ttext=0x1000000", "-o"])
            .arg(&elf)
            .arg(&obj)))
    .then_some(elf)
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
}

/// `ferry vmm` confines itself once the VM is set up, as the other
/// long-running modes do: a seccomp filter (kill by default), no
/// capabilities without shares (virtiofsd's set with them), and a mount
/// view of nothing (without shares or vsock) or of the shares only. Seen
/// from outside in /proc while the guest runs; a host program's vsock
/// connection (accept, after the filter) does not kill it.
#[test]
fn the_builtin_vmm_confines_itself() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferry-vmm-confine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = spinning_kernel(&dir).expect("binutils (as, ld) are needed");
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("only-this"), b"x").unwrap();
    let vsock = dir.join("v.sock");
    let k = kernel.to_str().unwrap();

    let wait_confined = |pid: u32| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while status_field(pid, "Seccomp:").as_deref() != Some("2") {
            assert!(
                std::time::Instant::now() < deadline,
                "no seccomp filter on ferry vmm after 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };

    // No shares, no vsock: no capabilities, an empty root.
    let mut vm = Ferry::new(["vmm", "--kernel", k, "--timeout", "60"]).spawn();
    let pid = vm.child.id();
    wait_confined(pid);
    assert_eq!(status_field(pid, "CapEff:").as_deref(), Some("0000000000000000"));
    assert_eq!(status_field(pid, "NoNewPrivs:").as_deref(), Some("1"));
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root")).unwrap().collect();
    assert!(root.is_empty(), "the VMM still sees files: {root:?}");
    drop(vm.child.kill());

    // A share and vsock: the share is all it sees, virtiofsd's capabilities.
    let share_arg = format!("s={}", share.display());
    let mut vm = Ferry::new([
        "vmm",
        "--kernel",
        k,
        "--share",
        &share_arg,
        "--vsock",
        vsock.to_str().unwrap(),
        "--timeout",
        "60",
    ])
    .spawn();
    let pid = vm.child.id();
    wait_confined(pid);
    let eff = u64::from_str_radix(&status_field(pid, "CapEff:").unwrap(), 16).unwrap();
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN kept: {eff:#x}");
    assert_ne!(
        eff & (1 << 1),
        0,
        "CAP_DAC_OVERRIDE (virtiofsd keeps it) dropped: {eff:#x}"
    );
    let names = |p: String| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // The share (as 0/) and the descriptor view fuse-backend-rs reopens
    // files through; nothing of the host's tree.
    assert_eq!(names(format!("/proc/{pid}/root")), ["0", "proc"], "the VMM's root");
    assert_eq!(names(format!("/proc/{pid}/root/0")), ["only-this"]);
    let mut host = std::os::unix::net::UnixStream::connect(&vsock).unwrap();
    std::io::Write::write_all(&mut host, b"CONNECT 1024\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "ferry vmm died serving a vsock connection"
    );
    drop(vm.child.kill());
    let _ = std::fs::remove_dir_all(&dir);
}
