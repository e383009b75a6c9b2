//! `ferry run`: boot a guest, run a command, return its exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use ferry_vmm::{accel, image, AccelChoice, GuestCmdline, QemuConfig};

use super::guest::{self, ImageOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AccelArg {
    /// KVM if it can really boot the guest here (probed once, cached), else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HypervisorArg {
    Auto,
    /// ferry's built-in VMM on KVM.
    Kvm,
    Qemu,
}

const EXAMPLES: &str = "\
Examples:
  ferry run -- uname -r
  ferry run --name web -e GREETING=hi -w /tmp -- sh -c 'echo $GREETING from $(hostname)'
  ferry run --memory 1024 --cpus 2 --timeout 60 -- sh -c 'nproc; free -m'
  ferry run -v .:/src -w /src -- ls
  ferry run -it -- sh                  (an interactive shell with a terminal)
  ferry run --rootfs ./alpine-root -- cat /etc/os-release
  ferry run --hypervisor kvm -- uname -a   (ferry's own VMM; needs a KVM that boots Linux)

The exit code is the guest command's; 125 means the guest could not start it
(bad configuration or a failed mount), 127 that the command was not found.";

/// What `--platform` / `--binfmt` add to the image.
struct PlatformPlan {
    image: Vec<super::platform::ImageFile>,
    /// A foreign busybox is in the image for the workload's tools.
    busybox: bool,
}

fn add_platform(args: &RunArgs) -> anyhow::Result<PlatformPlan> {
    let mut archs: Vec<String> = args
        .binfmt
        .iter()
        .filter(|a| !a.is_empty())
        .map(|a| super::platform::arch_name(a))
        .collect::<anyhow::Result<_>>()?;
    let arch = match &args.platform {
        Some(p) => super::platform::arch_of(p)?,
        None => None,
    };
    if let Some(a) = arch {
        archs.push(a.to_string());
    }
    archs.sort();
    archs.dedup();
    archs.retain(|a| a != "x86_64");
    let mut image = Vec::new();
    let mut rules = Vec::new();
    for a in &archs {
        let (rule, files) = super::platform::binfmt_files(a)?;
        rules.push((a.clone(), rule));
        image.extend(files);
    }
    let mut busybox = false;
    if let (Some(a), None) = (arch, &args.rootfs) {
        let cached = match &args.platform_busybox {
            Some(p) => Some(p.clone()),
            None => {
                super::platform::cached_busybox(a, &ferry_vmm::image::cache_dir(), &mut |l| eprintln!("ferry: {l}"))
            }
        };
        let path = cached.as_ref().with_context(|| {
            format!(
                "--platform {} without --rootfs needs a static busybox for {a}, and apt could not fetch busybox-static for it: \
                 enable the architecture (`dpkg --add-architecture arm64 && apt-get update`) and run again, \
                 or give --platform-busybox PATH (e.g. from `apt-get download busybox-static:arm64 && dpkg-deb -x busybox-static_*_arm64.deb DIR`: DIR/bin/busybox)",
                args.platform.as_deref().unwrap_or_default()
            )
        })?;
        let data = std::fs::read(path).with_context(|| format!("--platform-busybox {}", path.display()))?;
        let rule = &rules.iter().find(|(r, _)| r == a).expect("the platform's rule").1;
        anyhow::ensure!(
            rule.matches(&data),
            "--platform-busybox {}: not an {a} executable",
            path.display()
        );
        image.push((super::platform::GUEST_BUSYBOX.to_string(), data, 0o755));
        busybox = true;
    }
    Ok(PlatformPlan { image, busybox })
}

/// The vsock port guest-init sends listener snapshots to (guest-init's
/// `listeners::PORT`).
const PUBLISH_AUTO_PORT: u32 = 1025;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct RunArgs {
    #[command(flatten)]
    pub image: ImageOptions,
    /// The VM's name: its host name, its DNS name (NAME.test) and how
    /// `ferry ps/logs/stop` refer to it [default: ferry-PID].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Start the VM in the background, print its name and return; see its
    /// output with `ferry logs NAME`, end it with `ferry stop NAME`.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open and send it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal (a pty in the guest): ^C, ^Z and window
    /// size changes reach it.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub memory: u32,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// Which VMM runs the guest: kvm is ferry's built-in VMM (devices
    /// in-process, one vCPU); qemu is QEMU; auto uses the built-in VMM when
    /// KVM can really boot the guest here (probed once, cached) and the run
    /// needs nothing only QEMU has, else QEMU.
    #[arg(long, value_enum, env = "FERRY_HYPERVISOR", default_value = "auto")]
    pub hypervisor: HypervisorArg,
    /// How QEMU runs guest code.
    #[arg(long, value_enum, env = "FERRY_ACCEL", default_value = "auto")]
    pub accel: AccelArg,
    /// Set an environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory of the command inside the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Extra raw kernel command-line words (repeatable), e.g. `ferry.net=dhcp`.
    #[arg(long, value_name = "WORDS")]
    pub append: Vec<String>,
    /// Share a host directory into the guest over virtio-fs (repeatable):
    /// HOST_DIR:GUEST_PATH[:ro].
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volume: Vec<super::share::Volume>,
    /// Keep owners as they are on the shares. By default, when ferry runs
    /// as a user other than root, whatever the guest creates belongs to that
    /// user on the host and that user's files show as the guest root's.
    #[arg(long)]
    pub keep_share_owners: bool,
    /// Run the command in this directory (e.g. an unpacked container
    /// image) as its root file system: shared read-only over virtio-fs,
    /// with a writable overlay in guest memory; -v shares are mounted
    /// inside it.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Kill the guest if it runs longer than this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Forward a host port to the guest, Docker style (repeatable):
    /// [HOST_IP:]HOST_PORT[-END]:GUEST_PORT[-END][/tcp|/udp].
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Who the guest sees as the source of forwarded connections: client
    /// (the client itself; one on the host's loopback as the host alias)
    /// or gateway.
    #[arg(long = "forward-source", value_name = "client|gateway", default_value = "client")]
    pub forward_source: String,
    /// Run the workload as another architecture's binaries through qemu-user
    /// (from the host's qemu-user-static): linux/arm64, linux/arm/v7,
    /// linux/riscv64, linux/ppc64le, linux/s390x, linux/386... With --rootfs
    /// the tree is that architecture's; without, --platform-busybox gives a
    /// static busybox of it for the guest's tools.
    #[arg(long, value_name = "linux/ARCH")]
    pub platform: Option<String>,
    /// A static busybox built for --platform (e.g. Debian's busybox-static
    /// for arm64, unpacked with dpkg-deb -x), for runs without --rootfs.
    #[arg(long = "platform-busybox", env = "FERRY_PLATFORM_BUSYBOX", value_name = "PATH")]
    pub platform_busybox: Option<PathBuf>,
    /// Register binfmt_misc handlers for these architectures (comma
    /// separated: aarch64,arm,riscv64,... or platform names), so their
    /// binaries run anywhere in the guest (shares, chroots, containers).
    #[arg(long, value_name = "ARCH,...", value_delimiter = ',')]
    pub binfmt: Vec<String>,
    /// Forward every port the guest listens on (TCP) or binds (UDP), while
    /// it does, from the host's 127.0.0.1 and ::1 (same port number); a host
    /// port that is taken is left alone and reported. `ferry ps` lists them.
    #[arg(long = "publish-auto")]
    pub publish_auto: bool,
    /// Only ports in this range for --publish-auto.
    #[arg(
        long = "publish-auto-range",
        value_name = "LO-HI",
        default_value = "1-65535",
        requires = "publish_auto"
    )]
    pub publish_auto_range: String,
    /// Capture the guest's network traffic into FILE (pcap format).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Attach to a running `ferry net` instead of starting a network for this
    /// VM (several VMs then share it): unix://PATH for its --listen-qemu
    /// socket, vhost-user://PATH for a --listen-vhost-user socket,
    /// unixgram://PATH for a --listen-vfkit socket (QEMU's dgram netdev).
    #[arg(long, value_name = "unix://PATH|vhost-user://PATH|unixgram://PATH")]
    pub network: Option<String>,
    /// Run the guest without a network.
    #[arg(long)]
    pub no_net: bool,
    #[command(flatten)]
    pub dns: super::net::DnsArgs,
    /// QEMU binary.
    #[arg(long, env = "FERRY_QEMU", value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// The command to run in the guest [default: /bin/sh].
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A MAC for this VM: QEMU's locally administered 52:54:00 prefix and
/// three bytes from the process id and clock, so VMs sharing one network
/// (`--network`) do not collide.
fn guest_mac() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let x = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (x >> 16) & 0xff,
        (x >> 8) & 0xff,
        x & 0xff
    )
}

