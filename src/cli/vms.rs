//! `ferry ps`, `ferry stop`, `ferry logs`: the VMs `ferry run` supervises
//! on this host (see [`super::registry`]).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;

use super::registry::{self, process_alive};

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only print names.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for a VM to power off before killing it.
    #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = 10)]
    pub time: u64,
    /// The VMs to stop.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output until the VM stops.
    #[arg(short, long)]
    pub follow: bool,
    #[arg(value_name = "NAME")]
    pub name: String,
}

fn age(started: &str) -> String {
    let Ok(t) = started.parse::<u64>() else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(t);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// `s` on one line, cut to `max` characters.
fn shorten(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max - 3).collect();
    format!("{cut}...")
}

pub fn ps(args: PsArgs) -> anyhow::Result<ExitCode> {
    let vms = registry::list();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for vm in &vms {
            writeln!(out, "{}", vm.name)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<16} {:<12} {:>8} {:>6}  {:<20} {:<24} COMMAND",
        "NAME", "STATUS", "PID", "UP", "PORTS", "VOLUMES"
    )?;
    for vm in &vms {
        // Explicit -p forwards, then --publish-auto's (as the network
        // recorded them while the guest listens).
        let auto = std::fs::read_to_string(vm.dir.join("auto_ports")).unwrap_or_default();
        let ports = match (vm.get("ports"), auto.trim()) {
            (p, "") => p.to_string(),
            ("", a) => format!("auto: {a}"),
            (p, a) => format!("{p}, auto: {a}"),
        };
        writeln!(
            out,
            "{:<16} {:<12} {:>8} {:>6}  {:<20} {:<24} {}",
            vm.name,
            vm.status(),
            vm.get("pid"),
            age(vm.get("started")),
            ports,
            vm.get("volumes"),
            shorten(vm.get("command"), 48),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory arguments; a stale pid yields ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for name in &args.names {
        let vm = match registry::find(name) {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!("ferry stop: {e}");
                failed = true;
                continue;
            }
        };
        if vm.running() {
            // QEMU exits on SIGTERM; the supervisor then sees the guest go
            // and cleans up its network and shares.
            let target = vm.pid("qemu_pid").or(vm.pid("pid"));
            if let Some(pid) = target {
                signal(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(args.time);
            let supervisor = vm.pid("pid").unwrap_or(0);
            while process_alive(supervisor) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if process_alive(supervisor) {
                eprintln!("ferry stop: {name} did not stop within {}s; killing it", args.time);
                if let Some(q) = vm.pid("qemu_pid") {
                    signal(q, libc::SIGKILL);
                }
                signal(supervisor, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&vm.dir);
        println!("{name}");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let vm = registry::find(&args.name)?;
    let path = vm.console_log();
    let mut file = std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("{}: no log yet ({e})", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        let still = registry::find(&args.name).is_ok_and(|v| v.running());
        if !still {
            // The supervisor writes its last lines before it marks the VM
            // exited: read to the end once more.
            std::io::copy(&mut file, &mut out)?;
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
