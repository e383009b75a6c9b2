//! A real Debian-kernel guest under QEMU mounting host directories through
//! `ferry run -v` (ferry fs as the vhost-user-fs device, the kernel's own
//! virtiofs driver in the guest).

mod common;

use std::path::PathBuf;

use common::{require_tool, Ferry};
use sha2::Digest;

fn share_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-guest-fs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

#[test]
fn guest_reads_and_writes_a_shared_directory() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = share_dir("rw");
    // 100 MiB from the host, and a directory of 10,000 entries.
    let mut big = vec![0u8; 100 << 20];
    common::netns::Pattern::new(3).fill(&mut big);
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::fs::create_dir(dir.join("many")).unwrap();
    for i in 0..10_000 {
        std::fs::write(dir.join("many").join(format!("f{i}")), b"").unwrap();
    }
    std::fs::write(dir.join("append.txt"), "one\n").unwrap();
    std::fs::write(dir.join("trunc.txt"), "0123456789").unwrap();
    std::fs::write(dir.join("mmap.txt"), "aaaaaaaaaa").unwrap();
    // A second share, served by the same ferry fs process.
    let second = share_dir("rw-second");
    std::fs::write(second.join("second.txt"), "from the second share\n").unwrap();
    let script = "cd /mnt/s && \
        sha256sum big.bin | cut -d' ' -f1 && \
        ls many | wc -l && \
        echo two >> append.txt && \
        truncate -s 4 trunc.txt && \
        echo created > new.txt && cat new.txt && \
        mv new.txt renamed.txt && \
        ln renamed.txt hard.txt && ln -s renamed.txt sym.txt && readlink sym.txt && \
        chmod 600 renamed.txt && chown 1234:5678 hard.txt && \
        stat -c '%a %u %g %h' renamed.txt && \
        mkdir -p sub/deeper && rmdir sub/deeper && \
        rm many/f0 && \
        dd if=/dev/urandom of=fromguest.bin bs=1M count=100 2>/dev/null && \
        sha256sum fromguest.bin | cut -d' ' -f1 && \
        /init tool xattr-set append.txt user.ferry from-guest && \
        /init tool xattr-get append.txt user.ferry && \
        /init tool mmap-write mmap.txt 2 XYZ && /init tool mmap-read mmap.txt 0 10 && \
        cat /mnt/t/second.txt";
    let out = Ferry::new([
        "run",
        "--no-net",
        "--memory",
        "768",
        "-v",
        &format!("{}:/mnt/s", dir.display()),
        "-v",
        &format!("{}:/mnt/t", second.display()),
        "--",
        "sh",
        "-c",
        script,
    ])
    .timeout(std::time::Duration::from_secs(240))
    .output();
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], sha(&big), "100 MiB host -> guest");
    assert_eq!(lines[1], "10000");
    assert_eq!(lines[2], "created");
    assert_eq!(lines[3], "renamed.txt");
    assert_eq!(lines[4], "600 1234 5678 2");
    // And the host sees exactly what the guest did.
    assert_eq!(std::fs::read_to_string(dir.join("append.txt")).unwrap(), "one\ntwo\n");
    assert_eq!(std::fs::read_to_string(dir.join("trunc.txt")).unwrap(), "0123");
    assert!(!dir.join("new.txt").exists());
    assert_eq!(std::fs::read_to_string(dir.join("hard.txt")).unwrap(), "created\n");
    assert_eq!(
        std::fs::read_link(dir.join("sym.txt")).unwrap(),
        PathBuf::from("renamed.txt")
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir.join("renamed.txt")).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid(), meta.nlink()),
        (0o600, 1234, 5678, 2)
    );
    assert!(!dir.join("many/f0").exists());
    let from_guest = std::fs::read(dir.join("fromguest.bin")).unwrap();
    assert_eq!(from_guest.len(), 100 << 20);
    assert_eq!(lines[5], sha(&from_guest), "100 MiB guest -> host");
    // xattrs: set in the guest, read back there and on the host.
    assert_eq!(lines[6], "from-guest");
    let mut buf = [0u8; 64];
    let path = std::ffi::CString::new(dir.join("append.txt").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.ferry".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n.max(0) as usize], b"from-guest", "xattr on the host");
    // A write through a shared mapping in the guest reaches the host file.
    assert_eq!(lines[7], "aaXYZaaaaa");
    assert_eq!(std::fs::read_to_string(dir.join("mmap.txt")).unwrap(), "aaXYZaaaaa");
    assert_eq!(lines[8], "from the second share");
    std::fs::remove_dir_all(&second).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_only_share_refuses_writes_and_nothing_changes() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = share_dir("ro");
    std::fs::write(dir.join("keep.txt"), "original\n").unwrap();
    let script = "cat /mnt/r/keep.txt; \
        echo x > /mnt/r/keep.txt 2>&1; echo write=$?; \
        touch /mnt/r/new 2>&1; echo create=$?; \
        rm -f /mnt/r/keep.txt 2>&1; echo rm=$?; \
        ls /mnt/r";
    let out = Ferry::new([
        "run",
        "--no-net",
        "-v",
        &format!("{}:/mnt/r:ro", dir.display()),
        "--",
        "sh",
        "-c",
        script,
    ])
    .output();
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let o = &out.stdout;
    assert!(o.starts_with("original\n"), "{o}");
    assert!(o.contains("Read-only file system"), "no EROFS:\n{o}");
    for op in ["write=1", "create=1", "rm=1"] {
        assert!(o.contains(op), "{op} missing:\n{o}");
    }
    assert_eq!(std::fs::read_to_string(dir.join("keep.txt")).unwrap(), "original\n");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_share_directory_is_a_clear_error() {
    let out = Ferry::new(["run", "--no-net", "-v", "/nonexistent/ferry-share:/mnt", "--", "true"]).output();
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("/nonexistent/ferry-share"), "{}", out.stderr);
}

