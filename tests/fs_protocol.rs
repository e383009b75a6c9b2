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
                panic!("the back end exited ({status}) before listening on {}", socket.display());
            }
            assert!(Instant::now() < deadline, "no socket at {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Backend { process, socket }
    }

    fn connect(&self) -> FuseClient {
        FuseClient::connect(&self.socket).expect("connecting the FUSE driver").0
    }

    /// Still running (a panic or a crash would have ended it).
    fn assert_alive(&mut self) {
        assert!(
            self.process.child.try_wait().unwrap().is_none(),
            "the back end died: {:?}",
            self.stderr()
        );
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
    let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok()?;
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
    assert_eq!(client.getattr(hello.nodeid).unwrap().ino, std::fs::metadata(share.join("hello.txt")).unwrap().ino());
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
    assert_eq!(std::fs::metadata(share.join("new.bin")).unwrap().permissions().mode() & 0o777, 0o640);

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
    assert_eq!(std::fs::read_link(share.join("sym")).unwrap(), Path::new("dir/moved.bin"));

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
    let server = Backend::ferry(&share, "none", &["--xattr"]);
    let mut client = server.connect();
    round_trip(&mut client, &share);
}

/// The same requests against virtiofsd: the driver speaks the protocol as
/// the reference back end expects, so what it finds in ferry is ferry's.
#[test]
fn driver_round_trip_also_passes_against_virtiofsd() {
    let share = tempdir("vfsd");
    let Some(server) = Backend::virtiofsd(&share) else {
        eprintln!("SKIP: virtiofsd is not installed (cargo install virtiofsd)");
        return;
    };
    let mut client = server.connect();
    round_trip(&mut client, &share);
}
