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
