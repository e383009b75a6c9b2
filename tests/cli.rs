//! The `ferry` command line: help, flag errors, multi-call, guest image.

mod common;

use std::path::Path;

use common::Ferry;

#[test]
fn help_lists_every_subcommand_with_examples() {
    let out = Ferry::new(["--help"]).output();
    assert_eq!(out.code, Some(0));
    for word in [
        "run",
        "net",
        "fs",
        "guest",
        "version",
        "Examples:",
        "--log-level",
        "--log-format",
    ] {
        assert!(out.stdout.contains(word), "--help lacks {word}:\n{}", out.stdout);
    }
    let out = Ferry::new(["run", "--help"]).output();
    for word in [
        "--name",
        "--memory",
        "--cpus",
        "--accel",
        "--timeout",
        "--kernel",
        "Examples:",
    ] {
        assert!(out.stdout.contains(word), "run --help lacks {word}:\n{}", out.stdout);
    }
}

#[test]
fn fs_takes_virtiofsd_flags_and_names_what_is_wrong() {
    // libvirt runs `virtiofsd --print-capabilities` and reads the JSON.
    let out = Ferry::new(["fs", "--print-capabilities"]).output();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let caps: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(caps["type"], "fs");
    let help = Ferry::new(["fs", "--help"]).output();
    for flag in [
        "--socket-path",
        "--fd",
        "--shared-dir",
        "--tag",
        "--socket-group",
        "--cache",
        "--sandbox",
        "--seccomp",
        "--inode-file-handles",
        "--thread-pool-size",
        "--log-level",
        "--rlimit-nofile",
        "--announce-submounts",
        "--xattr",
        "--posix-acl",
        "--readonly",
        "--writeback",
        "--allow-direct-io",
        "--killpriv-v2",
        "--no-readdirplus",
        "--syslog",
        "--print-capabilities",
        "-o <LIST>",
        "Examples:",
    ] {
        assert!(help.stdout.contains(flag), "fs --help lacks {flag}:\n{}", help.stdout);
    }
    for (args, says) in [
        (&["fs", "--socket-path", "/tmp/x.sock"][..], "--shared-dir"),
        (&["fs", "--shared-dir", "/tmp"][..], "--socket-path"),
        (&["fs", "--frobnicate"][..], "--frobnicate"),
        (
            &["fs", "-o", "source=/tmp,bogus_opt", "--socket-path", "/tmp/y.sock"][..],
            "bogus_opt",
        ),
        (&["fs", "--cache", "sometimes", "--shared-dir", "/tmp"][..], "sometimes"),
        (
            &[
                "fs",
                "--shared-dir",
                "/nonexistent/dir",
                "--socket-path",
                "/tmp/ferry-cli-fs.sock",
            ][..],
            "/nonexistent/dir",
        ),
    ] {
        let out = Ferry::new(args).output();
        assert_ne!(out.code, Some(0), "{args:?} succeeded");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn bad_network_flags_are_explained() {
    for (flag, value, says) in [
        ("--subnet", "10.0.0.0/33", "subnet 10.0.0.0/33"),
        ("--mtu", "70000", "MTU 70000"),
        ("--gateway", "192.168.1.1", "gateway 192.168.1.1"),
        ("--dhcp-lease", "nonsense", "static lease"),
    ] {
        let out = Ferry::new(["net", "--netns", "/nonexistent", flag, value]).output();
        assert_eq!(out.code, Some(1), "{flag} {value}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{flag} {value}: {}", out.stderr);
    }
    let out = Ferry::new(["net", "--netns", "/nonexistent/ns"]).output();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("/nonexistent/ns"), "{}", out.stderr);
}

#[test]
fn multi_call_names_dispatch_to_compat_front_ends() {
    let dir = tempdir("multicall");
    let link = dir.join("virtiofsd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), &link).unwrap();
    let out = Ferry::with_binary(&link, ["--help"]).output();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("--shared-dir"), "{}", out.stdout);
    let out = Ferry::with_binary(&link, ["--print-capabilities"]).output();
    assert!(out.stdout.contains("\"fs\""), "{}", out.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_logs_are_json() {
    let out = Ferry::new(["--log-format", "json", "--log-level", "debug", "guest", "kernel"]).output();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let bad = Ferry::new(["--log-level", "debug", "guest", "kernel", "--kernel", "/nonexistent"]).output();
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("/nonexistent"), "{}", bad.stderr);
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn guest_image_is_deterministic_and_cached() {
    let (a, b) = (tempdir("cache-a"), tempdir("cache-b"));
    let build = |cache: &Path| Ferry::new(["guest", "build"]).env("FERRY_CACHE_DIR", cache).output();
    let first = build(&a);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(first.stderr.contains("building guest image"), "{}", first.stderr);
    let second = build(&b);
    let again = build(&a);
    assert!(again.stderr.contains("reusing the cached one"), "{}", again.stderr);
    let bytes = |p: &str| std::fs::read(p.trim()).unwrap();
    assert_eq!(
        bytes(&first.stdout),
        bytes(&second.stdout),
        "two builds of the same inputs differ"
    );
    assert_eq!(
        first.stdout.trim().rsplit('/').next(),
        second.stdout.trim().rsplit('/').next()
    );

    // The real cpio tool reads it and finds init, busybox and the modules.
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zcat {} | cpio -t --quiet", first.stdout.trim()))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for want in [
        "init",
        "bin/busybox",
        "virtiofs.ko",
        "virtio_net.ko",
        "modules.dep",
        "dev/console",
    ] {
        assert!(listing.contains(want), "image lacks {want}");
    }
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn missing_inputs_name_the_package() {
    let dir = tempdir("missing");
    let out = Ferry::new(["guest", "build", "--busybox", "/nonexistent/busybox"])
        .env("FERRY_CACHE_DIR", &dir)
        .output();
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("busybox-static"), "{}", out.stderr);
    let out = Ferry::new(["guest", "build", "--busybox", "/bin/ls"])
        .env("FERRY_CACHE_DIR", &dir)
        .output();
    assert!(out.stderr.contains("dynamically linked"), "{}", out.stderr);
    let out = Ferry::new(["guest", "build", "--kernel", "/nonexistent/vmlinuz-1"]).output();
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("/nonexistent/vmlinuz-1"), "{}", out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}
