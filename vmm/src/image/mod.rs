//! The guest image: a gzip'd newc initramfs holding guest-init as /init,
//! busybox, and the kernel modules ferry's devices need. Builds are
//! deterministic and cached under the hash of everything that goes in.

mod cpio;
mod kernel;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use cpio::{CpioWriter, Entry};
pub use kernel::Kernel;

/// Bumped whenever the image layout changes, so old cache entries are unused.
const IMAGE_FORMAT: u32 = 2;

/// Modules for every device ferry attaches (dependencies are added).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "virtio_blk",
    "fuse",
    "virtiofs",
    "vsock",
    "vmw_vsock_virtio_transport",
    "overlay",
];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No usable guest kernel.
    #[error("guest kernel not found: {0}")]
    KernelMissing(String),
    /// busybox is missing or unusable.
    #[error("{0}")]
    Busybox(String),
    /// guest-init binary is missing.
    #[error("guest-init not found: {0}")]
    InitMissing(String),
    /// A module was asked for that the kernel does not ship.
    #[error("kernel module {name} is not in {dir}/modules.dep (is it built into the kernel, or misspelt?)")]
    UnknownModule { name: String, dir: String },
    /// Reading an input or writing the image failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// What goes into an image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub kernel: Kernel,
    /// Root of the host's module tree (normally `/`).
    pub modules_root: PathBuf,
    pub init: PathBuf,
    pub busybox: PathBuf,
    pub modules: Vec<String>,
    /// More files for the image: (path in the guest, contents, mode) —
    /// qemu-user interpreters and their binfmt_misc rules for `--platform`.
    /// Part of the cache key like everything else.
    pub extra: Vec<(String, Vec<u8>, u32)>,
}

/// A built image, ready to boot.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: Kernel,
    pub initrd: PathBuf,
    /// Hex sha256 of the inputs; also part of the file name.
    pub hash: String,
    /// False when the image came from the cache.
    pub built: bool,
}

/// Returns an error unless `path` is a statically linked ELF executable
/// (it has no PT_INTERP program header).
fn check_static_elf(path: &Path, data: &[u8]) -> Result<(), String> {
    let bad = || format!("{} is not an x86-64 ELF executable", path.display());
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let phoff = u64_at(0x20).and_then(|v| usize::try_from(v).ok()).ok_or_else(bad)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let p_type = data.get(off..off + 4).ok_or_else(bad)?;
        if p_type == 3u32.to_le_bytes() {
            return Err(format!("{} is dynamically linked", path.display()));
        }
    }
    Ok(())
}

/// Resolves `wanted` and their dependencies against `modules.dep`, returning
/// the module files (relative paths) and the filtered dep lines.
fn module_closure(dep_text: &str, wanted: &[String], dir: &Path) -> Result<(BTreeSet<String>, String), ImageError> {
    let mut by_name: BTreeMap<String, (&str, Vec<&str>)> = BTreeMap::new();
    for line in dep_text.lines() {
        if let Some((path, deps)) = line.split_once(':') {
            let name = module_name(path.trim());
            by_name.insert(name, (path.trim(), deps.split_whitespace().collect()));
        }
    }
    let mut files = BTreeSet::new();
    let mut stack: Vec<String> = Vec::new();
    for name in wanted {
        let name = name.replace('-', "_");
        if !by_name.contains_key(&name) {
            return Err(ImageError::UnknownModule {
                name,
                dir: dir.display().to_string(),
            });
        }
        stack.push(name);
    }
    while let Some(name) = stack.pop() {
        let Some((path, deps)) = by_name.get(&name) else {
            continue;
        };
        if files.insert(path.to_string()) {
            stack.extend(deps.iter().map(|d| module_name(d)));
        }
    }
    let mut dep_out = String::new();
    for line in dep_text.lines() {
        if let Some((path, _)) = line.split_once(':') {
            if files.contains(path.trim()) {
                dep_out.push_str(line);
                dep_out.push('\n');
            }
        }
    }
    Ok((files, dep_out))
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The cache directory: `$FERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ferry`,
/// else `~/.cache/ferry`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("ferry");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/ferry")
}