/// A private directory for this run's sockets, removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn create() -> anyhow::Result<RunDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("ferry-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Set in the background child of `ferry run --detach`.
const DETACHED_ENV: &str = "FERRY_DETACHED";

/// `--detach`: runs this same command line again in a new session, with
/// no terminal, and returns once its guest is booting (or its error).
fn detach(name: &str, name_given: bool) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let state = super::registry::state_dir();
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let err_path = state.join(format!(".{name}.start-err"));
    let err = std::fs::File::create(&err_path)?;
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // The child must use the name chosen here (the default has our pid).
    if let Some(at) = argv.iter().position(|a| a == "run").filter(|_| !name_given) {
        argv.insert(at + 1, "--name".into());
        argv.insert(at + 2, name.into());
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().context("finding ferry's own binary")?);
    cmd.args(&argv)
        .env(DETACHED_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory; it
    // leaves the child without a controlling terminal, so closing this one
    // does not hang it up.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the background VM")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(status) = child.try_wait()? {
            let msg = std::fs::read_to_string(&err_path).unwrap_or_default();
            let _ = std::fs::remove_file(&err_path);
            eprint!("{msg}");
            anyhow::bail!("the VM {name} did not start ({status})");
        }
        let vm = super::registry::find(name)
            .ok()
            .filter(|vm| vm.get("pid") == child.id().to_string() && vm.status() == "running");
        if let Some(vm) = vm {
            // The supervisor keeps writing its diagnostics there.
            let _ = std::fs::rename(&err_path, vm.dir.join("supervisor.log"));
            println!("{name}");
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the VM {name} did not start within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `-i`/`-t`: waits for the guest agent, runs the command through it with
/// this terminal, then powers the guest off; returns the command's code.
fn run_attached(
    mut vm: ferry_vmm::VmProcess,
    console: std::fs::File,
    args: &RunArgs,
    reg: &super::registry::Registration,
) -> anyhow::Result<i32> {
    let qemu_pid = vm.pid();
    let timeout = args.timeout.map(Duration::from_secs);
    let guest = std::thread::spawn(move || {
        vm.wait_guest(
            timeout,
            &mut |l| {
                if l.starts_with("ferry-init:") {
                    eprintln!("{l}");
                    let _ = writeln!(&console, "{l}");
                }
            },
            &mut |l| {
                let _ = writeln!(&console, "{l}");
                if l.starts_with("ferry-init:") {
                    eprintln!("{l}");
                }
            },
        )
    });
    let deadline = std::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(300));
    let sock = loop {
        if guest.is_finished() {
            let exit = guest
                .join()
                .map_err(|_| anyhow::anyhow!("the guest monitor panicked"))?;
            let exit = exit.context("running the guest")?;
            anyhow::bail!("the guest stopped (code {}) before its agent answered", exit.code);
        }
        if let Ok(sock) = super::control::dial(&reg.dir, super::control::AGENT_PORT) {
            break sock;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the guest agent did not answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    let shell = ["/bin/sh".to_string()];
    let session = super::control::Session {
        command: if args.command.is_empty() { &shell } else { &args.command },
        env: &[],
        workdir: args.workdir.as_deref(),
        user: None,
        interactive: args.interactive || args.tty,
        tty: args.tty,
    };
    let code = super::control::run_session(sock, &session);
    if let Ok(pid) = libc::pid_t::try_from(qemu_pid) {
        // SAFETY: kill(2) on our own QEMU child; no memory involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let _ = guest.join();
    code
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("ferry-{}", std::process::id()));
    super::registry::check_name(&name)?;
    let detached = std::env::var_os(DETACHED_ENV).is_some();
    anyhow::ensure!(
        !(args.detach && (args.interactive || args.tty)),
        "-d runs in the background, -i/-t need this terminal: use one or the other (and `ferry exec -it NAME` later)"
    );
    if args.detach && !detached {
        // Fail fast, in the foreground, on a name that is taken.
        if super::registry::find(&name).is_ok_and(|vm| vm.running()) {
            anyhow::bail!("the name {name:?} is taken by a running VM: pick another --name, or `ferry stop {name}`");
        }
        return detach(&name, args.name.is_some());
    }
    anyhow::ensure!(
        !args.no_net || args.publish.is_empty(),
        "-p needs the guest's network; drop --no-net"
    );
    anyhow::ensure!(
        !args.publish_auto || (!args.no_net && args.network.is_none()),
        "--publish-auto needs this run's own network: drop --no-net / --network"
    );
    for kv in &args.env {
        anyhow::ensure!(
            kv.split_once('=').is_some_and(|(k, _)| !k.is_empty()),
            "-e {kv:?}: expected KEY=VALUE"
        );
    }
    if let Some(dir) = &args.workdir {
        anyhow::ensure!(
            dir.starts_with('/'),
            "-w {dir:?}: the guest working directory must be absolute"
        );
    }
    let mut reg = super::registry::Registration::claim(&name, detached)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    reg.set("started", &now.to_string())?;
    let shown = if args.command.is_empty() {
        "/bin/sh".to_string()
    } else {
        args.command.join(" ")
    };
    reg.set("command", &shown)?;
    reg.set("ports", &args.publish.join(","))?;
    let vols: Vec<String> = args
        .volume
        .iter()
        .map(|v| format!("{}:{}", v.host.display(), v.guest))
        .collect();
    reg.set("volumes", &vols.join(","))?;
    let console = std::fs::File::create(reg.console_log())
        .with_context(|| format!("creating {}", reg.console_log().display()))?;
    let platform = add_platform(&args)?;
    let image = if platform.image.is_empty() {
        guest::prepare(&args.image)?
    } else {
        let mut opts = args.image.clone();
        opts.extra = platform.image.clone();
        opts.modules.push("binfmt_misc".into());
        guest::prepare(&opts)?
    };
    let builtin = use_builtin(&args, &image)?;

    // -i/-t: the guest idles and the command runs through the agent,
    // which gives it this terminal's stdin (and a pty).
    let interactive = args.interactive || args.tty;
    let mut line = GuestCmdline::new();
    if interactive {
        line.command(&["sleep".into(), "2147483647".into()]);
    } else {
        line.command(&args.command);
    }
    line.key("hostname", &name);
    for kv in &args.env {
        line.key("env", kv);
    }
    if let Some(dir) = &args.workdir {
        line.key("cwd", dir);
    }
    for word in &args.append {
        line.raw(word);
    }
    let shared = match &args.network {
        Some(n) => {
            let (attach, path) = if let Some(p) = n.strip_prefix("vhost-user://") {
                (NetAttach::VhostUser, p)
            } else if let Some(p) = n.strip_prefix("unixgram://") {
                (NetAttach::Datagram, p)
            } else {
                (NetAttach::Stream, n.strip_prefix("unix://").unwrap_or(""))
            };
            anyhow::ensure!(
                !path.is_empty(),
                "--network {n:?}: expected unix://PATH, vhost-user://PATH or unixgram://PATH"
            );
            anyhow::ensure!(
                args.publish.is_empty(),
                "-p with --network: add forwards on the shared network (its -p or API)"
            );
            anyhow::ensure!(
                std::path::Path::new(path).exists(),
                "--network {n}: no such socket; start `ferry net --listen-qemu {n}` (or --listen-vhost-user) first"
            );
            Some((attach, PathBuf::from(path)))
        }
        None => None,
    };
    // This run's sockets (network, QEMU's datagram end, shares).
    let run_dir = RunDir::create()?;
    let net = if args.no_net {
        None
    } else if let Some((attach, sock)) = shared {
        line.key("net", "dhcp");
        Some((attach, sock))
    } else {
        let sock = run_dir.0.join("net.sock");
        let mut net = super::net::NetArgs::for_vm(sock.clone(), args.dns.clone());
        net.publish = args.publish.clone();
        net.forward_source = match args.forward_source.as_str() {
            "gateway" => ferry_net::config::ForwardSource::Gateway,
            "client" => ferry_net::config::ForwardSource::Client,
            other => anyhow::bail!("--forward-source {other:?}: expected client or gateway"),
        };
        net.pcap = args.pcap.clone();
        if args.publish_auto {
            // guest-init reports its listeners over vsock: the guest's
            // connections to host port P arrive on `vsock.sock_P`.
            net.publish_auto_socket = Some(reg.dir.join(format!("vsock.sock_{PUBLISH_AUTO_PORT}")));
            net.publish_auto_record = Some(reg.dir.join("auto_ports"));
            net.publish_auto_range = super::net::parse_port_range(&args.publish_auto_range)
                .map_err(|e| anyhow::anyhow!("--publish-auto-range {e}"))?;
            line.key("publish_auto", "1");
        }
        super::net::spawn_background(net)?;
        line.key("net", "dhcp");
        Some((NetAttach::Stream, sock))
    };
    // Shares: one `ferry fs` serving them all, mounted by guest-init.
    let mut volumes = args.volume.clone();
    if let Some(dir) = &args.rootfs {
        anyhow::ensure!(
            dir.join("bin").exists() || dir.join("usr/bin").exists(),
            "--rootfs {}: not a root file system (no bin or usr/bin in it)",
            dir.display()
        );
        // SAFETY: geteuid(2) takes no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        // The guest mounts it read-only either way; as root the host
        // enforces it too.
        volumes.push(super::share::Volume {
            host: dir.clone(),
            guest: "/".into(),
            read_only: root,
        });
    }
    let share_specs = super::share::share_specs(&volumes)?;
    for ((tag, _), vol) in share_specs.iter().zip(&args.volume) {
        let ro = if vol.read_only { ":ro" } else { "" };
        line.key("mount", &format!("{tag}:{}{ro}", vol.guest));
    }
    if args.rootfs.is_some() {
        let (tag, _) = share_specs.last().expect("the rootfs share");
        line.key("rootfs", tag);
    }
    if platform.busybox {
        line.key("platform", "1");
    }
    if builtin {
        // No ACPI in the built-in machine: the guest ends by resetting.
        line.key("halt", "reboot");
        let cmdline = line.build()?;
        let vm = builtin_vm(
            &args,
            &image,
            &cmdline,
            net.as_ref().map(|(_, s)| s.as_path()),
            &share_specs,
            &reg,
        )?;
        return supervise(vm, console, &args, &mut reg, interactive)
            .context("in ferry's VMM (if this host's KVM cannot boot Linux, use --hypervisor qemu)");
    }
    let shares = if volumes.is_empty() {
        None
    } else {
        let mut server = super::share::ShareServer::start(&volumes, &run_dir.0, !args.keep_share_owners)?;
        server.relay_changes(&reg.dir);
        Some(server)
    };
    // The control channel: vhost-user-vsock, with host programs (`ferry
    // exec`) reaching guest ports through the VM's hybrid vsock socket.
    let vsock = super::control::start_vsock(&run_dir.0, &reg.dir)?;
    let mut qemu = QemuConfig::new(image.kernel.path.clone(), image.initrd.clone(), line.build()?);
    qemu.binary = args.qemu.clone();
    qemu.memory_mib = args.memory;
    qemu.cpus = args.cpus;

    let choice = match args.accel {
        AccelArg::Auto => AccelChoice::Auto,
        AccelArg::Kvm => AccelChoice::Kvm,
        AccelArg::Tcg => AccelChoice::Tcg,
    };
    let cache_file = accel::probe_cache_file(&image::cache_dir(), &image.kernel.path, &qemu.binary);
    let mut probe = qemu.clone();
    probe.cmdline = GuestCmdline::new().command(&["true".into()]).build()?;
    qemu.accel = accel::resolve(choice, &cache_file, || accel::probe_kvm(&probe), &mut |l| {
        eprintln!("ferry: {l}")
    });
    // The NIC is added after the probe, which must not take the network's
    // connection (a vhost-user socket serves one guest).
    if let Some((attach, sock)) = &net {
        qemu.device_args
            .extend(attach.qemu_args(sock, &run_dir.0, &guest_mac(), qemu.accel));
    }
    if let Some(share) = &shares {
        qemu.device_args.extend(share.qemu_args(qemu.accel));
    }
    qemu.device_args.extend(vsock.qemu_args(qemu.accel));

    tracing::debug!(kernel = %image.kernel.release, accel = qemu.accel.as_str(), "booting guest");
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let speed = if qemu.accel == ferry_vmm::Accel::Tcg {
            " (software emulation: a few seconds)"
        } else {
            ""
        };
        eprintln!(
            "ferry: booting kernel {} under {}{speed}...",
            image.kernel.release,
            qemu.accel.as_str()
        );
    }
    let vm = qemu.spawn()?;
    let code = supervise(vm, console, &args, &mut reg, interactive);
    drop(shares);
    drop(vsock);
    code
}

/// Whether this run goes to the built-in VMM: asked for, or `auto` with
/// KVM able to boot the guest and nothing only QEMU has in the run.
fn use_builtin(args: &RunArgs, image: &ferry_vmm::GuestImage) -> anyhow::Result<bool> {
    // What the built-in VMM cannot do at all, and what it does with less
    // than QEMU (auto then prefers QEMU).
    let unsupported = if args.cpus != 1 {
        Some("--cpus above 1 (the built-in VMM runs one vCPU)")
    } else if args.network.as_deref().is_some_and(|n| !n.starts_with("unix://")) {
        Some("--network vhost-user:// or unixgram:// (the built-in VMM attaches to unix:// stream sockets)")
    } else {
        None
    };
    let lesser = (!args.volume.is_empty()).then_some("-v (the built-in VMM shares files without inotify passthrough)");
    match args.hypervisor {
        HypervisorArg::Qemu => Ok(false),
        HypervisorArg::Kvm => {
            if let Some(why) = unsupported {
                anyhow::bail!("--hypervisor kvm cannot do {why}; use --hypervisor qemu");
            }
            anyhow::ensure!(
                cfg!(all(target_os = "linux", target_arch = "x86_64")),
                "--hypervisor kvm needs x86_64 Linux; use --hypervisor qemu"
            );
            #[cfg(target_os = "linux")]
            ferry_vmm::hypervisor::kvm::KvmHypervisor::open().map_err(|e| anyhow::anyhow!("--hypervisor kvm: {e}"))?;
            Ok(true)
        }
        HypervisorArg::Auto => {
            if let Some(why) = unsupported.or(lesser) {
                tracing::debug!("using QEMU: the run asks for {why}");
                return Ok(false);
            }
            let cache = accel::probe_cache_file(&image::cache_dir(), &image.kernel.path, Path::new("ferry-vmm"));
            let probe = || probe_builtin(image, args.memory).is_ok();
            Ok(accel::kvm_boots(
                &cache,
                probe,
                &mut |l| eprintln!("ferry: {l}"),
                "QEMU",
            ))
        }
    }
}

/// Boots a guest that runs `true` in the built-in VMM; the error says why
/// it did not come back (`ferry guest check-kvm` prints it).
pub(super) fn probe_builtin(image: &ferry_vmm::GuestImage, memory: u32) -> Result<(), String> {
    let mut line = GuestCmdline::new();
    line.command(&["true".into()]).key("halt", "reboot");
    let cmdline = line.build().map_err(|e| e.to_string())?;
    let mut cmd = vmm_command(memory, image, &cmdline).map_err(|e| e.to_string())?;
    cmd.args(["--timeout", &accel::PROBE_TIMEOUT.as_secs().to_string()]);
    accel::probe_builtin(cmd)
}

/// `ferry vmm` for this image and memory.
fn vmm_command(memory: u32, image: &ferry_vmm::GuestImage, cmdline: &str) -> anyhow::Result<std::process::Command> {
    let mut cmd = std::process::Command::new(std::env::current_exe().context("finding ferry's own binary")?);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.args(["--log-level", "warn"]);
    }
    cmd.arg("vmm")
        .arg("--kernel")
        .arg(&image.kernel.path)
        .arg("--initrd")
        .arg(&image.initrd)
        .args(["--memory", &memory.to_string(), "--cmdline", cmdline]);
    Ok(cmd)
}

