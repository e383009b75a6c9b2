//! vhost-user-fs protocol tests: ferry's Rust front end (`ferry-driver`)
//! sends real FUSE requests to a real `ferry fs` process (and, as a check
//! on the driver itself, to virtiofsd when it is installed) and the results
//! are compared with the host files.

#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Ferry, Running};
use ferry_driver::fuse::{FuseClient, SetattrIn, FATTR_MODE, FATTR_SIZE, ROOT};

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-fsproto-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A back end serving `share` on its own socket.
struct Backend {
    process: Running,
    socket: PathBuf,
}

impl Backend {
    fn ferry(share: &Path, sandbox: &str, extra: &[&str]) -> Backend {
        let socket = share.with_extension("sock");
        let _ = std::fs::remove_file(&socket);
        let mut args = vec![
            "fs".to_string(),
            "--socket-path".into(),
            socket.display().to_string(),
            "--shared-dir".into(),
            share.display().to_string(),
            "--sandbox".into(),
            sandbox.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = Ferry::new(args).spawn();
        Backend::wait(process, socket)
    }

    fn virtiofsd(share: &Path) -> Option<Backend> {
        let bin = which("virtiofsd")?;
        let socket = share.with_extension("sock");
        let _ = std::fs::remove_file(&socket);
        let args = [
            "--socket-path".to_string(),
            socket.display().to_string(),
            "--shared-dir".into(),
            share.display().to_string(),
            "--sandbox".into(),
            "none".into(),
            "--xattr".into(),
        ];
        let process = Ferry::with_binary(&bin, args).spawn();
        Some(Backend::wait(process, socket))
    }

    fn wait(mut process: Running, socket: PathBuf) -> Backend {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "the back end exited ({status}) before listening on {}",
                    socket.display()
                );
            }
            assert!(Instant::now() < deadline, "no socket at {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Backend { process, socket }
    }

    fn connect(&mut self) -> FuseClient {
        match FuseClient::connect(&self.socket) {
            Ok((client, _)) => client,
            Err(e) => panic!("connecting the FUSE driver: {e}; back end said: {}", self.stderr()),
        }
    }

    /// Still running (a panic or a crash would have ended it).
    fn assert_alive(&mut self) {
        if let Some(status) = self.process.child.try_wait().unwrap() {
            panic!("the back end died ({status}): {:?}", self.stderr());
        }
    }

    /// Waits for the process to end; returns its stderr.
    fn stderr(&mut self) -> String {
        use std::io::Read;
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        let mut s = String::new();
        if let Some(mut e) = self.process.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()?;
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    if out.status.success() {
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    home_bin.filter(|p| p.exists())
}

fn errno(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.raw_os_error().unwrap_or_else(|| panic!("not an errno: {e}")),
    }
}

/// Every common operation through the driver, checked against the host.
fn round_trip(client: &mut FuseClient, share: &Path) {
    std::fs::write(share.join("hello.txt"), b"hello from the host\n").unwrap();
    let hello = client.lookup(ROOT, b"hello.txt").unwrap();
    assert_eq!(hello.attr.size, 20);
    assert_eq!(
        client.getattr(hello.nodeid).unwrap().ino,
        std::fs::metadata(share.join("hello.txt")).unwrap().ino()
    );
    let fh = client.open(hello.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(client.read(hello.nodeid, fh, 6, 100).unwrap(), b"from the host\n");
    client.release(hello.nodeid, fh).unwrap();
    assert_eq!(errno(client.lookup(ROOT, b"absent")), libc::ENOENT);

    // create, write (4 KiB and 1 MiB), fsync, read back
    let (made, fh) = client.create(ROOT, b"new.bin", libc::O_RDWR, 0o640).unwrap();
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(client.write(made.nodeid, fh, 0, &big[..4096]).unwrap(), 4096);
    assert_eq!(client.write(made.nodeid, fh, 4096, &big).unwrap(), 1 << 20);
    client.fsync(made.nodeid, fh).unwrap();
    assert_eq!(client.read(made.nodeid, fh, 4096, 1 << 20).unwrap(), big);
    client.release(made.nodeid, fh).unwrap();
    let host = std::fs::read(share.join("new.bin")).unwrap();
    assert_eq!(host.len(), 4096 + (1 << 20));
    assert_eq!(&host[4096..], &big[..]);
    assert_eq!(
        std::fs::metadata(share.join("new.bin")).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // setattr: chmod and truncate
    let set = SetattrIn {
        valid: FATTR_MODE | FATTR_SIZE,
        mode: 0o100600,
        size: 10,
        ..Default::default()
    };
    let attr = client.setattr(made.nodeid, &set).unwrap();
    assert_eq!((attr.size, attr.mode & 0o777), (10, 0o600));
    let meta = std::fs::metadata(share.join("new.bin")).unwrap();
    assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (10, 0o600));

    // directories, rename, links
    let dir = client.mkdir(ROOT, b"dir", 0o755).unwrap();
    assert!(share.join("dir").is_dir());
    client.rename(ROOT, b"new.bin", dir.nodeid, b"moved.bin").unwrap();
    assert!(share.join("dir/moved.bin").exists() && !share.join("new.bin").exists());
    let moved = client.lookup(dir.nodeid, b"moved.bin").unwrap();
    let hard = client.link(moved.nodeid, ROOT, b"hard.bin").unwrap();
    assert_eq!(hard.attr.nlink, 2);
    assert_eq!(std::fs::metadata(share.join("hard.bin")).unwrap().nlink(), 2);
    let sym = client.symlink(ROOT, b"sym", b"dir/moved.bin").unwrap();
    assert_eq!(client.readlink(sym.nodeid).unwrap(), b"dir/moved.bin");
    assert_eq!(
        std::fs::read_link(share.join("sym")).unwrap(),
        Path::new("dir/moved.bin")
    );

    // readdirplus sees every entry with its attributes
    let mut names: Vec<String> = client
        .list_dir(ROOT)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "hard.bin", "hello.txt", "sym"]);

    // xattrs
    client.setxattr(hello.nodeid, b"user.ferry", b"yes").unwrap();
    assert_eq!(client.getxattr(hello.nodeid, b"user.ferry", 64).unwrap(), b"yes");
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", "user.ferry"])
        .arg(share.join("hello.txt"))
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            assert_eq!(out.stdout, b"yes");
        }
    }

    // unlink, rmdir, statfs
    assert_eq!(errno(client.rmdir(ROOT, b"dir")), libc::ENOTEMPTY);
    client.unlink(dir.nodeid, b"moved.bin").unwrap();
    client.rmdir(ROOT, b"dir").unwrap();
    client.unlink(ROOT, b"sym").unwrap();
    assert!(!share.join("dir").exists() && !share.join("sym").exists());
    let st = client.statfs(ROOT).unwrap();
    assert!(st.blocks > 0 && st.bsize > 0, "{st:?}");
}

