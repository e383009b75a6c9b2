//! `ferry run --detach`, `ferry ps`, `ferry logs`, `ferry stop` with real
//! guests under QEMU.

mod common;

use std::time::{Duration, Instant};

use common::{require_tool, Ferry};

fn state_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-state-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ferry(state: &std::path::Path, args: &[&str]) -> common::Output {
    Ferry::new(args).env("FERRY_STATE_DIR", state).output()
}

/// Polls `ferry logs` until it contains `want`.
fn wait_logs(state: &std::path::Path, name: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = ferry(state, &["logs", name]);
        if out.stdout.contains(want) {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} in the logs of {name}: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn detached_vm_is_listed_logged_and_stopped() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let state = state_dir("detach");
    let out = ferry(
        &state,
        &[
            "run",
            "-d",
            "--no-net",
            "--name",
            "bg",
            "--",
            "sh",
            "-c",
            "echo started in bg; sleep 600",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "bg");

    let ps = ferry(&state, &["ps"]);
    let row = ps
        .stdout
        .lines()
        .find(|l| l.starts_with("bg "))
        .unwrap_or_else(|| panic!("{}", ps.stdout));
    assert!(row.contains("running") && row.contains("sleep 600"), "{row}");
    wait_logs(&state, "bg", "started in bg");

    // The name is taken while it runs.
    let again = ferry(&state, &["run", "-d", "--no-net", "--name", "bg", "--", "true"]);
    assert_ne!(again.code, Some(0));
    assert!(
        again.stderr.contains("taken") && again.stderr.contains("ferry stop bg"),
        "{}",
        again.stderr
    );

    let pid: u32 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    let stop = ferry(&state, &["stop", "bg"]);
    assert_eq!(stop.code, Some(0), "{}", stop.stderr);
    assert!(!common::process_alive(pid), "the supervisor {pid} is still running");
    assert!(!ferry(&state, &["ps", "-q"]).stdout.contains("bg"));
    let gone = ferry(&state, &["logs", "bg"]);
    assert!(gone.stderr.contains("no VM named"), "{}", gone.stderr);
}

#[test]
fn detached_vm_that_finishes_keeps_its_exit_code_and_output() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let state = state_dir("finish");
    let out = ferry(
        &state,
        &[
            "run",
            "-d",
            "--no-net",
            "--name",
            "quick",
            "--",
            "sh",
            "-c",
            "echo done here; exit 3",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ps = ferry(&state, &["ps"]);
        if ps.stdout.contains("exited (3)") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", ps.stdout);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(wait_logs(&state, "quick", "done here").contains("done here"));
    // An exited VM's name can be used again.
    let reuse = ferry(&state, &["run", "--no-net", "--name", "quick", "--", "true"]);
    assert_eq!(reuse.code, Some(0), "{}", reuse.stderr);
    assert_eq!(
        ferry(&state, &["stop", "quick"]).code,
        Some(1),
        "the attached run removed its record"
    );
}

#[test]
fn bad_names_and_unknown_vms_are_explained() {
    let state = state_dir("names");
    let bad = ferry(&state, &["run", "--name", "no_underscores", "--", "true"]);
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("letters, digits"), "{}", bad.stderr);
    let stop = ferry(&state, &["stop", "nosuchvm"]);
    assert_ne!(stop.code, Some(0));
    assert!(stop.stderr.contains("no VM named \"nosuchvm\""), "{}", stop.stderr);
}