impl ImageSpec {
    /// Builds the image into `cache`, or returns the cached one with the same
    /// inputs. `progress` receives one line per step.
    pub fn build(&self, cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<GuestImage, ImageError> {
        let init = std::fs::read(&self.init).map_err(|e| {
            ImageError::InitMissing(format!(
                "{}: {e}; build it with scripts/build-guest-init or pass --init",
                self.init.display()
            ))
        })?;
        check_static_elf(&self.init, &init).map_err(ImageError::InitMissing)?;
        let busybox = std::fs::read(&self.busybox).map_err(|e| {
            ImageError::Busybox(format!(
                "busybox not found at {}: {e}; install it with `apt-get install busybox-static`",
                self.busybox.display()
            ))
        })?;
        check_static_elf(&self.busybox, &busybox).map_err(|e| {
            ImageError::Busybox(format!(
                "{e}; the guest needs a static busybox: `apt-get install busybox-static`"
            ))
        })?;

        let mod_dir = self.kernel.module_dir(&self.modules_root);
        let dep_path = mod_dir.join("modules.dep");
        let dep_text = std::fs::read_to_string(&dep_path).map_err(|e| {
            ImageError::KernelMissing(format!(
                "cannot read {}: {e}; install the modules of kernel {} (linux-image-amd64)",
                dep_path.display(),
                self.kernel.release
            ))
        })?;
        let (files, dep_out) = module_closure(&dep_text, &self.modules, &mod_dir)?;

        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let guest_mod_dir = format!("lib/modules/{}", self.kernel.release);
        for rel in &files {
            let data = std::fs::read(mod_dir.join(rel)).map_err(io_err(format!("reading module {rel}")))?;
            entries.insert(format!("{guest_mod_dir}/{rel}"), Entry::File { mode: 0o644, data });
        }
        entries.insert(
            format!("{guest_mod_dir}/modules.dep"),
            Entry::File {
                mode: 0o644,
                data: dep_out.into_bytes(),
            },
        );
        let list: String = self.modules.iter().map(|m| format!("{m}\n")).collect();
        entries.insert(
            "etc/ferry/modules".into(),
            Entry::File {
                mode: 0o644,
                data: list.into_bytes(),
            },
        );
        entries.insert(
            "init".into(),
            Entry::File {
                mode: 0o755,
                data: init,
            },
        );
        entries.insert(
            "bin/busybox".into(),
            Entry::File {
                mode: 0o755,
                data: busybox,
            },
        );
        entries.insert(
            "etc/passwd".into(),
            Entry::File {
                mode: 0o644,
                data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            },
        );
        entries.insert(
            "etc/group".into(),
            Entry::File {
                mode: 0o644,
                data: b"root:x:0:\ntty:x:5:\n".to_vec(),
            },
        );
        entries.insert(
            "etc/hosts".into(),
            Entry::File {
                mode: 0o644,
                data: b"127.0.0.1 localhost\n".to_vec(),
            },
        );
        entries.insert(
            "dev/console".into(),
            Entry::CharDevice {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        entries.insert(
            "dev/null".into(),
            Entry::CharDevice {
                mode: 0o666,
                major: 1,
                minor: 3,
            },
        );
        for (path, data, mode) in &self.extra {
            entries.insert(
                path.trim_start_matches('/').to_string(),
                Entry::File {
                    mode: *mode,
                    data: data.clone(),
                },
            );
        }
        for dir in [
            "proc", "sys", "run", "tmp", "root", "sbin", "usr/bin", "usr/sbin", "mnt",
        ] {
            entries.insert(dir.into(), Entry::Dir { mode: 0o755 });
        }
        // Every parent directory, so the archive never relies on implicit dirs.
        let parents: Vec<String> = entries
            .keys()
            .flat_map(|k| k.match_indices('/').map(move |(i, _)| k[..i].to_string()))
            .collect();
        for p in parents {
            entries.entry(p).or_insert(Entry::Dir { mode: 0o755 });
        }

        let mut hasher = Sha256::new();
        hasher.update(IMAGE_FORMAT.to_le_bytes());
        hasher.update(self.kernel.release.as_bytes());
        for (name, entry) in &entries {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(format!("{entry:?}").len().to_le_bytes());
            if let Entry::File { data, mode } = entry {
                hasher.update(mode.to_le_bytes());
                hasher.update(data);
            }
        }
        let hash: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let initrd = cache.join(format!("initramfs-{}.cpio.gz", &hash[..16]));
        if initrd.is_file() {
            return Ok(GuestImage {
                kernel: self.kernel.clone(),
                initrd,
                hash,
                built: false,
            });
        }

        progress(&format!(
            "building guest image: kernel {}, {} modules, busybox, guest-init",
            self.kernel.release,
            files.len()
        ));
        std::fs::create_dir_all(cache).map_err(io_err(format!("creating cache directory {}", cache.display())))?;
        let tmp = cache.join(format!(".initramfs-{}.{}.tmp", &hash[..16], std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(std::io::BufWriter::new(file), flate2::Compression::default());
        let mut cpio = CpioWriter::new(gz);
        for (name, entry) in &entries {
            cpio.add(name, entry)
                .map_err(io_err(format!("writing {}", tmp.display())))?;
        }
        let gz = cpio.finish().map_err(io_err(format!("writing {}", tmp.display())))?;
        let mut buf = gz.finish().map_err(io_err(format!("compressing {}", tmp.display())))?;
        buf.flush().map_err(io_err(format!("writing {}", tmp.display())))?;
        drop(buf);
        std::fs::rename(&tmp, &initrd).map_err(io_err(format!("moving image into {}", initrd.display())))?;
        progress(&format!("guest image ready: {}", initrd.display()));
        Ok(GuestImage {
            kernel: self.kernel.clone(),
            initrd,
            hash,
            built: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_includes_dependencies_only() {
        let dep = "kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko\nkernel/fs/fuse/fuse.ko:\nkernel/other.ko:\n";
        let (files, dep_out) = module_closure(dep, &["virtiofs".into()], Path::new("/x")).unwrap();
        assert_eq!(
            files.into_iter().collect::<Vec<_>>(),
            ["kernel/fs/fuse/fuse.ko", "kernel/fs/fuse/virtiofs.ko"]
        );
        assert!(!dep_out.contains("other"));
        assert!(module_closure(dep, &["nope".into()], Path::new("/x")).is_err());
    }

    #[test]
    fn dynamic_binaries_are_refused() {
        let sh = std::fs::read("/bin/ls").unwrap();
        let err = check_static_elf(Path::new("/bin/ls"), &sh).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(check_static_elf(Path::new("x"), b"not an elf").is_err());
        assert!(check_static_elf(Path::new("x"), &[0x7f, b'E', b'L', b'F', 2, 0, 0, 0]).is_err());
    }
}
