//! `ferry fs` and ferry invoked as `virtiofsd`: virtiofsd's command line,
//! as libvirt, QEMU's documentation and Kata pass it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_fs::{CacheMode, FsOptions, InodeFileHandles, SandboxMode};

const EXAMPLES: &str = "\
Examples:
  ferry fs --socket-path /tmp/vfsd.sock --shared-dir ~/src
  virtiofsd --socket-path=/tmp/vfsd.sock -o source=/srv,cache=always   (old style)
  ferry fs --print-capabilities          (the JSON libvirt reads)
Then, in QEMU:
  -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem
  -chardev socket,id=fs0,path=/tmp/vfsd.sock -device vhost-user-fs-pci,chardev=fs0,tag=src
and in the guest: mount -t virtiofs src /mnt";

#[derive(Debug, Parser)]
#[command(name = "virtiofsd", about = "Serve a host directory to a guest over vhost-user-fs (virtiofsd-compatible)",
    after_help = EXAMPLES, version)]
pub struct FsArgs {
    /// vhost-user socket to listen on (created; an old one is replaced).
    #[arg(long, value_name = "PATH")]
    socket_path: Option<PathBuf>,
    /// An already listening vhost-user socket inherited as this descriptor.
    #[arg(long, value_name = "FD")]
    fd: Option<i32>,
    /// The directory to share.
    #[arg(long, value_name = "DIR")]
    shared_dir: Option<PathBuf>,
    /// The tag (accepted; QEMU's -device ...,tag= is what the guest sees).
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
    /// Group that may connect to the socket.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Guest caching: auto, always, never or metadata.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    cache: String,
    /// Confinement: namespace (a mount namespace rooted at the share),
    /// chroot, or none.
    #[arg(long, value_name = "MODE", default_value = "namespace")]
    sandbox: String,
    /// seccomp action (none, kill, log, trap): accepted; ferry installs no
    /// seccomp filter yet (see docs/fs.md).
    #[arg(long, value_name = "ACTION")]
    seccomp: Option<String>,
    /// Identify inodes by file handles: never, prefer or mandatory.
    #[arg(long, value_name = "WHEN", default_value = "never", num_args = 0..=1, default_missing_value = "prefer")]
    inode_file_handles: String,
    /// Worker threads (accepted; requests are answered on the queue's thread).
    #[arg(long, value_name = "N")]
    thread_pool_size: Option<usize>,
    /// Log level (error, warn, info, debug, trace) when run as virtiofsd;
    /// with `ferry fs` use `ferry --log-level`.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Raise the open-file limit to N (default: the hard limit).
    #[arg(long, value_name = "N")]
    rlimit_nofile: Option<u64>,
    /// Announce submounts to the guest (accepted).
    #[arg(long)]
    announce_submounts: bool,
    #[arg(long, hide = true)]
    no_announce_submounts: bool,
    /// Extended attributes.
    #[arg(long)]
    xattr: bool,
    /// POSIX ACLs (implies --xattr).
    #[arg(long)]
    posix_acl: bool,
    /// Refuse every write (EROFS); needs --sandbox namespace.
    #[arg(long)]
    readonly: bool,
    /// Writeback caching in the guest.
    #[arg(long)]
    writeback: bool,
    /// Honour the guest's O_DIRECT opens.
    #[arg(long)]
    allow_direct_io: bool,
    /// FUSE_HANDLE_KILLPRIV_V2 (accepted).
    #[arg(long)]
    killpriv_v2: bool,
    #[arg(long, hide = true)]
    no_killpriv_v2: bool,
    /// Disable READDIRPLUS (accepted).
    #[arg(long)]
    no_readdirplus: bool,
    /// Log to syslog (accepted; ferry logs to stderr).
    #[arg(long)]
    syslog: bool,
    /// Print the capabilities JSON libvirt reads and exit.
    #[arg(long)]
    print_capabilities: bool,
    /// Old-style options: source=DIR,cache=MODE,xattr,no_posix_lock,...
    #[arg(short = 'o', value_name = "LIST")]
    options: Vec<String>,
    /// Foreground (always; accepted).
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug logging.
    #[arg(short = 'd')]
    debug: bool,
    /// Request queues (besides the high-priority one).
    #[arg(long, value_name = "N", default_value_t = 1)]
    queues: usize,
}

