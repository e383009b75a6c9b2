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
  ferry fs --socket-dir /run/ferry --share src=/home/me/src --share data=/srv/data:ro
                                         (two devices, one process: /run/ferry/src.sock, data.sock)
Then, in QEMU:
  -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem
  -chardev socket,id=fs0,path=/tmp/vfsd.sock -device vhost-user-fs-pci,chardev=fs0,tag=src
and in the guest: mount -t virtiofs src /mnt";

#[derive(Debug, Parser)]
#[command(name = "virtiofsd", about = "Serve a host directory to a guest over vhost-user-fs (virtiofsd-compatible)",
    after_help = EXAMPLES, disable_version_flag = true)]
pub struct FsArgs {
    /// Print the virtiofsd version whose options ferry covers, and ferry's.
    #[arg(short = 'V', long)]
    version: bool,
    /// vhost-user socket to listen on (created; an old one is replaced).
    #[arg(long, value_name = "PATH", visible_alias = "socket")]
    socket_path: Option<PathBuf>,
    /// An already listening vhost-user socket inherited as this descriptor.
    #[arg(long, value_name = "FD")]
    fd: Option<i32>,
    /// The directory to share.
    #[arg(long, value_name = "DIR")]
    shared_dir: Option<PathBuf>,
    /// The tag, advertised in the device's configuration space (offers
    /// VHOST_USER_PROTOCOL_F_CONFIG, as virtiofsd; QEMU 7.1-8.0 crash on it).
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
    /// What a system call outside ferry's allow-list gets, once the share
    /// is open: kill (the process), log (allowed, logged by the kernel),
    /// trap (SIGSYS), none (no filter). virtiofsd's default is kill.
    #[arg(long, value_name = "ACTION", default_value = "kill")]
    seccomp: String,
    /// Hold inodes as file handles instead of O_PATH descriptors, so a
    /// share may have far more files than the process may open: never,
    /// prefer (where the file system and privileges allow) or mandatory
    /// (refuse to start otherwise). Not with --sandbox namespace yet.
    #[arg(long, value_name = "WHEN", default_value = "never", num_args = 0..=1, default_missing_value = "prefer")]
    inode_file_handles: String,
    /// Worker threads answering requests (0: the queue's own thread, the
    /// fastest for one request at a time; N: a pool, so a slow request
    /// does not hold up the others).
    #[arg(long, value_name = "N")]
    thread_pool_size: Option<usize>,
    /// Log level (error, warn, info, debug, trace) when run as virtiofsd;
    /// with `ferry fs` use `ferry --log-level`.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Raise the open-file limit to N (default: the hard limit).
    #[arg(long, value_name = "N")]
    rlimit_nofile: Option<u64>,
    /// Tell the guest which directories are mount points on the host, so it
    /// mounts each separately (its own device number) [default].
    #[arg(long)]
    announce_submounts: bool,
    /// Do not tell the guest which directories are mount points.
    #[arg(long)]
    no_announce_submounts: bool,
    /// Extended attributes.
    #[arg(long)]
    xattr: bool,
    /// POSIX ACLs (implies --xattr): never, auto or always; given alone,
    /// always. ACLs travel as system.posix_acl_* xattrs, so auto and always
    /// both turn them on.
    #[arg(long, value_name = "WHEN", num_args = 0..=1, default_missing_value = "always")]
    posix_acl: Option<String>,
    /// Refuse every write (EROFS); needs --sandbox namespace.
    #[arg(long)]
    readonly: bool,
    /// Writeback caching in the guest.
    #[arg(long)]
    writeback: bool,
    /// Honour the guest's O_DIRECT opens.
    #[arg(long)]
    allow_direct_io: bool,
    /// Negotiate FUSE_HANDLE_KILLPRIV_V2: the server clears setuid/setgid
    /// bits and capabilities on write, truncate and chown.
    #[arg(long)]
    killpriv_v2: bool,
    #[arg(long, hide = true)]
    no_killpriv_v2: bool,
    /// Withhold READDIRPLUS at INIT: the guest lists directories with
    /// READDIR and looks entries up one by one.
    #[arg(long)]
    no_readdirplus: bool,
    /// Log to syslog instead of stderr (as virtiofsd, under the ident
    /// "virtiofsd"). When run as `ferry fs`, use ferry's own log options.
    #[arg(long)]
    syslog: bool,
    /// Print the capabilities JSON libvirt reads and exit.
    #[arg(long)]
    print_capabilities: bool,
    /// Old-style options: source=DIR,cache=MODE,xattr,no_posix_lock,...
    #[arg(short = 'o', value_name = "LIST")]
    options: Vec<String>,
    /// Foreground: ferry always is; kept because virtiofsd keeps it (a
    /// no-op there too).
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug logging.
    #[arg(short = 'd')]
    debug: bool,
    /// Serve this share too, from the same process (repeatable; ferry
    /// only): TAG=DIR[:ro], on the socket SOCKET_DIR/TAG.sock.
    #[arg(long, value_name = "TAG=DIR[:ro]")]
    share: Vec<String>,
    /// Directory for the --share sockets.
    #[arg(long, value_name = "DIR")]
    socket_dir: Option<PathBuf>,
    /// inotify passthrough (ferry only): watch the shares and write their
    /// changes, for the guest agent to replay, to this inherited socket.
    #[arg(long, value_name = "FD")]
    notify_fd: Option<i32>,
    /// Translate uids between guest and host (repeatable), virtiofsd's
    /// TYPE:A:B:COUNT with TYPE guest, host, squash-guest, squash-host, map
    /// (map:GUEST:HOST:COUNT), or forbid-guest:BASE:COUNT.
    #[arg(long, value_name = "RULE")]
    translate_uid: Vec<String>,
    /// The same for gids.
    #[arg(long, value_name = "RULE")]
    translate_gid: Vec<String>,
    /// :GUEST_UID:HOST_UID:COUNT: (repeatable): the guest sees these host
    /// uids as its own; other host uids show as 65534 and the guest cannot
    /// use others. ferry translates ids itself rather than entering a user
    /// namespace; what the guest sees is the same.
    #[arg(long, value_name = ":GUEST:HOST:COUNT:")]
    uid_map: Vec<String>,
    /// The same for gids.
    #[arg(long, value_name = ":GUEST:HOST:COUNT:")]
    gid_map: Vec<String>,
    /// Change the capabilities kept after set-up (as root), e.g.
    /// +sys_admin:-chown. Kept by default, as virtiofsd: chown,
    /// dac_override, fowner, fsetid, setgid, setuid, mknod, setfcap (and
    /// dac_read_search with file handles).
    #[arg(long, value_name = "LIST")]
    modcaps: Option<String>,
    /// Map xattr names between guest and host, virtiofsd's rules
    /// (`:type:scope:key:prepend:` ..., or `:map:key:prepend:`); implies --xattr.
    /// E.g. `:map::user.virtiofs.:` keeps every guest xattr under user.virtiofs.
    #[arg(long, value_name = "RULES")]
    xattrmap: Option<String>,
    /// Let the guest map files shared even when they are opened for direct
    /// I/O (--cache never, or O_DIRECT with --allow-direct-io): grants
    /// FUSE_DIRECT_IO_ALLOW_MMAP to guests that offer it (Linux 6.6+).
    #[arg(long)]
    allow_mmap: bool,
    /// Options ferry does not implement, refused with the reason.
    /// Label new files with the security context (SELinux) the guest sends
    /// (implies --xattr): FUSE_SECURITY_CTX is granted (auto: if the guest
    /// offers it; always: a guest that does not is refused at INIT) and the
    /// context is set as its xattr right after CREATE, MKDIR, MKNOD or SYMLINK.
    #[arg(long = "security-label", require_equals = true, value_name = "never|auto|always", num_args = 0..=1, default_value = "never", default_missing_value = "always")]
    security_label: String,
    /// Keep the guest's O_NOATIME on opens (by default it is dropped, as
    /// virtiofsd does: the host refuses it on files the daemon does not own).
    #[arg(long)]
    preserve_noatime: bool,
    #[arg(long, hide = true)]
    migration_mode: Option<String>,
    #[arg(long, hide = true)]
    migration_on_error: Option<String>,
    #[arg(long, hide = true)]
    migration_verify_handles: bool,
    #[arg(long, hide = true)]
    migration_confirm_paths: bool,
    /// Request queues (besides the high-priority one).
    #[arg(long, value_name = "N", default_value_t = 1)]
    queues: usize,
}

