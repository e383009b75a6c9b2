//! Foreign-architecture binaries in a real guest (Debian kernel under
//! QEMU): qemu-user from the host's qemu-user-static, registered with
//! binfmt_misc by guest-init. The arm64 binary is Debian's busybox-static
//! for arm64, fetched by the test (`dpkg --add-architecture arm64`,
//! `apt-get download`, `dpkg-deb -x`) and cached under target/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{require_tool, Ferry};

/// Debian's static busybox for arm64, unpacked (cached across runs).
fn arm64_busybox() -> PathBuf {
    let dir = common::repo_root().join("target/test-cache/busybox-arm64");
    let bin = dir.join("bin/busybox");
    if bin.is_file() {
        return bin;
    }
    require_tool("dpkg-deb", "dpkg");
    let sh = |script: &str| {
        let out = Command::new("sh").args(["-c", script]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let dl = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).unwrap();
    let fetch = format!("cd {} && apt-get download busybox-static:arm64", dl.display());
    if !sh(&fetch).0 {
        let (ok, err) = sh("dpkg --add-architecture arm64 && apt-get update -qq");
        assert!(ok, "enabling arm64 packages: {err}");
        let (ok, err) = sh(&fetch);
        assert!(ok, "apt-get download busybox-static:arm64: {err}");
    }
    let (ok, err) = sh(&format!(
        "dpkg-deb -x {}/busybox-static_*_arm64.deb {}",
        dl.display(),
        dir.display()
    ));
    assert!(ok, "unpacking: {err}");
    assert!(bin.is_file(), "no bin/busybox in busybox-static:arm64");
    bin
}

fn run(args: &[&str]) -> common::Output {
    Ferry::new(args).timeout(std::time::Duration::from_secs(240)).output()
}

/// `--platform linux/arm64` with the arm64 busybox: `uname -m` is the
/// emulated machine; an arm64 binary runs from a share (`--binfmt`); and
/// a `--rootfs` tree of arm64 binaries runs its own /bin/sh.
#[test]
fn arm64_binaries_run_in_the_guest() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    assert!(
        Path::new("/usr/bin/qemu-aarch64-static").exists(),
        "qemu-user-static is not installed; run `apt-get install qemu-user-static`"
    );
    let busybox = arm64_busybox();
    let bb = busybox.display().to_string();

    let out = run(&[
        "run",
        "--platform",
        "linux/arm64",
        "--platform-busybox",
        &bb,
        "--",
        "uname",
        "-m",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "aarch64", "{}", out.stderr);
    // The literal command: ferry fetches busybox-static:arm64 itself
    // (apt has arm64 enabled since arm64_busybox() ran) into its cache.
    let cache = std::env::temp_dir().join(format!("ferry-platform-cache-{}", std::process::id()));
    let out = Ferry::new(["run", "--platform", "linux/arm64", "--", "uname", "-m"])
        .env("FERRY_CACHE_DIR", &cache)
        .timeout(std::time::Duration::from_secs(300))
        .output();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "aarch64", "{}", out.stderr);
    assert!(
        out.stderr.contains("fetching Debian's busybox-static:arm64"),
        "{}",
        out.stderr
    );
    assert!(cache.join("platform/aarch64/bin/busybox").is_file());
    let _ = std::fs::remove_dir_all(&cache);

    // From a share, with only the handler registered; the guest's own
    // tools stay native.
    let share = busybox.parent().unwrap().parent().unwrap().display().to_string();
    let out = run(&[
        "run",
        "--binfmt",
        "aarch64",
        "-v",
        &format!("{share}:/mnt/arm"),
        "--",
        "sh",
        "-c",
        "uname -m; /mnt/arm/bin/busybox uname -m; /mnt/arm/bin/busybox echo hello-from-arm64",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["x86_64", "aarch64", "hello-from-arm64"],
        "{}",
        out.stderr
    );

    // A --rootfs tree of arm64 binaries: its /bin/sh and all it runs.
    let root = std::env::temp_dir().join(format!("ferry-arm64-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "uname", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let out = run(&[
        "run",
        "--platform",
        "linux/arm64",
        "--rootfs",
        &root.display().to_string(),
        "--",
        "sh",
        "-c",
        "uname -m; echo from-the-rootfs",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["aarch64", "from-the-rootfs"],
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Clear errors: an unknown platform, a missing interpreter package, a
/// busybox of the wrong architecture.
#[test]
fn platform_errors_say_what_to_do() {
    let out = run(&["run", "--platform", "linux/sparc", "--", "true"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("unknown platform") && out.stderr.contains("linux/arm64"),
        "{}",
        out.stderr
    );

    let empty = std::env::temp_dir().join(format!("ferry-no-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Ferry::new(["run", "--binfmt", "aarch64", "--", "true"])
        .env("FERRY_QEMU_USER_DIR", &empty)
        .output();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("apt-get install qemu-user-static"),
        "{}",
        out.stderr
    );

    let out = run(&[
        "run",
        "--platform",
        "linux/arm64",
        "--platform-busybox",
        "/bin/busybox",
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("not an aarch64 executable"), "{}", out.stderr);
    // No busybox for riscv64 in apt (architecture not enabled): the error
    // says how to get one.
    let cache = std::env::temp_dir().join(format!("ferry-platform-nocache-{}", std::process::id()));
    let out = Ferry::new(["run", "--platform", "linux/riscv64", "--", "true"])
        .env("FERRY_CACHE_DIR", &cache)
        .output();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("--platform-busybox") && out.stderr.contains("dpkg --add-architecture"),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(&cache);
}
