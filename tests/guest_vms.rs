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

/// ferry with this test's state directory and guest image.
fn ferry_cmd(state: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args)
        .env("FERRY_STATE_DIR", state)
        .env("FERRY_GUEST_INIT", common::guest_init());
    cmd
}

/// Runs `cmd` with `input` on its stdin and collects its output.
fn with_stdin(mut cmd: std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(input)?;
            c.wait_with_output()
        })
        .unwrap()
}

/// Starts `cmd` on a new pty of `rows` x `cols`; returns the master side.
fn on_pty(mut cmd: std::process::Command, rows: u16, cols: u16) -> (std::fs::File, std::process::Child) {
    use std::os::fd::FromRawFd;
    let (mut master_fd, mut slave_fd) = (-1, -1);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; `ws` is a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master_fd,
            &mut slave_fd,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master_fd),
            std::fs::File::from_raw_fd(slave_fd),
        )
    };
    let child = cmd
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    (master, child)
}

/// Reads from `master` until `want` shows up (or 60 s pass).
fn read_until(master: &mut std::fs::File, seen: &mut String, want: &str) {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        assert!(Instant::now() < deadline, "no {want:?} on the terminal; saw {seen:?}");
        match master.read(&mut buf) {
            Ok(0) => std::thread::sleep(Duration::from_millis(20)),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("reading the terminal: {e}; saw {seen:?}"),
        }
    }
}

#[test]
fn exec_runs_commands_with_pipes_and_a_terminal() {
    use std::io::Write;
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let state = state_dir("exec");
    let out = ferry(
        &state,
        &[
            "run",
            "-d",
            "--no-net",
            "--name",
            "ex",
            "-e",
            "FROM_RUN=yes",
            "--",
            "sleep",
            "600",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // Pipes: stdout, stderr, exit code, env from run and exec, workdir.
    let deadline = Instant::now() + Duration::from_secs(90);
    let out = loop {
        let out = ferry(
            &state,
            &[
                "exec",
                "-e",
                "X=1",
                "-w",
                "/tmp",
                "ex",
                "--",
                "sh",
                "-c",
                "echo $FROM_RUN $X $(pwd); echo oops >&2; exit 5",
            ],
        );
        // The agent starts once the guest has booted.
        if out.code == Some(5) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(5), "yes 1 /tmp\n", "oops\n")
    );
    let user = ferry(
        &state,
        &[
            "exec",
            "-u",
            "1234:99",
            "ex",
            "--",
            "sh",
            "-c",
            "echo $(id -u):$(id -g)",
        ],
    );
    assert_eq!(user.stdout, "1234:99\n", "{}", user.stderr);
    // Without a terminal, a signal to `ferry exec` reaches the guest process.
    let mut sleeper = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "exec",
            "ex",
            "--",
            "sh",
            "-c",
            "trap 'kill $!; echo got-term; exit 3' TERM; sleep 600 & wait",
        ])
        .env("FERRY_STATE_DIR", &state)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(sleeper.id() as i32, libc::SIGTERM) };
    let status = sleeper.wait().unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(sleeper.stdout.as_mut().unwrap(), &mut said).unwrap();
    assert_eq!((status.code(), said.as_str()), (Some(3), "got-term\n"));
    let missing = ferry(&state, &["exec", "ex", "--", "/no/such/program"]);
    assert_eq!(missing.code, Some(127), "{}", missing.stderr);
    assert!(missing.stderr.contains("/no/such/program"), "{}", missing.stderr);

    // stdin with -i.
    let out = with_stdin(
        ferry_cmd(&state, &["exec", "-i", "ex", "--", "sh", "-c", "tr a-z A-Z; echo end"]),
        b"quiet words\n",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "QUIET WORDS\nend\n");

    // A terminal: -it with a pty driven from here: the guest sees a tty of
    // our size, ^C interrupts the foreground job, the exit code comes back.
    let (mut master, mut term) = on_pty(ferry_cmd(&state, &["exec", "-it", "ex", "--", "sh"]), 33, 101);
    let mut seen = String::new();
    read_until(&mut master, &mut seen, "# ");
    master.write_all(b"tty; stty size\r").unwrap();
    read_until(&mut master, &mut seen, "33 101");
    assert!(seen.contains("/dev/pts/"), "{seen}");
    master.write_all(b"sleep 600\r").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    master.write_all(b"\x03").unwrap();
    master.write_all(b"echo status $?\r").unwrap();
    read_until(&mut master, &mut seen, "status 130");
    master.write_all(b"exit 9\r").unwrap();
    let status = term.wait().unwrap();
    assert_eq!(status.code(), Some(9), "{seen}");

    // A client that goes away mid-command does not take the VM with it.
    let mut quitter = Ferry::new(["exec", "ex", "--", "sleep", "600"])
        .env("FERRY_STATE_DIR", &state)
        .spawn();
    std::thread::sleep(Duration::from_secs(1));
    let _ = quitter.child.kill();
    let _ = quitter.child.wait();
    let after = ferry(&state, &["exec", "ex", "--", "echo", "still here"]);
    assert_eq!(after.stdout, "still here\n", "{}", after.stderr);
    assert_eq!(ferry(&state, &["stop", "ex"]).code, Some(0));
}