#[test]
fn ferry_fs_answers_every_common_request() {
    let share = tempdir("ops");
    let mut server = Backend::ferry(&share, "none", &["--xattr"]);
    let mut client = server.connect();
    round_trip(&mut client, &share);
}

/// The same requests against virtiofsd: the driver speaks the protocol as
/// the reference back end expects, so what it finds in ferry is ferry's.
#[test]
fn driver_round_trip_also_passes_against_virtiofsd() {
    let share = tempdir("vfsd");
    let mut server = Backend::virtiofsd(&share)
        .expect("virtiofsd is not installed: run scripts/install-deps (cargo install virtiofsd)");
    let mut client = server.connect();
    round_trip(&mut client, &share);
}

/// Names, modes, sizes and contents of everything under `dir`.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m.mode(), m.len(), data));
        }
    }
    out.sort();
    out
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

/// Every way a guest could try to reach outside the share, in one sandbox
/// mode. The guest only has names and node ids; the server must never
/// resolve a name or a symlink to something outside the shared directory.
fn escape_suite(sandbox: &str) {
    let base = tempdir(&format!("escape-{sandbox}"));
    let share = base.join("share");
    let outside = base.join("outside");
    std::fs::create_dir_all(share.join("subdir")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"SECRET").unwrap();
    std::fs::set_permissions(outside.join("secret.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(share.join("inside.txt"), b"inside").unwrap();
    let secret = outside.join("secret.txt");
    let links: Vec<(&str, String)> = vec![
        ("abs", secret.display().to_string()),
        ("rel", "../outside/secret.txt".into()),
        ("updir", "..".into()),
        ("outdir", "../outside".into()),
        ("hostroot", "/".into()),
        ("proc_root", format!("/proc/self/root{}", secret.display())),
        ("proc_cwd", "/proc/self/cwd".into()),
        ("proc_fd", "/proc/self/fd/0".into()),
    ];
    for (name, target) in &links {
        std::os::unix::fs::symlink(target, share.join(name)).unwrap();
    }
    let before = snapshot(&outside);
    let share_ino = std::fs::metadata(&share).unwrap().ino();

    let mut server = Backend::ferry(&share, sandbox, &[]);
    let mut c = server.connect();

    // ".." never leaves the share's root, from the root or below it.
    if let Ok(up) = c.lookup(ROOT, b"..") {
        assert_eq!(up.attr.ino, share_ino, "[{sandbox}] LOOKUP(root, ..) left the share");
        assert_eq!(errno(c.lookup(up.nodeid, b"outside")), libc::ENOENT, "[{sandbox}]");
    }
    let sub = c.lookup(ROOT, b"subdir").unwrap();
    let up = c.lookup(sub.nodeid, b"..").unwrap();
    assert_eq!(up.attr.ino, share_ino, "[{sandbox}] LOOKUP(subdir, ..)");
    if let Ok(upup) = c.lookup(up.nodeid, b"..") {
        assert_eq!(upup.attr.ino, share_ino, "[{sandbox}] LOOKUP(.., ..) left the share");
    }
    // Names with a slash are never paths.
    for name in [
        &b"../outside"[..],
        b"../outside/secret.txt",
        b"/etc",
        b"subdir/../..",
        b"",
    ] {
        assert!(
            c.lookup(ROOT, name).is_err(),
            "[{sandbox}] LOOKUP {:?}",
            String::from_utf8_lossy(name)
        );
    }

    // Symlinks are answered as symlinks and never followed by the server.
    for (name, target) in &links {
        let e = c.lookup(ROOT, name.as_bytes()).unwrap();
        assert_eq!(e.attr.mode & S_IFMT, S_IFLNK, "[{sandbox}] {name} was followed");
        assert_eq!(c.readlink(e.nodeid).unwrap(), target.as_bytes());
        for flags in [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC] {
            if let Ok(fh) = c.open(e.nodeid, flags) {
                let got = c.read(e.nodeid, fh, 0, 64).unwrap_or_default();
                assert_ne!(got, b"SECRET", "[{sandbox}] OPEN {name} read the outside file");
                panic!("[{sandbox}] OPEN of symlink {name} succeeded");
            }
        }
        assert!(c.opendir(e.nodeid).is_err(), "[{sandbox}] OPENDIR {name}");
        assert!(
            c.lookup(e.nodeid, b"secret.txt").is_err(),
            "[{sandbox}] LOOKUP through {name}"
        );
        let _ = c.create(e.nodeid, b"planted", libc::O_RDWR, 0o644);
        let _ = c.mkdir(e.nodeid, b"planted-dir", 0o755);
        let chmod = SetattrIn {
            valid: FATTR_MODE,
            mode: 0o100777,
            ..Default::default()
        };
        let _ = c.setattr(e.nodeid, &chmod);
        let truncate = SetattrIn {
            valid: FATTR_SIZE,
            size: 0,
            ..Default::default()
        };
        let _ = c.setattr(e.nodeid, &truncate);
        let _ = c.setxattr(e.nodeid, b"user.planted", b"1");
        // A hard link to the link is a link to the symlink itself.
        if let Ok(hl) = c.link(e.nodeid, ROOT, format!("hl-{name}").as_bytes()) {
            assert_eq!(
                hl.attr.mode & S_IFMT,
                S_IFLNK,
                "[{sandbox}] LINK {name} linked the target"
            );
        }
    }

    // Creating, renaming and linking only ever take plain names.
    let inside = c.lookup(ROOT, b"inside.txt").unwrap();
    for bad in [&b".."[..], b".", b"../escaped", b"a/b", b"/tmp/escaped", b""] {
        let what = String::from_utf8_lossy(bad);
        assert!(
            c.create(ROOT, bad, libc::O_RDWR, 0o644).is_err(),
            "[{sandbox}] CREATE {what}"
        );
        assert!(c.mkdir(ROOT, bad, 0o755).is_err(), "[{sandbox}] MKDIR {what}");
        assert!(c.symlink(ROOT, bad, b"x").is_err(), "[{sandbox}] SYMLINK {what}");
        assert!(c.link(inside.nodeid, ROOT, bad).is_err(), "[{sandbox}] LINK {what}");
        assert!(
            c.rename(ROOT, b"inside.txt", ROOT, bad).is_err(),
            "[{sandbox}] RENAME to {what}"
        );
        assert!(
            c.rename(ROOT, bad, ROOT, b"x").is_err(),
            "[{sandbox}] RENAME from {what}"
        );
        assert!(c.unlink(ROOT, bad).is_err(), "[{sandbox}] UNLINK {what}");
    }
    // Through the symlinked directory: a rename or link "into" it is a
    // rename onto the symlink's node, which is not a directory.
    let outdir = c.lookup(ROOT, b"outdir").unwrap();
    assert!(
        c.rename(ROOT, b"inside.txt", outdir.nodeid, b"moved").is_err(),
        "[{sandbox}] RENAME into outdir"
    );
    assert!(
        c.link(inside.nodeid, outdir.nodeid, b"linked").is_err(),
        "[{sandbox}] LINK into outdir"
    );

    // Node ids the server never handed out.
    for bogus in [0u64, 2, 0xdead_beef, u64::MAX] {
        if bogus == 2 && c.getattr(2).is_ok() {
            continue; // a real id on this server
        }
        assert!(c.getattr(bogus).is_err(), "[{sandbox}] GETATTR {bogus:#x}");
        assert!(
            c.lookup(bogus, b"secret.txt").is_err(),
            "[{sandbox}] LOOKUP under {bogus:#x}"
        );
        assert!(c.open(bogus, libc::O_RDONLY).is_err(), "[{sandbox}] OPEN {bogus:#x}");
        assert!(
            c.link(bogus, ROOT, b"stolen").is_err(),
            "[{sandbox}] LINK from {bogus:#x}"
        );
        assert!(
            c.rename(ROOT, b"inside.txt", bogus, b"x").is_err(),
            "[{sandbox}] RENAME to dir {bogus:#x}"
        );
    }

    // The host swaps a directory the guest holds for a symlink out: the
    // server keeps using the directory it opened, never the new link.
    std::fs::rename(share.join("subdir"), share.join("subdir.old")).unwrap();
    std::os::unix::fs::symlink("../outside", share.join("subdir")).unwrap();
    assert_eq!(
        errno(c.lookup(sub.nodeid, b"secret.txt")),
        libc::ENOENT,
        "[{sandbox}] swapped dir"
    );
    assert!(c.create(sub.nodeid, b"after-swap", libc::O_RDWR, 0o644).is_ok());
    assert!(
        share.join("subdir.old/after-swap").exists(),
        "[{sandbox}] CREATE went elsewhere"
    );

    server.assert_alive();
    assert_eq!(
        before,
        snapshot(&outside),
        "[{sandbox}] something outside the share changed"
    );
    assert!(!base.join("escaped").exists() && !Path::new("/tmp/escaped").exists());
    let err = server.stderr();
    assert!(!err.contains("panicked"), "[{sandbox}] {err}");
}

#[test]
fn escape_suite_sandbox_namespace() {
    escape_suite("namespace");
}

#[test]
fn escape_suite_sandbox_chroot() {
    escape_suite("chroot");
}

#[test]
fn escape_suite_sandbox_none() {
    escape_suite("none");
}

/// FUSE requests no kernel would send: each gets an error reply (or is
/// dropped), and the server keeps answering well-formed requests.
#[test]
fn malformed_fuse_requests_get_errors_and_the_server_keeps_serving() {
    use ferry_driver::fuse::header;
    use ferry_driver::split_queue::Buffer;
    let share = tempdir("malformed");
    std::fs::write(share.join("f"), vec![7u8; 8192]).unwrap();
    let mut server = Backend::ferry(&share, "none", &["--xattr"]);
    let mut c = server.connect();
    let f = c.lookup(ROOT, b"f").unwrap();
    let fh = c.open(f.nodeid, libc::O_RDWR).unwrap();
    let fh_bytes = fh.to_ne_bytes();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("len beyond the bytes sent", header(4096, 3, 1, ROOT)),
        ("len shorter than a header", header(8, 3, 2, ROOT)),
        ("len zero", header(0, 3, 3, ROOT)),
        ("unknown opcode", header(40, 9999, 4, ROOT)),
        ("opcode zero", header(40, 0, 5, ROOT)),
        ("half a header", header(40, 3, 6, ROOT)[..20].to_vec()),
        (
            "second INIT",
            [
                header(56, 26, 7, 0),
                vec![7, 0, 0, 0, 31, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0],
            ]
            .concat(),
        ),
    ];
    // LOOKUP whose name has no NUL; a name longer than any path.
    cases.push(("name without NUL", [header(43, 1, 8, ROOT), b"abc".to_vec()].concat()));
    let long = vec![b'a'; 70_000];
    cases.push((
        "name of 70000 bytes",
        [header(40 + long.len() as u32 + 1, 1, 9, ROOT), long.clone(), vec![0]].concat(),
    ));
    // READ of 4 GiB - 1 and READDIRPLUS of the same into a 2 MiB buffer.
    let read = |op: u32, unique: u64, size: u32| {
        let mut body = fh_bytes.to_vec();
        body.extend_from_slice(&0u64.to_ne_bytes());
        body.extend_from_slice(&size.to_ne_bytes());
        body.extend_from_slice(&[0u8; 20]);
        [header(40 + body.len() as u32, op, unique, f.nodeid), body].concat()
    };
    cases.push(("READ of 4 GiB", read(15, 10, u32::MAX)));
    cases.push(("READDIRPLUS of 4 GiB", read(44, 11, u32::MAX)));
    // WRITE that claims 1 GiB of data and carries 10 bytes.
    let mut body = fh_bytes.to_vec();
    body.extend_from_slice(&0u64.to_ne_bytes());
    body.extend_from_slice(&(1u32 << 30).to_ne_bytes());
    body.extend_from_slice(&[0u8; 20]);
    body.extend_from_slice(b"0123456789");
    cases.push((
        "WRITE claiming 1 GiB",
        [header(40 + body.len() as u32, 16, 12, f.nodeid), body].concat(),
    ));
    // SETXATTR whose value size is larger than what follows.
    let mut body = (1u32 << 31).to_ne_bytes().to_vec();
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(b"user.x\0v");
    cases.push((
        "SETXATTR size beyond the request",
        [header(40 + body.len() as u32, 21, 13, f.nodeid), body].concat(),
    ));
    // BATCH_FORGET announcing 2^32-1 entries; FORGET of ids never given out.
    let body = [u32::MAX.to_ne_bytes(), 0u32.to_ne_bytes()].concat();
    cases.push(("BATCH_FORGET of 4 G entries", [header(48, 42, 14, 0), body].concat()));
    cases.push((
        "FORGET bogus id",
        [header(48, 2, 15, 0xdead), u64::MAX.to_ne_bytes().to_vec()].concat(),
    ));
    cases.push((
        "FORGET root a billion times",
        [header(48, 2, 16, ROOT), 1_000_000_000u64.to_ne_bytes().to_vec()].concat(),
    ));

    // GETXATTR and LISTXATTR asking for 4 GiB: fuse-backend-rs allocated
    // what the guest asked for (found by the fuse fuzz target).
    let body = [u32::MAX.to_ne_bytes(), 0u32.to_ne_bytes()].concat();
    cases.push((
        "GETXATTR of 4 GiB",
        [header(40 + 8 + 7, 22, 17, f.nodeid), body.clone(), b"user.x\0".to_vec()].concat(),
    ));
    cases.push(("LISTXATTR of 4 GiB", [header(48, 23, 18, f.nodeid), body].concat()));

    for (what, req) in &cases {
        let reply = c.raw(req, 2 << 20);
        if let Ok((error, body)) = &reply {
            assert!(*error <= 0, "{what}: error {error}");
            assert!(body.len() <= 2 << 20, "{what}: {} bytes", body.len());
        }
        assert!(c.getattr(ROOT).is_ok(), "after {what}: the server stopped answering");
    }
    // No request made the daemon reserve gigabytes.
    let peak = status_field(server.process.child.id(), "VmPeak:");
    let peak_kb: u64 = peak.trim_end_matches(" kB").parse().unwrap();
    assert!(
        peak_kb < 2 << 20,
        "VmPeak {peak}: a request made the daemon allocate what the guest asked"
    );
    // The file is intact: the bad WRITE wrote at most the 10 bytes it had.
    let data = std::fs::read(share.join("f")).unwrap();
    assert_eq!(data.len(), 8192);
    assert!(data[10..].iter().all(|&b| b == 7));

    // Chains no driver should build: a reply buffer too small for a
    // header, no reply buffer at all, buffers outside guest memory, a
    // zero-length request.
    let req_at = c.stage_request(&header(40, 3, 99, ROOT)).unwrap();
    let chains: Vec<(&str, Vec<Buffer>)> = vec![
        (
            "reply of 4 bytes",
            vec![Buffer::readable(req_at, 40), Buffer::writable(req_at + 4096, 4)],
        ),
        ("no reply buffer", vec![Buffer::readable(req_at, 40)]),
        (
            "request outside memory",
            vec![Buffer::readable(1 << 40, 40), Buffer::writable(req_at + 4096, 4096)],
        ),
        (
            "reply outside memory",
            vec![Buffer::readable(req_at, 40), Buffer::writable(u64::MAX - 100, 4096)],
        ),
        (
            "reply across the end of memory",
            vec![Buffer::readable(req_at, 40), Buffer::writable(req_at, u32::MAX)],
        ),
        (
            "empty request",
            vec![Buffer::readable(req_at, 0), Buffer::writable(req_at + 4096, 4096)],
        ),
        ("writable only", vec![Buffer::writable(req_at + 4096, 4096)]),
    ];
    for (what, chain) in &chains {
        let written = c.raw_chain(chain).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(written <= 4096, "{what}: {written} bytes");
        assert!(c.getattr(ROOT).is_ok(), "after {what}: the server stopped answering");
    }
    server.assert_alive();
    let err = server.stderr();
    assert!(!err.contains("panicked"), "{err}");
}

/// Control messages a front end should never send: the connection ends
/// with an error message, never a crash.
#[test]
fn malformed_vhost_user_messages_end_the_connection_cleanly() {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let msg = |code: u32, body: &[u8]| {
        let mut m = code.to_le_bytes().to_vec();
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    };
    let owner = msg(3, &[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown request", msg(9999, &[])),
        (
            "body of 256 MiB announced",
            [0u32.to_le_bytes(), 1u32.to_le_bytes(), 0x1000_0000u32.to_le_bytes()].concat(),
        ),
        ("half a header", owner[..6].to_vec()),
        (
            "memory table without fds",
            [
                owner.clone(),
                msg(
                    5,
                    &[
                        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                ),
            ]
            .concat(),
        ),
        ("vring 50", [owner.clone(), msg(8, &[50, 0, 0, 0, 0, 1, 0, 0])].concat()),
        (
            "vring size 65535",
            [owner.clone(), msg(8, &[1, 0, 0, 0, 0xff, 0xff, 0, 0])].concat(),
        ),
        (
            "vring address with no memory",
            [
                owner.clone(),
                msg(
                    9,
                    &[
                        1, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0x30, 0, 0, 0,
                        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                ),
            ]
            .concat(),
        ),
        (
            "kick without fd",
            [owner.clone(), msg(12, &1u64.to_le_bytes())].concat(),
        ),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let share = tempdir(&format!("vu-{i}"));
        let mut server = Backend::ferry(&share, "none", &[]);
        let mut sock = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
        let _ = sock.write_all(bytes);
        drop(sock);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = server.process.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the back end neither served nor exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = server.stderr();
        assert_eq!(status.signal(), None, "{what}: killed by a signal: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

/// A memory table that claims more memory than its file holds: the back
/// end refuses it instead of dying of SIGBUS on the first access.
#[test]
fn memory_table_larger_than_its_file_is_refused() {
    use ferry_driver::vhost_user::VhostUserDevice;
    use std::os::unix::process::ExitStatusExt;
    let share = tempdir("lying-memory");
    let mut server = Backend::ferry(&share, "none", &[]);
    let result = VhostUserDevice::connect_advertising(&server.socket, 2, 1 << 20, 1 << 30, 0);
    assert!(result.is_err(), "the back end accepted 1 GiB of memory backed by 1 MiB");
    let status = server.process.child.wait().unwrap();
    let err = server.stderr();
    assert_eq!(status.signal(), None, "{err}");
    assert!(err.contains("claims"), "the error does not say what was wrong: {err}");
}

/// One process, two shares, two sockets: each guest sees only its own
/// directory, and the read-only one refuses writes.
#[test]
fn one_process_serves_several_shares() {
    let base = tempdir("multi");
    let (a, b) = (base.join("a"), base.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("in-a"), b"a").unwrap();
    std::fs::write(b.join("in-b"), b"b").unwrap();
    let args = [
        "fs".to_string(),
        "--socket-dir".into(),
        base.display().to_string(),
        "--share".into(),
        format!("alpha={}", a.display()),
        "--share".into(),
        format!("beta={}:ro", b.display()),
        "--xattr".into(),
    ];
    let mut server = Backend::wait(Ferry::new(args).spawn(), base.join("beta.sock"));
    let mut ca = FuseClient::connect(&base.join("alpha.sock")).unwrap().0;
    let mut cb = FuseClient::connect(&base.join("beta.sock")).unwrap().0;
    assert!(ca.lookup(ROOT, b"in-a").is_ok() && ca.lookup(ROOT, b"in-b").is_err());
    assert!(cb.lookup(ROOT, b"in-b").is_ok() && cb.lookup(ROOT, b"in-a").is_err());
    for c in [&mut ca, &mut cb] {
        let up = c.lookup(ROOT, b"..").unwrap();
        let names: Vec<Vec<u8>> = c.list_dir(up.nodeid).unwrap().into_iter().map(|e| e.name).collect();
        assert!(
            !names.contains(&b"a".to_vec()) && !names.contains(&b"b".to_vec()),
            "{names:?}"
        );
    }
    // xattrs work inside the namespace sandbox (fuse-backend-rs reaches
    // them through /proc/self/fd, which the sandbox provides).
    let in_a = ca.lookup(ROOT, b"in-a").unwrap();
    ca.setxattr(in_a.nodeid, b"user.t", b"v").unwrap();
    assert_eq!(ca.getxattr(in_a.nodeid, b"user.t", 16).unwrap(), b"v");
    ca.create(ROOT, b"new", libc::O_RDWR, 0o644).unwrap();
    assert!(a.join("new").exists());
    assert_eq!(errno(cb.create(ROOT, b"new", libc::O_RDWR, 0o644)), libc::EROFS);
    assert!(!b.join("new").exists());
    server.assert_alive();

    // chroot confines to one directory: two shares is an error that says so.
    let args = [
        "fs".to_string(),
        "--sandbox".into(),
        "chroot".into(),
        "--socket-dir".into(),
        base.display().to_string(),
        "--share".into(),
        format!("x={}", a.display()),
        "--share".into(),
        format!("y={}", b.display()),
    ];
    let out = Ferry::new(args).output();
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("--sandbox namespace"), "{}", out.stderr);
}

/// The same requests answered by a pool of worker threads
/// (`--thread-pool-size`), which return buffers from other threads.
#[test]
fn ferry_fs_with_a_thread_pool_answers_every_common_request() {
    let share = tempdir("pool");
    let mut server = Backend::ferry(&share, "namespace", &["--xattr", "--thread-pool-size", "4"]);
    let mut client = server.connect();
    round_trip(&mut client, &share);
    for _ in 0..2000 {
        client.getattr(ROOT).unwrap();
    }
    server.assert_alive();
}

/// `ferry fs FLAGS... --shared-dir /tmp --socket-path ...`, which must be
/// refused before serving; returns what it said.
fn refused(flags: &[&str]) -> String {
    let mut args = vec!["fs"];
    args.extend_from_slice(flags);
    args.extend([
        "--shared-dir",
        "/tmp",
        "--socket-path",
        "/tmp/ferry-fsproto-refused.sock",
    ]);
    let out = Ferry::new(args).output();
    assert_ne!(out.code, Some(0), "{flags:?} was accepted");
    out.stderr
}

/// A field of /proc/PID/status, e.g. "Seccomp:" or "CapEff:".
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// virtiofsd's flags do what they do there: `--seccomp` installs a filter
/// (kill by default) that the whole round trip runs under, `none` installs
/// none; `--no-readdirplus` withholds READDIRPLUS in the INIT reply;
/// `--socket` is the old name of `--socket-path`; `--version` names the
/// virtiofsd release whose options ferry covers, as Lima reads it.
#[test]
fn virtiofsd_flags_have_their_effect() {
    let share = tempdir("flags");
    let mut server = Backend::ferry(&share, "namespace", &["--xattr"]);
    let (mut client, init) = FuseClient::connect(&server.socket).unwrap();
    assert_eq!(
        status_field(server.process.child.id(), "Seccomp:"),
        "2",
        "no seccomp filter by default"
    );
    assert_ne!(init.flags & 0x2000, 0, "READDIRPLUS not granted by default");
    // virtiofsd's default capabilities, nothing more.
    let eff = status_field(server.process.child.id(), "CapEff:");
    let want: u64 = [0u32, 1, 3, 4, 6, 7, 27, 31].iter().map(|b| 1u64 << b).sum();
    assert_eq!(u64::from_str_radix(&eff, 16).unwrap(), want, "CapEff {eff}");
    round_trip(&mut client, &share);
    server.assert_alive();
    drop(client);

    // --modcaps=-chown: the server can no longer give files away.
    let share = tempdir("flags-caps");
    let mut server = Backend::ferry(&share, "none", &["--modcaps=-chown:+sys_admin"]);
    let mut client = server.connect();
    let (made, _) = client.create(ROOT, b"f", libc::O_RDWR, 0o644).unwrap();
    let chown = SetattrIn {
        valid: ferry_driver::fuse::FATTR_UID,
        uid: 4321,
        ..Default::default()
    };
    assert_eq!(errno(client.setattr(made.nodeid, &chown)), libc::EPERM);
    let eff = u64::from_str_radix(&status_field(server.process.child.id(), "CapEff:"), 16).unwrap();
    assert_eq!(
        (eff & 1, eff & (1 << 21)),
        (0, 1 << 21),
        "CapEff {eff:x}: chown dropped, sys_admin added"
    );
    drop(client);
    for (flag, value) in [
        ("--xattrmap", ":nope:all:::"),
        ("--migration-mode", "find-paths"),
        ("--modcaps", "+nosuchcap"),
    ] {
        let said = refused(&[flag, value]);
        assert!(
            said.contains(flag.trim_end_matches("mode").trim_end_matches('-')),
            "{flag}: {said}"
        );
    }

    let share = tempdir("flags-none");
    let server = Backend::ferry(&share, "none", &["--seccomp", "none", "--no-readdirplus"]);
    let (_client, init) = FuseClient::connect(&server.socket).unwrap();
    assert_eq!(
        status_field(server.process.child.id(), "Seccomp:"),
        "0",
        "--seccomp none installed a filter"
    );
    assert_eq!(init.flags & 0x6000, 0, "--no-readdirplus still granted READDIRPLUS");

    assert!(refused(&["--posix-acl=sometimes"]).contains("--posix-acl"));
    let acl = tempdir("flags-acl");
    let mut server = Backend::ferry(&acl, "none", &["--posix-acl=auto"]);
    // Keep the connection: the back end, like virtiofsd, ends with its
    // front end, so a dropped client would race the liveness check.
    let mut client = server.connect();
    std::fs::write(acl.join("a"), b"acl").unwrap();
    assert_eq!(client.lookup(ROOT, b"a").unwrap().attr.size, 3);
    server.assert_alive();
    drop(client);
    let said = refused(&["--seccomp", "maybe"]);
    assert!(said.contains("--seccomp \"maybe\""), "{said}");

    let share = tempdir("flags-old");
    let socket = share.with_extension("old.sock");
    let _ = std::fs::remove_file(&socket);
    let args = [
        "fs".to_string(),
        format!("--socket={}", socket.display()),
        "--shared-dir".into(),
        share.display().to_string(),
        "--sandbox=none".into(),
    ];
    let mut server = Backend::wait(Ferry::new(args).spawn(), socket);
    let _ = server.connect();

    let out = Ferry::new(["fs", "--version"]).output();
    let text = &out.stdout;
    assert_eq!(out.code, Some(0));
    assert!(text.starts_with("virtiofsd 1.14.0 (ferry "), "{text}");
}

/// Owner translation, as Lima passes it (`--translate-uid map:GUEST:HOST:1`)
/// and as `--uid-map` describes it: files the guest creates and chowns land
/// with the mapped host owners, the guest sees its own ids back, a
/// forbidden id is refused, and unmapped host owners show as 65534 under
/// `--uid-map`.
#[test]
fn translated_owners_both_ways() {
    use ferry_driver::fuse::{FATTR_GID, FATTR_UID};
    let share = tempdir("ids");
    // Files are created as the caller (mapped): let anyone create here.
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut server = Backend::ferry(
        &share,
        "namespace",
        &[
            "--translate-uid",
            "map:1000:2000:10",
            "--translate-uid",
            "forbid-guest:666:1",
            "--translate-gid",
            "map:1000:3000:10",
        ],
    );
    let mut client = server.connect();
    client.uid = 1001;
    client.gid = 1002;
    let (made, _) = client.create(ROOT, b"mine.txt", libc::O_RDWR, 0o644).unwrap();
    let meta = std::fs::metadata(share.join("mine.txt")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (2001, 3002),
        "host owners of a guest-created file"
    );
    assert_eq!(
        (made.attr.uid, made.attr.gid),
        (1001, 1002),
        "the guest sees its own ids"
    );
    let dir = client.mkdir(ROOT, b"d", 0o755).unwrap();
    assert_eq!(std::fs::metadata(share.join("d")).unwrap().uid(), 2001);
    assert_eq!(dir.attr.uid, 1001);
    // chown to another guest id in the range.
    client.uid = 0;
    client.gid = 0;
    let set = SetattrIn {
        valid: FATTR_UID | FATTR_GID,
        uid: 1005,
        gid: 1009,
        ..Default::default()
    };
    let attr = client.setattr(made.nodeid, &set).unwrap();
    assert_eq!((attr.uid, attr.gid), (1005, 1009));
    let meta = std::fs::metadata(share.join("mine.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (2005, 3009));
    // Host files keep showing the guest's view; other ids pass through.
    std::fs::write(share.join("host.txt"), b"x").unwrap();
    std::os::unix::fs::chown(share.join("host.txt"), Some(2003), Some(77)).unwrap();
    let e = client.lookup(ROOT, b"host.txt").unwrap();
    assert_eq!((e.attr.uid, e.attr.gid), (1003, 77));
    // The forbidden id: neither created as nor chowned to.
    let forbid = SetattrIn {
        valid: FATTR_UID,
        uid: 666,
        ..Default::default()
    };
    assert_eq!(errno(client.setattr(made.nodeid, &forbid)), libc::EPERM);
    client.uid = 666;
    assert_eq!(
        errno(client.create(ROOT, b"evil.txt", libc::O_RDWR, 0o644)),
        libc::EPERM
    );
    assert!(!share.join("evil.txt").exists());
    server.assert_alive();
    drop(client);

    // --uid-map: only the mapped range exists for the guest.
    let share = tempdir("idmap");
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(share.join("other.txt"), b"x").unwrap();
    std::os::unix::fs::chown(share.join("other.txt"), Some(4242), Some(4242)).unwrap();
    let mut server = Backend::ferry(
        &share,
        "none",
        &["--uid-map", ":0:100000:65536:", "--gid-map", ":0:100000:65536:"],
    );
    let mut client = server.connect();
    let (made, _) = client.create(ROOT, b"root-made.txt", libc::O_RDWR, 0o644).unwrap();
    let meta = std::fs::metadata(share.join("root-made.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100_000, 100_000));
    assert_eq!((made.attr.uid, made.attr.gid), (0, 0));
    let e = client.lookup(ROOT, b"other.txt").unwrap();
    assert_eq!((e.attr.uid, e.attr.gid), (65534, 65534), "unmapped host owner");
    let outside = SetattrIn {
        valid: FATTR_UID,
        uid: 70000,
        ..Default::default()
    };
    assert_eq!(errno(client.setattr(made.nodeid, &outside)), libc::EPERM);

    // Bad rules are refused by name.
    for (flag, value) in [
        ("--translate-uid", "swap:1:1:1"),
        ("--uid-map", "0:1"),
        ("--translate-gid", "map:1:1"),
    ] {
        let said = refused(&[flag, value]);
        assert!(said.contains(flag), "{flag} {value}: {said}");
    }
}

/// A share with far more files than the server may hold descriptors for:
/// 200,000 files looked up (and kept: no FORGET, as a guest walking the
/// tree with a big dentry cache does) by a server whose RLIMIT_NOFILE is
/// 4096. With `--inode-file-handles=mandatory` every lookup succeeds;
/// without file handles the lookups past the limit fail with EMFILE (a
/// clear error, not a hang or a crash) and the server keeps serving.
#[test]
fn file_handles_let_a_share_outgrow_the_descriptor_limit() {
    const FILES: usize = 200_000;
    let share = tempdir("many");
    for i in 0..FILES {
        std::fs::File::create(share.join(format!("f{i}"))).unwrap();
    }
    let start = |handles: &str, sandbox: &str, tag: &str| {
        let socket = share.with_extension(format!("{tag}.sock"));
        let _ = std::fs::remove_file(&socket);
        let args = [
            "--nofile=4096:4096".to_string(),
            env!("CARGO_BIN_EXE_ferry").into(),
            "fs".into(),
            "--socket-path".into(),
            socket.display().to_string(),
            "--shared-dir".into(),
            share.display().to_string(),
            "--sandbox".into(),
            sandbox.into(),
            format!("--inode-file-handles={handles}"),
        ];
        Backend::wait(Ferry::with_binary(Path::new("/usr/bin/prlimit"), args).spawn(), socket)
    };
    // virtiofsd's default sandbox (a mount namespace, pivoted into the
    // share) for the whole tree; chroot past the descriptor limit.
    for (sandbox, files) in [("namespace", FILES), ("chroot", 6000)] {
        let mut server = start("mandatory", sandbox, &format!("fh-{sandbox}"));
        let mut client = server.connect();
        for i in 0..files {
            if let Err(e) = client.lookup(ROOT, format!("f{i}").as_bytes()) {
                panic!("lookup {i} of {files} with file handles, --sandbox {sandbox}: {e}");
            }
        }
        // Opened through its handle (open_by_handle_at), not only named.
        let e = client.lookup(ROOT, b"f5999").unwrap();
        let fh = client
            .open(e.nodeid, libc::O_RDONLY)
            .unwrap_or_else(|e| panic!("open through a file handle, --sandbox {sandbox}: {e}"));
        assert_eq!(client.read(e.nodeid, fh, 0, 16).unwrap(), b"");
        server.assert_alive();
    }

    let mut server = start("never", "chroot", "fd");
    let mut client = server.connect();
    let mut failed_at = None;
    for i in 0..FILES {
        if let Err(e) = client.lookup(ROOT, format!("f{i}").as_bytes()) {
            assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "lookup {i}: {e}");
            failed_at = Some(i);
            break;
        }
    }
    let at = failed_at.expect("4096 descriptors held 200,000 inodes?");
    assert!(at > 3000 && at < 4096, "the first EMFILE came at lookup {at}");
    server.assert_alive();
    // Still serving: a request that needs no new descriptor.
    assert!(client.getattr(ROOT).is_ok());
}

/// `virtiofsd --syslog` (Kata passes it): the log goes to syslog under the
/// ident "virtiofsd", not to stderr. Where this machine has no syslog, the
/// test listens on /dev/log itself for the duration.
#[test]
fn syslog_takes_the_log_when_asked() {
    let share = tempdir("syslog");
    let dir = share.with_extension("bin");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let virtiofsd = dir.join("virtiofsd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferry"), &virtiofsd).unwrap();
    let dev_log = Path::new("/dev/log");
    let listener = if dev_log.exists() {
        None
    } else {
        let l = std::os::unix::net::UnixDatagram::bind(dev_log).unwrap();
        l.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Some(l)
    };
    let socket = share.with_extension("sock");
    let _ = std::fs::remove_file(&socket);
    let args = [
        "--syslog".to_string(),
        "--socket-path".into(),
        socket.display().to_string(),
        "--shared-dir".into(),
        share.display().to_string(),
        "--sandbox=none".into(),
    ];
    let mut server = Backend::wait(Ferry::with_binary(&virtiofsd, args).spawn(), socket);
    let mut seen = String::new();
    if let Some(l) = &listener {
        let mut buf = [0u8; 4096];
        while !seen.contains("waiting for the vhost-user front end") {
            match l.recv(&mut buf) {
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) => {
                    eprintln!("syslog read: {e}");
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(dev_log);
    }
    let stderr = server.stderr();
    assert!(
        !stderr.contains("waiting for the vhost-user front end"),
        "logged to stderr: {stderr}"
    );
    if listener.is_some() {
        assert!(
            seen.contains("virtiofsd[") && seen.contains("waiting for the vhost-user front end"),
            "syslog got: {seen}"
        );
    }
    // As `ferry fs`, --syslog is refused with the reason.
    assert!(refused(&["--syslog"]).contains("--syslog"));
}

/// `--announce-submounts` (virtiofsd's default): a directory that is a
/// mount point on the host comes back flagged FUSE_ATTR_SUBMOUNT, a plain
/// one does not, and `--no-announce-submounts` turns it off.
#[test]
fn mount_points_are_announced_as_submounts() {
    let share = tempdir("submounts");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::create_dir_all(share.join("plain")).unwrap();
    let sub = share.join("sub");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs for the test");
    let check = |sandbox: &str, extra: &[&str]| {
        let mut server = Backend::ferry(&share, sandbox, extra);
        let (mut client, init) = FuseClient::connect(&server.socket).unwrap();
        let mut flags = |name: &[u8]| client.lookup(ROOT, name).unwrap().attr.flags;
        let got = (init.flags & 0x800_0000 != 0, flags(b"sub") & 1, flags(b"plain") & 1);
        server.assert_alive();
        got
    };
    let on = check("none", &[]);
    let in_namespace = check("namespace", &[]);
    let off = check("none", &["--no-announce-submounts"]);
    let _ = Command::new("umount").arg(&sub).status();
    assert_eq!(on, (true, 1, 0), "default: SUBMOUNTS granted, sub flagged, plain not");
    assert_eq!(in_namespace, (true, 1, 0), "the same inside the namespace sandbox");
    assert_eq!(off, (false, 0, 0), "--no-announce-submounts");
}

/// `--tag` (virtiofsd 1.14): the tag is advertised in the device's
/// configuration space (VHOST_USER_PROTOCOL_F_CONFIG), NUL-padded to 36
/// bytes, followed by the number of request queues; without `--tag` the
/// feature is not offered (QEMU 7.1-8.0 would crash on it, as with
/// virtiofsd).
#[test]
fn the_tag_is_in_the_configuration_space() {
    use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
    use vhost::vhost_user::VhostUserFrontend;
    let share = tempdir("tag");
    let mut server = Backend::ferry(&share, "none", &["--tag", "mytag"]);
    let mut client = server.connect();
    let frontend = client.device().frontend();
    let (_, config) = frontend
        .get_config(0, 40, VhostUserConfigFlags::WRITABLE, &[0u8; 40])
        .unwrap();
    assert_eq!(&config[..5], b"mytag");
    assert!(config[5..36].iter().all(|b| *b == 0));
    assert_eq!(u32::from_le_bytes(config[36..40].try_into().unwrap()), 1);
    drop(client);

    let share = tempdir("notag");
    let server = Backend::ferry(&share, "none", &[]);
    let mut frontend = vhost::vhost_user::Frontend::connect(&server.socket, 2).unwrap();
    vhost::VhostBackend::set_owner(&frontend).unwrap();
    let features = vhost::VhostBackend::get_features(&frontend).unwrap();
    vhost::VhostBackend::set_features(&frontend, features).unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    assert!(
        !proto.contains(VhostUserProtocolFeatures::CONFIG),
        "CONFIG offered without --tag"
    );
}

/// An xattr of `path` as the host sees it.
fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// `--xattrmap` as virtiofsd: with `:map::user.virtiofs.:` every guest
/// xattr lives under `user.virtiofs.` on the host (so an unprivileged or
/// SELinux host keeps its own), host attributes without the prefix are
/// hidden from the guest, the stored names cannot be reached directly,
/// and a remapped `security.capability` is dropped on chown as the kernel
/// would drop the real one.
#[test]
fn xattrmap_renames_and_hides() {
    let share = tempdir("xattrmap");
    std::fs::write(share.join("f"), b"x").unwrap();
    let f = share.join("f");
    let host_set = |name: &str, value: &[u8]| {
        let p = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid strings and a value buffer of its length.
        let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        assert_eq!(rc, 0, "setting {name} on the host");
    };
    host_set("user.hosts.own", b"h");
    let mut server = Backend::ferry(&share, "namespace", &["--xattrmap=:map::user.virtiofs.:"]);
    let mut c = server.connect();
    let e = c.lookup(ROOT, b"f").unwrap();

    c.setxattr(e.nodeid, b"trusted.overlay.opaque", b"y").unwrap();
    assert_eq!(
        host_xattr(&f, "user.virtiofs.trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert_eq!(
        host_xattr(&f, "trusted.overlay.opaque"),
        None,
        "not stored under the guest's name"
    );
    assert_eq!(c.getxattr(e.nodeid, b"trusted.overlay.opaque", 64).unwrap(), b"y");

    c.setxattr(e.nodeid, b"security.capability", b"cap").unwrap();
    let list = c.listxattr(e.nodeid, 4096).unwrap();
    let mut names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    names.sort();
    assert_eq!(
        names,
        [&b"security.capability"[..], b"trusted.overlay.opaque"],
        "host's own hidden"
    );
    let count = c.listxattr(e.nodeid, 0).unwrap();
    assert_eq!(
        u32::from_le_bytes(count[..4].try_into().unwrap()) as usize,
        list.len(),
        "size query matches"
    );
    let err = c.listxattr(e.nodeid, 3).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ERANGE));

    // The guest's own "user.virtiofs.*" is prefixed too (its own
    // namespace), so it cannot reach the stored names directly.
    let err = c
        .getxattr(e.nodeid, b"user.virtiofs.trusted.overlay.opaque", 64)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODATA), "stored names reached directly");

    // chown: the remapped capability goes, as the kernel drops the real one.
    let chown = SetattrIn {
        valid: ferry_driver::fuse::FATTR_UID,
        uid: 0,
        ..Default::default()
    };
    c.setattr(e.nodeid, &chown).unwrap();
    assert_eq!(host_xattr(&f, "user.virtiofs.security.capability"), None);
    assert!(
        host_xattr(&f, "user.virtiofs.trusted.overlay.opaque").is_some(),
        "other xattrs stay"
    );

    c.removexattr(e.nodeid, b"trusted.overlay.opaque").unwrap();
    assert_eq!(host_xattr(&f, "user.virtiofs.trusted.overlay.opaque"), None);
    server.assert_alive();
    drop(c);
    drop(server);

    let said = refused(&["--xattrmap=:nope:all:::"]);
    assert!(said.contains("type \"nope\""), "{said}");
}

/// `--allow-mmap`: FUSE_DIRECT_IO_ALLOW_MMAP (bit 36: bit 4 of INIT's
/// flags2) is granted to a guest that offers it, so files opened for
/// direct I/O (`--cache never`) can still be mapped shared by a Linux
/// 6.6+ guest; not without the flag, and not to a guest that did not ask.
#[test]
fn allow_mmap_is_negotiated() {
    const ALLOW_MMAP2: u32 = 1 << 4;
    const INIT_EXT: u32 = 1 << 30;
    let share = tempdir("allow-mmap");
    let mut server = Backend::ferry(&share, "none", &["--cache=never", "--allow-mmap"]);
    let (mut c, init) = FuseClient::connect_offering(&server.socket, ALLOW_MMAP2).unwrap();
    assert_ne!(init.flags2 & ALLOW_MMAP2, 0, "granted with --allow-mmap");
    assert_ne!(init.flags & INIT_EXT, 0, "flags2 announced");
    assert!(c.getattr(ROOT).is_ok(), "the session works after the patched INIT");
    server.assert_alive();
    drop(c);
    drop(server);

    let mut server = Backend::ferry(&share, "none", &["--cache=never"]);
    let (_c, init) = FuseClient::connect_offering(&server.socket, ALLOW_MMAP2).unwrap();
    assert_eq!(init.flags2 & ALLOW_MMAP2, 0, "not granted without --allow-mmap");
    server.assert_alive();
}

/// `--security-label`: a guest granted FUSE_SECURITY_CTX sends the new
/// file's context with CREATE (in the request's extension area, as Linux
/// 6.x does); ferry stores it as that xattr on the host file. With
/// `=always` a guest that does not offer the feature is refused at INIT.
#[test]
fn security_label_is_stored_on_create() {
    const SECURITY_CTX2: u32 = 1;
    let share = tempdir("seclabel");
    let mut server = Backend::ferry(&share, "namespace", &["--security-label"]);
    let (mut c, init) = FuseClient::connect_offering(&server.socket, SECURITY_CTX2).unwrap();
    assert_ne!(init.flags2 & SECURITY_CTX2, 0, "FUSE_SECURITY_CTX granted");

    // CREATE "labelled" with one security context in the extension area.
    let (label_name, label) = (b"security.selinux", b"system_u:object_r:container_file_t:s0\0");
    let mut ctx = [
        &(label.len() as u32).to_le_bytes()[..],
        &[0; 4],
        label_name,
        b"\0",
        label,
    ]
    .concat();
    while (8 + ctx.len()) % 8 != 0 {
        ctx.push(0);
    }
    let ext = [&((8 + ctx.len()) as u32).to_le_bytes()[..], &1u32.to_le_bytes(), &ctx].concat();
    let create_in = [
        &(libc::O_CREAT as u32 | libc::O_WRONLY as u32).to_le_bytes()[..],
        &0o644u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
    ]
    .concat();
    let body = [&create_in[..], b"labelled\0", &ext].concat();
    let header = [
        &((40 + body.len()) as u32).to_le_bytes()[..],
        &35u32.to_le_bytes(), // CREATE
        &9999u64.to_le_bytes(),
        &ROOT.to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &1u32.to_le_bytes(),
        &((ext.len() / 8) as u16).to_le_bytes(), // total_extlen
        &0u16.to_le_bytes(),
    ]
    .concat();
    let (error, _) = c.raw(&[header, body].concat(), 4096).unwrap();
    assert_eq!(error, 0, "CREATE with a security context");
    assert!(share.join("labelled").exists());
    assert_eq!(
        host_xattr(&share.join("labelled"), "security.selinux"),
        Some(label.to_vec())
    );
    // A creation without a context leaves no label.
    c.mkdir(ROOT, b"plain", 0o755).unwrap();
    assert_eq!(host_xattr(&share.join("plain"), "security.selinux"), None);
    server.assert_alive();
    drop(c);

    // always: a guest without FUSE_SECURITY_CTX cannot mount.
    let mut server = Backend::ferry(&share, "namespace", &["--security-label=always"]);
    let refused = FuseClient::connect(&server.socket);
    assert!(
        refused.is_err(),
        "INIT accepted without FUSE_SECURITY_CTX under --security-label=always"
    );
    server.assert_alive();
}

/// O_NOATIME from the guest is dropped by default, as virtiofsd drops it
/// (reading then updates the host file's access time under relatime), and
/// kept with `--preserve-noatime` (the access time stays).
#[test]
fn noatime_dropped_unless_preserved() {
    let share = tempdir("noatime");
    let f = share.join("f");
    let old_atime = |f: &Path| {
        std::fs::write(f, b"data").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        assert_eq!(std::fs::metadata(f).unwrap().atime(), 946_684_800);
    };
    for (flags, preserved) in [(&[][..], false), (&["--preserve-noatime"][..], true)] {
        old_atime(&f);
        let mut server = Backend::ferry(&share, "none", flags);
        let mut c = server.connect();
        let e = c.lookup(ROOT, b"f").unwrap();
        let open_flags = libc::O_RDONLY | libc::O_NOATIME;
        let fh = c.open(e.nodeid, open_flags).unwrap();
        assert_eq!(c.read_flagged(e.nodeid, fh, 0, 4, open_flags).unwrap(), b"data");
        let atime = std::fs::metadata(&f).unwrap().atime();
        assert_eq!(atime == 946_684_800, preserved, "{flags:?}: host atime {atime}");
        server.assert_alive();
    }
}