/// The virtiofsd release whose command line ferry implements: clients
/// (Lima, Kata) read `virtiofsd X.Y.Z` from `--version` before they pass
/// newer options.
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

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
    if parsed.version {
        println!("virtiofsd {VIRTIOFSD_VERSION} (ferry {})", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if !logging_ready {
        let level = if parsed.debug {
            Some("debug".to_string())
        } else {
            parsed.log_level.clone()
        };
        let opts = crate::logging::LogOptions {
            log_level: level,
            syslog: parsed.syslog,
            ..Default::default()
        };
        crate::logging::init(&opts);
    } else if parsed.syslog {
        eprintln!("ferry fs: error: --syslog is virtiofsd's: run ferry as `virtiofsd` for it (logging is already set up by ferry's own options)");
        return ExitCode::from(2);
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
        posix_acl: match a.posix_acl.as_deref() {
            None | Some("never") => false,
            Some("auto" | "always") => true,
            Some(other) => anyhow::bail!("--posix-acl={other:?}: expected never, auto or always"),
        },
        readonly: a.readonly,
        writeback: a.writeback,
        // On unless turned off, as in virtiofsd.
        announce_submounts: !a.no_announce_submounts,
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
        allow_mmap: a.allow_mmap,
        preserve_noatime: a.preserve_noatime,
        security_label: a
            .security_label
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--security-label={e}"))?,
        ..FsOptions::default()
    };
    for list in &a.options {
        o.apply_legacy(list).map_err(anyhow::Error::msg)?;
    }
    refuse_unsupported(a)?;
    if o.security_label != ferry_fs::options::Negotiation::Never {
        // As virtiofsd: labels are xattrs.
        o.xattr = true;
    }
    if let Some(rules) = &a.xattrmap {
        // As virtiofsd: a mapping implies --xattr.
        o.xattrmap = Some(ferry_fs::xattrmap::XattrMap::parse(rules).map_err(anyhow::Error::msg)?);
        o.xattr = true;
    }
    o.uids = id_map("uid", &a.translate_uid, &a.uid_map)?;
    o.gids = id_map("gid", &a.translate_gid, &a.gid_map)?;
    anyhow::ensure!(
        (o.uids.is_empty() && o.gids.is_empty()) || !o.posix_acl,
        "--translate-uid/--translate-gid/--uid-map/--gid-map cannot go with --posix-acl: ACLs name ids ferry would not translate"
    );
    anyhow::ensure!(
        !(o.sandbox == SandboxMode::Chroot && (o.xattr || o.posix_acl)),
        "--xattr/--posix-acl/--security-label/--xattrmap need /proc/self/fd, which a chroot into the share cannot have: use --sandbox namespace (or none)"
    );
    anyhow::ensure!(
        matches!(a.seccomp.as_str(), "none" | "kill" | "log" | "trap"),
        "--seccomp {:?}: expected none, kill, log or trap",
        a.seccomp
    );
    Ok(o)
}

/// virtiofsd options ferry has no implementation of: each refused by name
/// with the reason (docs/compat.md lists them).
fn refuse_unsupported(a: &FsArgs) -> anyhow::Result<()> {
    let reasons = [(
        a.migration_mode.is_some()
            || a.migration_on_error.is_some()
            || a.migration_verify_handles
            || a.migration_confirm_paths,
        "--migration-*",
        "ferry's vhost-user back end does not support live migration (no device state transfer)",
    )];
    for (given, name, why) in reasons {
        anyhow::ensure!(!given, "{name} is not supported by ferry: {why}");
    }
    Ok(())
}

/// The capabilities `ferry fs` keeps as root: virtiofsd's default set,
/// with `--modcaps` changes (`+name`/`-name`, `:`-separated).
#[cfg(target_os = "linux")]
pub(crate) fn kept_caps(modcaps: Option<&str>, file_handles: bool) -> anyhow::Result<Vec<ferry_confine::Capability>> {
    use ferry_confine::Capability as C;
    let mut keep = vec![
        C::CAP_CHOWN,
        C::CAP_DAC_OVERRIDE,
        C::CAP_FOWNER,
        C::CAP_FSETID,
        C::CAP_SETGID,
        C::CAP_SETUID,
        C::CAP_MKNOD,
        C::CAP_SETFCAP,
    ];
    if file_handles {
        keep.push(C::CAP_DAC_READ_SEARCH);
    }
    for item in modcaps.unwrap_or_default().split(':').filter(|s| !s.is_empty()) {
        let (add, name) = match item.split_at(1) {
            ("+", n) => (true, n),
            ("-", n) => (false, n),
            _ => anyhow::bail!("--modcaps {item:?}: expected +NAME or -NAME, e.g. +sys_admin:-chown"),
        };
        let cap: C = format!("CAP_{}", name.to_ascii_uppercase())
            .parse()
            .map_err(|_| anyhow::anyhow!("--modcaps {item:?}: no capability named {name:?}"))?;
        keep.retain(|c| *c != cap);
        if add {
            keep.push(cap);
        }
    }
    Ok(keep)
}

/// The rules of `--translate-KIND` or `--KIND-map` (not both).
fn id_map(kind: &str, translate: &[String], maps: &[String]) -> anyhow::Result<ferry_fs::idmap::IdMap> {
    use ferry_fs::idmap::{IdMap, Rule};
    anyhow::ensure!(
        translate.is_empty() || maps.is_empty(),
        "give --translate-{kind} or --{kind}-map, not both"
    );
    let mut rules = Vec::new();
    for t in translate {
        rules.push(Rule::parse(t).map_err(|e| anyhow::anyhow!("--translate-{kind} {e}"))?);
    }
    for m in maps {
        let nums: Vec<u32> = m
            .trim_matches(':')
            .split(':')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()
            .filter(|n: &Vec<u32>| n.len() == 3)
            .ok_or_else(|| anyhow::anyhow!("--{kind}-map {m:?}: expected :GUEST:HOST:COUNT:, e.g. :0:100000:65536:"))?;
        let rule = Rule::parse(&format!("map:{}:{}:{}", nums[0], nums[1], nums[2]))
            .map_err(|e| anyhow::anyhow!("--{kind}-map {e}"))?;
        rules.push(rule);
    }
    if !maps.is_empty() {
        // As in a user namespace: the rest of the host shows as the
        // overflow id, and the guest cannot take ids outside the maps.
        rules.push(Rule::SquashHost {
            host: 0,
            guest: 65534,
            count: u32::MAX,
        });
        rules.push(Rule::ForbidGuest {
            guest: 0,
            count: u32::MAX,
        });
    }
    Ok(IdMap { rules })
}

/// One share this process serves.
#[cfg(target_os = "linux")]
struct Served {
    label: String,
    dir: PathBuf,
    readonly: bool,
    listener: vhost::vhost_user::Listener,
}

#[cfg(target_os = "linux")]
fn listen(path: &std::path::Path) -> anyhow::Result<vhost::vhost_user::Listener> {
    vhost::vhost_user::Listener::new(path, true).map_err(|e| {
        anyhow::anyhow!(
            "listening on {}: {e} (does its directory exist and is it writable?)",
            path.display()
        )
    })
}

/// `TAG=DIR[:ro]`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(super) fn parse_share(spec: &str) -> anyhow::Result<(String, PathBuf, bool)> {
    let (tag, rest) = spec
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--share {spec:?}: expected TAG=DIR[:ro]"))?;
    anyhow::ensure!(
        !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "--share {spec:?}: the tag must be letters, digits, - or _"
    );
    let (dir, ro) = match rest.strip_suffix(":ro") {
        Some(d) => (d, true),
        None => (rest.strip_suffix(":rw").unwrap_or(rest), false),
    };
    anyhow::ensure!(!dir.is_empty(), "--share {spec:?}: no directory");
    Ok((tag.to_string(), PathBuf::from(dir), ro))
}