#[test]
fn run_with_a_terminal_and_stdin() {
    use std::io::Write;
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let state = state_dir("run-it");
    // -i: stdin reaches the command; -e and -w apply; the exit code returns.
    let out = with_stdin(
        ferry_cmd(
            &state,
            &[
                "run",
                "-i",
                "--no-net",
                "-e",
                "K=v",
                "-w",
                "/tmp",
                "--",
                "sh",
                "-c",
                "cat; echo $K $(pwd); exit 4",
            ],
        ),
        b"piped in\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "piped in\nv /tmp\n", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(4));

    // -it from a pty: a shell with our terminal size, its exit code back.
    let (mut master, mut term) = on_pty(ferry_cmd(&state, &["run", "-it", "--no-net"]), 40, 120);
    let mut seen = String::new();
    read_until(&mut master, &mut seen, "# ");
    master.write_all(b"stty size; exit 6\r").unwrap();
    read_until(&mut master, &mut seen, "40 120");
    assert_eq!(term.wait().unwrap().code(), Some(6), "{seen}");
}

/// The product in one go: `ferry run -d` with a name, a share and a
/// forward; the guest serves a file from the share, the host fetches it
/// through the forward, the guest resolves its own name and the host's.
#[test]
fn a_named_vm_serves_a_shared_file_through_a_forward() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let state = state_dir("site");
    let site = std::env::temp_dir().join(format!("ferry-site-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&site);
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "from the host's directory\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("{port}:80");
    let vol = format!("{}:/www:ro", site.display());
    let script = "nslookup site.test | grep -q 'Address: 10' && echo name-ok; \
                  nslookup host.container.internal | grep -q 'Address: 10.0.2.254' && echo host-ok; \
                  exec httpd -f -p 80 -h /www";
    let out = ferry(
        &state,
        &[
            "run", "-d", "--name", "site", "-p", &publish, "-v", &vol, "--", "sh", "-c", script,
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let deadline = Instant::now() + Duration::from_secs(90);
    let body = loop {
        let got = std::process::Command::new("curl")
            .args(["-fsS", "--max-time", "2", &format!("http://127.0.0.1:{port}/")])
            .output()
            .unwrap();
        if got.status.success() {
            break String::from_utf8_lossy(&got.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no answer through the forward: {}",
            ferry(&state, &["logs", "site"]).stdout
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(body, "from the host's directory\n");
    let logs = wait_logs(&state, "site", "host-ok");
    assert!(logs.contains("name-ok"), "{logs}");
    assert_eq!(ferry(&state, &["stop", "site"]).code, Some(0));
    std::fs::remove_dir_all(&site).unwrap();
}
