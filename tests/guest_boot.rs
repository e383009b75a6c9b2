//! Boots a real Debian-kernel guest under QEMU (TCG here, KVM where it can
//! boot) through `ferry run` and checks what the guest did.

mod common;

use std::time::{Duration, Instant};

use common::{children_of, process_alive, require_tool, Ferry};

fn host_kernel_release() -> String {
    let out = Ferry::new(["guest", "kernel"]).output();
    assert_eq!(out.code, Some(0), "ferry guest kernel failed: {}", out.stderr);
    out.stdout
        .trim()
        .split('\t')
        .nth(1)
        .expect("release column")
        .to_string()
}

#[test]
fn guest_reports_the_kernel_it_booted() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let release = host_kernel_release();
    let out = Ferry::new(["run", "--", "uname", "-r"]).output();
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    // Only the workload's output reaches stdout: no kernel or init noise.
    assert_eq!(out.stdout, format!("{release}\n"), "stderr:\n{}", out.stderr);
}

#[test]
fn exit_codes_propagate_and_env_reaches_the_command() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let out = Ferry::new([
        "run",
        "--name",
        "exitprobe",
        "-e",
        "FOO=a b,c",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo \"$FOO|$(pwd)|$(hostname)\"; exit 7",
    ])
    .output();
    assert_eq!(out.stdout, "a b,c|/tmp|exitprobe\n", "stderr:\n{}", out.stderr);
    assert_eq!(out.code, Some(7), "stderr:\n{}", out.stderr);

    let out = Ferry::new(["run", "--", "/no/such/program"]).output();
    assert_eq!(out.code, Some(127), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("/no/such/program"), "stderr:\n{}", out.stderr);
}

#[test]
fn malformed_guest_config_fails_cleanly() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let start = Instant::now();
    let out = Ferry::new(["run", "--append", "ferry.mount=nopath", "--", "true"])
        .timeout(Duration::from_secs(90))
        .output();
    assert_eq!(out.code, Some(125), "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("configuration error: ferry.mount"),
        "stderr:\n{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "the command must not have run: {}", out.stdout);
    assert!(start.elapsed() < Duration::from_secs(90));
}

#[test]
fn qemu_does_not_outlive_a_killed_ferry() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let mut running = Ferry::new(["run", "--", "sleep", "600"]).spawn();
    let ferry_pid = running.child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let qemu = loop {
        if let Some(pid) = children_of(ferry_pid).into_iter().next() {
            break pid;
        }
        assert!(Instant::now() < deadline, "ferry never started QEMU");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Kill only ferry itself (not its group): QEMU must follow on its own.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(ferry_pid as i32, libc::SIGKILL) };
    let _ = running.child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(qemu) {
        assert!(
            Instant::now() < deadline,
            "QEMU (pid {qemu}) survived ferry being killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn timeout_kills_a_hung_guest() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let out = Ferry::new(["run", "--timeout", "20", "--", "sleep", "600"]).output();
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("did not finish within"), "stderr:\n{}", out.stderr);
}
