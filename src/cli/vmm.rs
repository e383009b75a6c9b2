//! `ferry vmm`: boot a Linux kernel in ferry's own VMM on KVM, with the
//! devices in this process (virtio-net to a ferry network, virtio-fs
//! shares, virtio-vsock), the serial console on stdout. `ferry run
//! --hypervisor kvm` runs this; it also works alone, Firecracker style.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

const EXAMPLES: &str = "\
Examples:
  ferry vmm --kernel /boot/vmlinuz-$(uname -r) --initrd ~/.cache/ferry/initramfs-*.img \\
      --cmdline 'console=ttyS0 ferry.cmd=uname'
  ferry net --listen-qemu unix:///tmp/net.sock &
  ferry vmm --kernel vmlinux --initrd initrd.img --net unix:///tmp/net.sock \\
      --share src=$HOME/src --vsock /tmp/vm.vsock

The guest ends the VM by rebooting (Linux `reboot`, or guest-init when its
command ends): ferry vmm then exits 0. A byte written to I/O port 0x501
ends it with that byte as the exit code. It needs a /dev/kvm that can boot
Linux; `ferry run --hypervisor auto` checks that and otherwise uses QEMU.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct VmmArgs {
    /// The kernel: a vmlinux ELF or a bzImage (x86_64).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// The initramfs to load.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (the machine's own words and the devices'
    /// `virtio_mmio.device=` are appended).
    #[arg(long, value_name = "WORDS", default_value = "console=ttyS0")]
    pub cmdline: String,
    /// Guest memory in MiB (at most 3328).
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub memory: u32,
    /// A virtio-net NIC on this ferry network: its --listen-qemu socket
    /// (`ferry run` passes its own network's).
    #[arg(long, value_name = "unix://PATH")]
    pub net: Option<String>,
    /// The NIC's MAC address.
    #[arg(long, value_name = "MAC", default_value = "52:54:00:12:34:56")]
    pub mac: String,
    /// A virtio-vsock device (guest CID 3) with Firecracker's hybrid host
    /// sockets: host programs connect to PATH and send `CONNECT PORT\n`.
    #[arg(long, value_name = "PATH")]
    pub vsock: Option<PathBuf>,
    /// Share a directory over virtio-fs (repeatable): TAG=DIR[:ro]; the
    /// guest mounts it with `mount -t virtiofs TAG /mnt`.
    #[arg(long, value_name = "TAG=DIR[:ro]")]
    pub share: Vec<String>,
    /// How this process confines itself to the shares once the VM is set
    /// up: namespace (a mount namespace holding only the shares; needed
    /// for :ro), chroot (one share), none.
    #[arg(long, value_name = "MODE", default_value = "namespace")]
    pub sandbox: String,
    /// What a system call outside the VMM's allow-list gets once the VM is
    /// set up: kill (the default), trap (reported by name, then the process
    /// ends), log, errno or none. Capabilities are dropped at the same point
    /// (all of them; with shares, those virtiofsd keeps).
    #[arg(long, value_name = "MODE", default_value = "kill")]
    pub seccomp: String,
    /// Kill the VM after this many seconds (exit code 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--mac {s:?}: expected six hex bytes like 52:54:00:12:34:56"))?;
    <[u8; 6]>::try_from(parts)
        .map_err(|_| anyhow::anyhow!("--mac {s:?}: expected six hex bytes like 52:54:00:12:34:56"))
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn run(args: VmmArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use ferry_vmm::machine::Stop;
    use ferry_vmm::virtio_mmio::VirtioDevice;

    let mac = parse_mac(&args.mac)?;
    let sandbox: ferry_fs::options::SandboxMode = args
        .sandbox
        .parse()
        .map_err(|e| anyhow::anyhow!("--sandbox {}: {e}", args.sandbox))?;
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(net) = &args.net {
        let path = net
            .strip_prefix("unix://")
            .ok_or_else(|| anyhow::anyhow!("--net {net:?}: expected unix://PATH (a ferry net --listen-qemu socket)"))?;
        let link = std::os::unix::net::UnixStream::connect(path)
            .with_context(|| format!("--net {net}: connecting (is `ferry net --listen-qemu {net}` running?)"))?;
        devices.push(Box::new(ferry_vmm::devices::VirtioNet::new(link, mac)?));
    }
    if let Some(path) = &args.vsock {
        let _ = std::fs::remove_file(path);
        let device = ferry_vsock::device::VsockDevice::new(super::control::GUEST_CID, path)
            .with_context(|| format!("--vsock {}: listening", path.display()))?;
        devices.push(Box::new(ferry_vmm::devices::VirtioVsock::new(device)));
    }
    let shares: Vec<(String, PathBuf, bool)> = args
        .share
        .iter()
        .map(|s| super::fs::parse_share(s))
        .collect::<anyhow::Result<_>>()?;
    // The kernel and initrd are opened now and read through their
    // descriptors: preparing the shares' sandbox covers /tmp, where they
    // often are, in this process's mount namespace.
    let open = |what: &str, p: &std::path::Path| {
        std::fs::File::open(p).with_context(|| format!("opening the {what} {}", p.display()))
    };
    let kernel_file = open("kernel", &args.kernel)?;
    let initrd_file = args.initrd.as_deref().map(|p| open("initrd", p)).transpose()?;
    let by_fd = |f: &std::fs::File| PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(f)));
    let seccomp = ferry_confine::seccomp::Mode::parse(&args.seccomp)
        .ok_or_else(|| anyhow::anyhow!("--seccomp {:?}: expected kill, trap, log, errno or none", args.seccomp))?;
    let mut prepared = None;
    if !shares.is_empty() {
        for (_, dir, _) in &shares {
            anyhow::ensure!(dir.is_dir(), "--share: {} is not a directory", dir.display());
        }
        let list: Vec<(&std::path::Path, bool)> = shares.iter().map(|(_, d, ro)| (d.as_path(), *ro)).collect();
        let prepared_shares = ferry_fs::sandbox::prepare_shares(sandbox, &list)?;
        let opts = ferry_fs::options::FsOptions::default();
        for (i, (tag, dir, _)) in shares.iter().enumerate() {
            let fs = ferry_fs::device::FsDevice::new(&prepared_shares.root(i), &opts)
                .with_context(|| format!("opening the shared directory {}", dir.display()))?;
            devices.push(Box::new(ferry_vmm::devices::VirtioFs::new(fs, tag, 1)));
        }
        prepared = Some(prepared_shares);
    }
    // Once the VM and its devices are set up (memory mapped, vCPU made,
    // sockets bound), on the VMM's one thread so every later thread
    // inherits it: the shares' mount view, capabilities, system calls.
    let keep_caps = match &prepared {
        Some(_) => super::fs::kept_caps(None, false)?,
        None => Vec::new(),
    };
    let timeout = args.timeout;
    // Without shares the VMM needs no path at all, unless the guest dials
    // host sockets by path through --vsock (UDS_PATH_PORT).
    let empty_root = prepared.is_none() && args.vsock.is_none();
    let confine = Box::new(move || -> std::io::Result<()> {
        if let Some(p) = &prepared {
            p.confine()?;
        } else if empty_root {
            // Best effort: an unprivileged VMM (a user in the kvm group)
            // cannot make a mount namespace, and keeps the host's view.
            if let Err(e) = ferry_confine::empty_root(&[]) {
                tracing::info!("not confined to an empty root: {e}");
            }
        }
        ferry_confine::drop_caps(&keep_caps)?;
        let mut lists = vec![ferry_vmm::SYSCALLS, ferry_vsock::SYSCALLS];
        lists.extend(ferry_fs::SYSCALLS.iter().copied());
        ferry_confine::seccomp::install(seccomp, &lists)?;
        if let Some(secs) = timeout {
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(secs));
                eprintln!("ferry vmm: the guest ran longer than --timeout {secs}s; killed it");
                std::process::exit(124);
            });
        }
        Ok(())
    }) as Box<dyn FnOnce() -> std::io::Result<()> + Send>;
    let confine = Some(confine);
    let console = Box::new(std::io::LineWriter::new(std::io::stdout()));
    let exit = ferry_vmm::linux::boot_linux(ferry_vmm::linux::LinuxVmConfig {
        kernel: by_fd(&kernel_file),
        initrd: initrd_file.as_ref().map(by_fd),
        cmdline: args.cmdline.clone(),
        memory_mib: args.memory,
        devices,
        console,
        confine,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(t) = exit.boot_time {
        tracing::info!("guest booted in {} ms", t.as_millis());
    }
    match exit.stop {
        Stop::Exit(code) => Ok(ExitCode::from(code)),
        Stop::Reset => Ok(ExitCode::SUCCESS),
        Stop::Error(e) => anyhow::bail!("the guest stopped with an error the VMM cannot handle: {e}"),
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn run(args: VmmArgs) -> anyhow::Result<ExitCode> {
    parse_mac(&args.mac)?;
    anyhow::bail!(
        "ferry vmm needs KVM on x86_64 Linux; on macOS see docs/macos.md (Hypervisor.framework is not built yet)"
    )
}