/// Starts the built-in VMM with this run's devices: the NIC on the run's
/// network, the shares, and the vsock control channel at the VM's
/// registry socket.
fn builtin_vm(
    args: &RunArgs,
    image: &ferry_vmm::GuestImage,
    cmdline: &str,
    net: Option<&Path>,
    shares: &[(String, String)],
    reg: &super::registry::Registration,
) -> anyhow::Result<ferry_vmm::VmProcess> {
    let mut cmd = vmm_command(args.memory, image, cmdline)?;
    if let Some(sock) = net {
        cmd.arg("--net")
            .arg(format!("unix://{}", sock.display()))
            .args(["--mac", &guest_mac()]);
    }
    for (_, spec) in shares {
        cmd.arg("--share").arg(spec);
    }
    cmd.args(["--sandbox", super::share::sandbox_mode()]);
    cmd.arg("--vsock").arg(reg.dir.join("vsock.sock"));
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "ferry: booting kernel {} in ferry's VMM on KVM...",
            image.kernel.release
        );
    }
    Ok(ferry_vmm::VmProcess::start(
        cmd,
        "ferry vmm is this same binary; see the message above",
    )?)
}

/// Waits for the guest (or, with -i/-t, runs the command through its
/// agent) and records and returns the exit code.
fn supervise(
    mut vm: ferry_vmm::VmProcess,
    console: std::fs::File,
    args: &RunArgs,
    reg: &mut super::registry::Registration,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    reg.set("qemu_pid", &vm.pid().to_string())?;
    if interactive {
        let code = run_attached(vm, console, args, reg)?;
        reg.set("exit", &code.to_string())?;
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
    }
    let stdout = std::io::stdout();
    let exit = vm
        .wait_guest(
            args.timeout.map(Duration::from_secs),
            &mut |l| {
                // guest-init's own diagnostics matter to the user; kernel noise does not.
                if l.starts_with("ferry-init:") {
                    eprintln!("{l}");
                    let _ = writeln!(&console, "{l}");
                } else {
                    tracing::debug!(target: "guest", "{l}");
                }
            },
            &mut |l| {
                let _ = writeln!(&console, "{l}");
                if l.starts_with("ferry-init:") {
                    eprintln!("{l}");
                    return;
                }
                let mut out = stdout.lock();
                let _ = writeln!(out, "{l}");
                let _ = out.flush();
            },
        )
        .context("running the guest")?;
    if let Some(kind) = &exit.error {
        eprintln!("ferry: the guest could not run the command ({kind} failed; see the message above)");
    }
    reg.set("exit", &exit.code.to_string())?;
    Ok(ExitCode::from(u8::try_from(exit.code).unwrap_or(255)))
}

