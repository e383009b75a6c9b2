//! `ferry guest`: the guest image (kernel + initramfs).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_vmm::image::{self, GuestImage, ImageSpec, Kernel, DEFAULT_MODULES};

/// Where guests come from; shared by `ferry guest build` and `ferry run`.
#[derive(Clone, Debug, Args)]
pub struct ImageOptions {
    /// Guest kernel image [default: newest /boot/vmlinuz-*].
    #[arg(long, env = "FERRY_KERNEL", value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Release of --kernel, naming /lib/modules/RELEASE [default: from the file name].
    #[arg(long, value_name = "RELEASE")]
    pub kernel_release: Option<String>,
    /// Use this initramfs as-is instead of building one.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The static guest-init binary [default: next to ferry, or as built by scripts/build-guest-init].
    #[arg(long, env = "FERRY_GUEST_INIT", value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// A static busybox for the guest's tools.
    #[arg(long, env = "FERRY_BUSYBOX", value_name = "PATH", default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Extra kernel module to ship and load (repeatable), beyond the virtio,
    /// virtiofs and vsock set.
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// Files `ferry run` adds (foreign-architecture interpreters).
    #[arg(skip)]
    pub extra: Vec<(String, Vec<u8>, u32)>,
}

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Build the guest initramfs (cached by content hash) and print its path.
    #[command(after_help = "Example:\n  ferry guest build --module virtio_rng")]
    Build(ImageOptions),
    /// Print the kernel guests boot and its release.
    Kernel(ImageOptions),
    /// Check whether this host's KVM boots the guest in ferry's built-in
    /// VMM (what `ferry run --hypervisor auto` probes): exits 0 if it
    /// does, else 1 with the reason.
    CheckKvm(ImageOptions),
}

pub fn run(cmd: GuestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GuestCommand::Build(opts) => {
            let image = prepare(&opts)?;
            if !image.built {
                eprintln!("ferry: guest image unchanged, reusing the cached one");
            }
            println!("{}", image.initrd.display());
        }
        GuestCommand::Kernel(opts) => {
            let kernel = find_kernel(&opts)?;
            println!("{}\t{}", kernel.path.display(), kernel.release);
        }
        GuestCommand::CheckKvm(opts) => {
            let image = prepare(&opts)?;
            if let Err(why) = super::run::probe_builtin(&image, 256) {
                println!(
                    "KVM here does not boot the guest ({}) in ferry's VMM: {why}",
                    image.kernel.release
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("KVM boots the guest ({}) in ferry's VMM", image.kernel.release);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn find_kernel(opts: &ImageOptions) -> anyhow::Result<Kernel> {
    Ok(match &opts.kernel {
        Some(path) => Kernel::from_path(path, opts.kernel_release.as_deref())?,
        None => Kernel::find(Path::new("/boot"))?,
    })
}

/// The guest-init binary: --init, else the places a build puts it.
fn find_init(opts: &ImageOptions) -> anyhow::Result<PathBuf> {
    if let Some(path) = &opts.init {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("locating the ferry executable")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [
        dir.join("ferry-guest-init"),
        dir.join("../x86_64-unknown-linux-gnu/release/ferry-guest-init"),
        PathBuf::from("/usr/lib/ferry/ferry-guest-init"),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "guest-init not found (looked in {}); build it with scripts/build-guest-init or pass --init PATH",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Builds or reuses the image described by `opts`, printing progress.
pub fn prepare(opts: &ImageOptions) -> anyhow::Result<GuestImage> {
    let kernel = find_kernel(opts)?;
    if let Some(initrd) = &opts.initrd {
        anyhow::ensure!(initrd.is_file(), "--initrd {} does not exist", initrd.display());
        return Ok(GuestImage {
            kernel,
            initrd: initrd.clone(),
            hash: String::new(),
            built: false,
        });
    }
    let mut modules: Vec<String> = DEFAULT_MODULES.iter().map(|m| m.to_string()).collect();
    modules.extend(opts.modules.iter().cloned());
    let spec = ImageSpec {
        kernel,
        modules_root: PathBuf::from("/"),
        init: find_init(opts)?,
        busybox: opts.busybox.clone(),
        modules,
        extra: opts.extra.clone(),
    };
    Ok(spec.build(&image::cache_dir(), &mut |line| eprintln!("ferry: {line}"))?)
}
