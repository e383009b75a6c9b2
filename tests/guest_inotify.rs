//! inotify passthrough: changes made on the host to a shared directory
//! raise the right inotify events inside a real guest (Debian kernel under
//! QEMU), without the host files being touched by the replay, and the
//! guest's own changes are not echoed back.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{require_tool, Ferry};

fn ferry(state: &Path, args: &[&str]) -> common::Output {
    Ferry::new(args).env("FERRY_STATE_DIR", state).output()
}

fn logs(state: &Path, name: &str) -> String {
    ferry(state, &["logs", name]).stdout
}

/// Waits until the guest's watcher printed `line`; returns how long it took.
fn wait_event(state: &Path, name: &str, line: &str) -> Duration {
    let start = Instant::now();
    loop {
        let text = logs(state, name);
        if text.lines().any(|l| l == line) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {line:?} in the guest; it saw:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mtime(p: &Path) -> (i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

struct Vm {
    state: PathBuf,
    name: &'static str,
}

impl Drop for Vm {
    fn drop(&mut self) {
        ferry(&self.state, &["stop", self.name]);
    }
}

fn boot(tag: &str, name: &'static str, share: &Path) -> Vm {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let state = std::env::temp_dir().join(format!("ferry-state-{tag}-{}", std::process::id()));
    let vol = format!("{}:/mnt/s", share.display());
    let out = ferry(
        &state,
        &[
            "run", "-d", "--no-net", "--name", name, "-v", &vol, "--", "/init", "tool", "inotify", "/mnt/s",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    wait_event(&state, name, "watching /mnt/s");
    Vm { state, name }
}

fn share(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-inotify-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn host_changes_raise_the_right_events_in_the_guest() {
    let dir = share("events");
    std::fs::write(dir.join("existing.txt"), "old\n").unwrap();
    let vm = boot("events", "ino", &dir);
    let (state, name) = (&vm.state, vm.name);

    std::fs::write(dir.join("a.txt"), "hello\n").unwrap();
    let a_mtime = mtime(&dir.join("a.txt"));
    wait_event(state, name, "CREATE a.txt");
    wait_event(state, name, "MODIFY a.txt");
    wait_event(state, name, "CLOSE_WRITE a.txt");
    // A host write right after the create is its own event, not an echo.
    std::fs::write(dir.join("a.txt"), "hello again\n").unwrap();
    let start = Instant::now();
    while logs(state, name).lines().filter(|l| *l == "MODIFY a.txt").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the second write was not seen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("existing.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n"))
        .unwrap();
    let e_mtime = mtime(&dir.join("existing.txt"));
    wait_event(state, name, "MODIFY existing.txt");
    wait_event(state, name, "CLOSE_WRITE existing.txt");
    // The guest reads the new content when the event arrives.
    let cat = ferry(state, &["exec", name, "--", "cat", "/mnt/s/existing.txt"]);
    assert_eq!(cat.stdout, "old\nmore\n");

    std::fs::set_permissions(
        dir.join("existing.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    wait_event(state, name, "ATTRIB existing.txt");

    std::fs::rename(dir.join("a.txt"), dir.join("b.txt")).unwrap();
    wait_event(state, name, "MOVED_FROM a.txt");
    wait_event(state, name, "MOVED_TO b.txt");

    std::fs::create_dir(dir.join("sub")).unwrap();
    wait_event(state, name, "CREATE|ISDIR sub");

    std::fs::remove_file(dir.join("b.txt")).unwrap();
    wait_event(state, name, "DELETE b.txt");

    // The replays changed nothing on the host: contents, modes and times
    // are what the host left.
    assert_eq!(
        std::fs::read_to_string(dir.join("existing.txt")).unwrap(),
        "old\nmore\n"
    );
    assert_eq!(mtime(&dir.join("existing.txt")), e_mtime);
    assert_eq!(
        std::fs::metadata(dir.join("existing.txt")).unwrap().mode() & 0o777,
        0o600
    );
    let _ = a_mtime;

    // The guest's own change is seen once, not echoed back as a host change.
    let out = ferry(state, &["exec", name, "--", "sh", "-c", "echo g > /mnt/s/guest.txt"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    wait_event(state, name, "CLOSE_WRITE guest.txt");
    std::thread::sleep(Duration::from_secs(2));
    let text = logs(state, name);
    assert_eq!(text.lines().filter(|l| *l == "CREATE guest.txt").count(), 1, "{text}");
    assert_eq!(
        text.lines().filter(|l| *l == "CLOSE_WRITE guest.txt").count(),
        1,
        "{text}"
    );
}

#[test]
fn a_burst_of_host_changes_ends_in_the_host_state() {
    let dir = share("burst");
    let vm = boot("burst", "burst", &dir);
    let (state, name) = (&vm.state, vm.name);
    // 300 files created, 100 of them deleted again right away, 50 renamed.
    for i in 0..300 {
        std::fs::write(dir.join(format!("f{i:03}")), format!("{i}")).unwrap();
    }
    for i in 0..100 {
        std::fs::remove_file(dir.join(format!("f{i:03}"))).unwrap();
    }
    for i in 100..150 {
        std::fs::rename(dir.join(format!("f{i:03}")), dir.join(format!("r{i:03}"))).unwrap();
    }
    std::fs::write(dir.join("last"), "end").unwrap();
    wait_event(state, name, "CLOSE_WRITE last");
    let text = logs(state, name);
    // Every file that exists at the end was announced once, as created
    // or moved in; nothing that was born and deleted in the burst was.
    for i in 150..300 {
        let created = format!("CREATE f{i:03}");
        assert_eq!(text.lines().filter(|l| *l == created).count(), 1, "{created}\n{text}");
    }
    // Files born and deleted within one merge window are never replayed;
    // when a burst spans windows, a delete always follows its create.
    let lines: Vec<&str> = text.lines().collect();
    for i in 0..100 {
        if let Some(d) = lines.iter().position(|l| *l == format!("DELETE f{i:03}")) {
            assert!(
                lines[..d].contains(&format!("CREATE f{i:03}").as_str()),
                "f{i:03} deleted in the guest before it was created:\n{text}"
            );
        }
    }
    // The guest's view of the directory is the host's.
    let ls = ferry(state, &["exec", name, "--", "ls", "/mnt/s"]);
    let mut host: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    let guest: Vec<&str> = ls.stdout.lines().collect();
    assert_eq!(guest, host);
}
