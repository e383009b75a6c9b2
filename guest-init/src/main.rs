//! ferry-guest-init: the guest's PID 1.
//!
//! Mounts the API filesystems, loads the image's modules, applies the
//! configuration from the kernel command line, runs the workload, reaps
//! zombies, forwards SIGTERM/SIGINT/SIGHUP to the workload, prints one
//! machine-readable exit line and powers off. It never hangs on bad input:
//! every failure path ends in `finish`.

mod agent;
mod config;
mod listeners;
mod modules;
mod platform;
mod replay;
mod setup;
mod sys;
mod tool;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use config::Config;

/// Printed right before the workload starts; the host hides console output
/// that comes before it (kernel and init noise).
const START_MARKER: &str = "FERRY_START";
/// Exit status used when the guest could not run the workload at all
/// (the same convention as `docker run`).
const EXIT_SETUP_FAILED: i32 = 125;
/// Exit status when the workload binary cannot be executed.
const EXIT_NOT_RUNNABLE: i32 = 127;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("tool") {
        std::process::exit(tool::run(&args[1..]));
    }
    let code = run();
    finish(code.code, code.error);
}

struct Outcome {
    code: i32,
    error: Option<&'static str>,
}

fn run() -> Outcome {
    sys::signal_boot_timer();
    if let Err(e) = sys::block_signals() {
        eprintln!("ferry-init: blocking signals: {e}");
    }
    setup::mount_api_filesystems();
    setup::install_busybox();

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cfg = match Config::from_cmdline(&cmdline) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("ferry-init: configuration error: {e}");
            return Outcome {
                code: EXIT_SETUP_FAILED,
                error: Some("config"),
            };
        }
    };

    if let Err(e) = sys::sethostname(&cfg.hostname) {
        eprintln!("ferry-init: setting host name {:?}: {e}", cfg.hostname);
    }
    let mut wanted = modules::image_list();
    wanted.extend(cfg.modules.iter().cloned());
    modules::load(&wanted);
    match platform::register() {
        Ok(0) => {}
        Ok(n) => eprintln!("ferry-init: {n} foreign architecture(s) registered with binfmt_misc"),
        Err(e) => {
            eprintln!("ferry-init: {e}");
            return Outcome {
                code: EXIT_SETUP_FAILED,
                error: Some("binfmt"),
            };
        }
    }
    let mut cfg = cfg;
    if cfg.platform {
        if let Err(e) = platform::install_busybox() {
            eprintln!("ferry-init: the platform's busybox: {e}");
            return Outcome {
                code: EXIT_SETUP_FAILED,
                error: Some("platform"),
            };
        }
        cfg.env
            .push(("PATH".into(), format!("{}:{}", platform::BIN, setup::PATH)));
    }

    if let Err(e) = setup::network(&cfg.net) {
        eprintln!("ferry-init: network setup failed: {e}");
        return Outcome {
            code: EXIT_SETUP_FAILED,
            error: Some("network"),
        };
    }
    // --rootfs: the workload (and every `ferry exec`) runs in an overlay
    // of the shared root; the other shares are mounted inside it.
    let root = match &cfg.rootfs {
        None => None,
        Some(tag) => match setup::rootfs(tag) {
            Ok(root) => {
                for m in &mut cfg.mounts {
                    m.path = format!("{root}{}", m.path);
                }
                Some(root)
            }
            Err(e) => {
                eprintln!("ferry-init: {e}");
                return Outcome {
                    code: EXIT_SETUP_FAILED,
                    error: Some("rootfs"),
                };
            }
        },
    };
    if let Err(e) = setup::mounts(&cfg.mounts) {
        eprintln!("ferry-init: {e}");
        return Outcome {
            code: EXIT_SETUP_FAILED,
            error: Some("mount"),
        };
    }
    let reaper = std::sync::Arc::new(agent::Reaper::default());
    agent::start(reaper.clone(), cfg.env.clone(), root.clone());
    if cfg.publish_auto {
        listeners::start();
    }
    let replayer = replay::Replayer::new(&cfg.mounts);
    replayer.listen();
    run_workload(&cfg, root.as_deref(), &reaper, &replayer)
}

fn run_workload(cfg: &Config, root: Option<&str>, reaper: &agent::Reaper, replayer: &replay::Replayer) -> Outcome {
    let argv: Vec<String> = if cfg.argv.is_empty() {
        vec!["/bin/sh".into()]
    } else {
        cfg.argv.clone()
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", setup::PATH)
        .env("HOME", "/root")
        .env("TERM", "linux")
        .envs(cfg.env.iter().map(|(k, v)| (k, v)));
    let cwd = cfg.cwd.as_deref().unwrap_or(if root.is_some() { "/" } else { "" });
    if let Some(root) = root {
        cmd.current_dir(format!("{root}{cwd}"));
        if let Err(e) = sys::chroot_child(&mut cmd, root) {
            eprintln!("ferry-init: entering the root file system: {e}");
        }
    } else if !cwd.is_empty() {
        cmd.current_dir(cwd);
    }
    sys::default_signal_mask(&mut cmd);
    println!("{START_MARKER}");
    let _ = std::io::stdout().flush();
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("ferry-init: cannot run {:?}: {e}", argv[0]);
            return Outcome {
                code: EXIT_NOT_RUNNABLE,
                error: Some("exec"),
            };
        }
    };
    let workload = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
    // We reap with waitpid(-1) ourselves; dropping the handle does not wait.
    drop(child);
    Outcome {
        code: supervise(workload, reaper, replayer),
        error: None,
    }
}

/// Reaps every child, forwards termination signals to the workload, hands
/// the agent's processes' statuses to the agent, replays host changes to
/// the shares, and returns the workload's exit code once it is gone.
fn supervise(workload: libc::pid_t, reaper: &agent::Reaper, replayer: &replay::Replayer) -> i32 {
    loop {
        // The timeout also covers a SIGCHLD that arrived before we waited.
        let sig = sys::wait_signal(Duration::from_secs(1));
        replayer.run_pending();
        if let Some(sig @ (libc::SIGTERM | libc::SIGINT | libc::SIGHUP)) = sig {
            sys::kill(workload, sig);
        }
        while let Some((pid, status)) = sys::reap_one() {
            if pid == workload {
                return sys::exit_code(status);
            }
            reaper.record(pid, sys::exit_code(status));
        }
    }
}

/// Stops what is left, reports the exit status and powers off.
fn finish(code: i32, error: Option<&str>) -> ! {
    sys::kill(-1, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(50));
    sys::kill(-1, libc::SIGKILL);
    while sys::reap_one().is_some() {}
    setup::unmount_shares();
    let _ = std::io::stderr().flush();
    match error {
        Some(kind) => println!("FERRY_EXIT code={code} error={kind}"),
        None => println!("FERRY_EXIT code={code}"),
    }
    let _ = std::io::stdout().flush();
    let e = sys::power_off();
    // Not PID 1 (run by hand in a test) or no privilege: just exit.
    eprintln!("ferry-init: power off failed: {e}");
    std::process::exit(code)
}