/// How QEMU's NIC reaches ferry's network.
#[derive(Clone, Copy, Debug)]
enum NetAttach {
    /// `-netdev stream`: frames with a length prefix over a unix socket.
    Stream,
    /// `-netdev vhost-user`: ferry works the guest's virtqueues itself.
    VhostUser,
    /// `-netdev dgram`: one frame per unix datagram, as vfkit sends them.
    Datagram,
}

impl NetAttach {
    /// QEMU's NIC arguments; `run_dir` holds QEMU's own datagram end.
    fn qemu_args(self, sock: &Path, run_dir: &Path, mac: &str, accel: ferry_vmm::Accel) -> Vec<String> {
        let netdev = match self {
            NetAttach::Stream => vec![
                "-netdev".to_string(),
                format!("stream,id=net0,server=off,addr.type=unix,addr.path={}", sock.display()),
            ],
            NetAttach::Datagram => {
                // QEMU's own end needs an address for ferry's replies.
                let local = run_dir.join("qemu-dgram.sock");
                vec![
                    "-netdev".to_string(),
                    format!(
                        "dgram,id=net0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                        local.display(),
                        sock.display()
                    ),
                ]
            }
            NetAttach::VhostUser => vec![
                "-chardev".to_string(),
                format!("socket,id=net0chr,path={}", sock.display()),
                "-netdev".to_string(),
                "vhost-user,id=net0,chardev=net0chr".to_string(),
            ],
        };
        let vectors = match self {
            NetAttach::VhostUser => accel.vhost_pci_options(),
            NetAttach::Stream | NetAttach::Datagram => "",
        };
        let device = [
            "-device".to_string(),
            format!("virtio-net-pci,netdev=net0,mac={mac}{vectors}"),
        ];
        netdev.into_iter().chain(device).collect()
    }
}