/// Entry for both `ferry fs ...` and argv[0] = virtiofsd. `logging_ready`:
/// ferry's own flags already set up logging.
pub fn run(args: &[OsString], logging_ready: bool) -> ExitCode {
    let argv = std::iter::once(OsString::from("virtiofsd")).chain(args.iter().cloned());
    let parsed = match FsArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1));
        }
    };
    if !logging_ready {
        let level = if parsed.debug {
            Some("debug".to_string())
        } else {
            parsed.log_level.clone()
        };
        let opts = crate::logging::LogOptions {
            log_level: level,
            ..Default::default()
        };
        crate::logging::init(&opts);
    }
    match serve(parsed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry fs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn options(a: &FsArgs) -> anyhow::Result<FsOptions> {
    let mut o = FsOptions {
        shared_dir: a.shared_dir.clone(),
        tag: a.tag.clone(),
        cache: a.cache.parse::<CacheMode>().map_err(anyhow::Error::msg)?,
        sandbox: a.sandbox.parse::<SandboxMode>().map_err(anyhow::Error::msg)?,
        xattr: a.xattr,
        posix_acl: a.posix_acl,
        readonly: a.readonly,
        writeback: a.writeback,
        announce_submounts: a.announce_submounts && !a.no_announce_submounts,
        inode_file_handles: a
            .inode_file_handles
            .parse::<InodeFileHandles>()
            .map_err(anyhow::Error::msg)?,
        thread_pool_size: a.thread_pool_size.unwrap_or(0),
        allow_direct_io: a.allow_direct_io,
        killpriv_v2: a.killpriv_v2 && !a.no_killpriv_v2,
        readdirplus: !a.no_readdirplus,
        rlimit_nofile: a.rlimit_nofile,
        request_queues: a.queues,
    };
    for list in &a.options {
        o.apply_legacy(list).map_err(anyhow::Error::msg)?;
    }
    if let Some(action) = &a.seccomp {
        anyhow::ensure!(
            matches!(action.as_str(), "none" | "kill" | "log" | "trap"),
            "--seccomp {action:?}: expected none, kill, log or trap"
        );
    }
    Ok(o)
}

#[cfg(target_os = "linux")]
fn serve(a: FsArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    if a.print_capabilities {
        println!("{{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}}");
        return Ok(());
    }
    let opts = options(&a)?;
    let dir = opts
        .shared_dir
        .clone()
        .context("no directory to share: give --shared-dir DIR (or -o source=DIR)")?;
    let mut listener = match (&a.socket_path, a.fd) {
        (Some(path), None) => vhost::vhost_user::Listener::new(path, true)
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", path.display()))?,
        (None, Some(fd)) => {
            anyhow::ensure!(fd > 2, "--fd {fd}: not an inherited socket descriptor");
            // SAFETY: the caller passed this descriptor to us as a listening
            // socket (libvirt's --fd contract); nothing else in ferry owns it.
            let l = unsafe { <std::os::unix::net::UnixListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            vhost::vhost_user::Listener::from(l)
        }
        (Some(_), Some(_)) => anyhow::bail!("give one of --socket-path and --fd, not both"),
        (None, None) => anyhow::bail!("no socket: give --socket-path PATH (or --fd N)"),
    };
    if let (Some(group), Some(path)) = (&a.socket_group, &a.socket_path) {
        set_group(path, group)?;
    }
    let _ = ferry_net::sys::raise_nofile_limit(opts.rlimit_nofile);
    let sandbox = ferry_fs::sandbox::prepare(opts.sandbox, &dir, opts.readonly)?;
    let device = ferry_fs::device::FsDevice::new(&sandbox.root(), &opts)
        .with_context(|| format!("opening the shared directory {}", dir.display()))?;
    sandbox.confine()?;
    tracing::info!(dir = %dir.display(), sandbox = ?opts.sandbox, "waiting for the vhost-user front end");
    ferry_fs::vhost_user::serve(&mut listener, device, opts.request_queues)?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn set_group(path: &std::path::Path, group: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("chgrp").arg(group).arg(path).output()?;
    anyhow::ensure!(
        out.status.success(),
        "--socket-group {group}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o770);
    std::fs::set_permissions(path, mode)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn serve(a: FsArgs) -> anyhow::Result<()> {
    let _ = options(&a)?;
    anyhow::bail!("ferry fs needs Linux (vhost-user); on macOS, ferry's built-in VMM serves shares itself")
}