/// Links that point outside the share lead nowhere on the host: the guest
/// kernel resolves symbolic links itself, inside the guest, and the server
/// never follows them. A host file next to the share must stay unreadable.
#[test]
fn links_out_of_the_share_do_not_reach_host_files() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = share_dir("escape");
    let secret_name = format!("ferry-host-secret-{}", std::process::id());
    let secret = dir.parent().unwrap().join(&secret_name);
    std::fs::write(&secret, "host-only\n").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("abs")).unwrap();
    std::os::unix::fs::symlink(format!("../{secret_name}"), dir.join("rel")).unwrap();
    std::os::unix::fs::symlink("/", dir.join("root")).unwrap();
    let script = "cat /mnt/s/abs 2>/dev/null; echo abs=$?; \
        cat /mnt/s/rel 2>/dev/null; echo rel=$?; \
        ls /mnt/s/root/ | grep -c ferry-host-secret; \
        ls /mnt/s/../; \
        ln -s /proc/sys/kernel/hostname /mnt/s/made-by-guest && cat /mnt/s/made-by-guest";
    let out = Ferry::new([
        "run",
        "--no-net",
        "--name",
        "escapee",
        "-v",
        &format!("{}:/mnt/s", dir.display()),
        "--",
        "sh",
        "-c",
        script,
    ])
    .output();
    std::fs::remove_file(&secret).unwrap();
    let o = &out.stdout;
    assert!(!o.contains("host-only"), "a host file outside the share was read:\n{o}");
    assert!(o.contains("abs=1") && o.contains("rel=1"), "{o}\n{}", out.stderr);
    // The guest's own root and /mnt, not the host's.
    assert!(o.contains("\n0\ns\n"), "{o}");
    // A link the guest makes resolves in the guest (its host name).
    assert!(o.ends_with("escapee\n"), "{o}");
    assert_eq!(
        std::fs::read_link(dir.join("made-by-guest")).unwrap(),
        PathBuf::from("/proc/sys/kernel/hostname")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--rootfs DIR`: the command runs in DIR (read-only, with a writable
/// overlay in the guest), `-v` shares are mounted inside it, and nothing
/// the guest writes to its root reaches DIR.
#[test]
fn rootfs_is_the_command_root_with_a_private_writable_overlay() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let root = share_dir("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/os-release"), "ID=ferry-rootfs-test\n").unwrap();
    let data = share_dir("rootfs-data");
    std::fs::write(data.join("in.txt"), "shared\n").unwrap();
    let script = "cat /etc/os-release; echo private > /etc/new.conf; cat /etc/new.conf; \
                  cat /data/in.txt; echo back > /data/out.txt; ls /";
    let out = Ferry::new([
        "run",
        "--no-net",
        "--rootfs",
        root.to_str().unwrap(),
        "-v",
        &format!("{}:/data", data.display()),
        "--",
        "sh",
        "-c",
        script,
    ])
    .timeout(std::time::Duration::from_secs(120))
    .output();
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        &lines[..3],
        ["ID=ferry-rootfs-test", "private", "shared"],
        "{}",
        out.stdout
    );
    assert!(
        !root.join("etc/new.conf").exists(),
        "the guest's write reached the root directory"
    );
    assert_eq!(std::fs::read_to_string(data.join("out.txt")).unwrap(), "back\n");
    let bad = Ferry::new(["run", "--no-net", "--rootfs", data.to_str().unwrap(), "--", "true"]).output();
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("not a root file system"), "{}", bad.stderr);
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
}

/// `ferry run` by a user other than root: what the guest (as root, or as
/// any user) creates on a share belongs to that user on the host, and that
/// user's files show as root's in the guest; `--keep-share-owners` turns
/// the translation off. The translation is the file server's
/// (`--translate-uid squash-guest:0:UID:… host:UID:0:1`), exercised here
/// by a real guest kernel.
#[test]
fn shares_of_an_unprivileged_run_belong_to_its_user() {
    use std::os::unix::fs::MetadataExt;
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let uid = common::test_user();
    let dir = share_dir("owners");
    std::fs::write(dir.join("hostfile"), "hi\n").unwrap();
    std::process::Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(&dir)
        .status()
        .unwrap();
    let guest_init = std::env::var("FERRY_GUEST_INIT").ok();
    let run = |extra: &[&str], script: &str| {
        let mut args = vec![
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--init-groups".into(),
            "env".into(),
            format!("HOME=/home/{}", common::TEST_USER),
        ];
        if let Some(g) = &guest_init {
            args.push(format!("FERRY_GUEST_INIT={g}"));
        }
        args.push(env!("CARGO_BIN_EXE_ferry").into());
        args.extend(["run".to_string(), "-v".into(), format!("{}:/mnt", dir.display())]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
        Ferry::with_binary(std::path::Path::new("/usr/bin/setpriv"), args).output()
    };
    let out = run(
        &[],
        "touch /mnt/by-root && mkdir /mnt/dir && chown 1234:1234 /mnt/by-root; \
         stat -c '%n %u %g' /mnt/hostfile /mnt/by-root /mnt/dir",
    );
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    for line in ["/mnt/hostfile 0 0", "/mnt/dir 0 0"] {
        assert!(out.stdout.contains(line), "{line}:\n{}", out.stdout);
    }
    for f in ["by-root", "dir"] {
        let m = std::fs::metadata(dir.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, uid), "{f} on the host");
    }
    // Kept as they are: the host user's file shows with its own id.
    let out = run(&["--keep-share-owners"], "stat -c '%n %u' /mnt/hostfile");
    assert!(
        out.stdout.contains(&format!("/mnt/hostfile {uid}")),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}