#[cfg(target_os = "linux")]
fn shares(a: &FsArgs, opts: &FsOptions) -> anyhow::Result<Vec<Served>> {
    if !a.share.is_empty() {
        anyhow::ensure!(
            opts.shared_dir.is_none() && a.socket_path.is_none() && a.fd.is_none(),
            "--share serves every directory on its own socket: drop --shared-dir/--socket-path/--fd"
        );
        let dir = a
            .socket_dir
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--share needs --socket-dir DIR for its sockets"))?;
        let mut out: Vec<Served> = Vec::new();
        for spec in &a.share {
            let (tag, share_dir, readonly) = parse_share(spec)?;
            anyhow::ensure!(!out.iter().any(|s| s.label == tag), "--share: tag {tag:?} given twice");
            let listener = listen(&dir.join(format!("{tag}.sock")))?;
            out.push(Served {
                label: tag,
                dir: share_dir,
                readonly: readonly || opts.readonly,
                listener,
            });
        }
        return Ok(out);
    }
    anyhow::ensure!(a.socket_dir.is_none(), "--socket-dir goes with --share TAG=DIR");
    let dir = opts
        .shared_dir
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no directory to share: give --shared-dir DIR (or -o source=DIR)"))?;
    let listener = match (&a.socket_path, a.fd) {
        (Some(path), None) => listen(path)?,
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
    Ok(vec![Served {
        label: opts.tag.clone().unwrap_or_else(|| "share".into()),
        dir,
        readonly: opts.readonly,
        listener,
    }])
}

#[cfg(target_os = "linux")]
fn serve(a: FsArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    if a.print_capabilities {
        println!("{{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}}");
        return Ok(());
    }
    let mut opts = options(&a)?;
    let served = shares(&a, &opts)?;
    if opts.inode_file_handles != InodeFileHandles::Never {
        for s in &served {
            if let Err(e) = ferry_fs::device::file_handles_work(&s.dir) {
                anyhow::ensure!(
                    opts.inode_file_handles != InodeFileHandles::Mandatory,
                    "--inode-file-handles=mandatory: {e}"
                );
                tracing::info!("not using file handles: {e}; inodes are held as O_PATH descriptors");
                opts.inode_file_handles = InodeFileHandles::Never;
            }
        }
    }
    let _ = ferry_net::sys::raise_nofile_limit(opts.rlimit_nofile);
    let list: Vec<(&std::path::Path, bool)> = served.iter().map(|s| (s.dir.as_path(), s.readonly)).collect();
    let sandbox = ferry_fs::sandbox::prepare_shares(opts.sandbox, &list)?;
    let mut devices = Vec::with_capacity(served.len());
    let mut watched = Vec::new();
    let mut open_devices = || -> anyhow::Result<()> {
        for (i, s) in served.iter().enumerate() {
            let mut device = ferry_fs::device::FsDevice::new(&sandbox.root(i), &opts)
                .with_context(|| format!("opening the shared directory {}", s.dir.display()))?;
            if a.notify_fd.is_some() {
                let replay = ferry_fs::inject::Replay::new();
                device = device.with_replay(replay.clone());
                watched.push((s.label.clone(), sandbox.root(i), replay));
            }
            devices.push(device);
        }
        Ok(())
    };
    // Threads only after confine: a mount namespace is entered per thread.
    if sandbox.open_after_confine() {
        sandbox.confine()?;
        open_devices()?;
    } else {
        open_devices()?;
        sandbox.confine()?;
    }
    // Still one thread: capabilities are per thread, and those started
    // from here on inherit what is kept.
    let keep = kept_caps(a.modcaps.as_deref(), opts.inode_file_handles != InodeFileHandles::Never)?;
    ferry_confine::drop_caps(&keep).context("dropping capabilities")?;
    let seccomp = ferry_confine::seccomp::Mode::parse(&a.seccomp).unwrap_or(ferry_confine::seccomp::Mode::Kill);
    let mut lists = ferry_fs::SYSCALLS.to_vec();
    if a.syslog {
        lists.push(crate::logging::SYSLOG_SYSCALLS);
    }
    ferry_confine::seccomp::install(seccomp, &lists).context("--seccomp")?;
    if let Some(fd) = a.notify_fd {
        anyhow::ensure!(fd > 2, "--notify-fd {fd}: not an inherited socket descriptor");
        // SAFETY: our parent passed this descriptor as one end of a socket
        // pair for exactly this use; nothing else in ferry owns it.
        let out = unsafe { <std::os::unix::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        ferry_fs::notifier::spawn(watched, out).context("watching the shares for host changes")?;
    }
    let (queues, pool) = (opts.request_queues, opts.thread_pool_size);
    let workers: Vec<_> = served
        .into_iter()
        .zip(devices)
        .map(|(mut s, device)| {
            tracing::info!(share = %s.label, dir = %s.dir.display(), sandbox = ?opts.sandbox, "waiting for the vhost-user front end");
            std::thread::Builder::new()
                .name(format!("fs-{}", s.label))
                .spawn(move || {
                    ferry_fs::vhost_user::serve(&mut s.listener, device, queues, pool)
                        .with_context(|| format!("share {}", s.label))
                })
        })
        .collect::<Result<_, _>>()?;
    // The process's job ends when every share's guest has gone.
    let mut first_error = None;
    for w in workers {
        let result = w.join().map_err(|_| anyhow::anyhow!("a share's thread panicked"))?;
        if let Err(e) = result {
            tracing::error!("{e:#}");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
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
