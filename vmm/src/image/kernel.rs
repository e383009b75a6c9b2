//! Finding the guest kernel and its modules on the host.

use std::path::{Path, PathBuf};

use super::ImageError;

/// A kernel image plus the release string that names its module directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub path: PathBuf,
    pub release: String,
}

impl Kernel {
    /// `/lib/modules/<release>` under `root`.
    pub fn module_dir(&self, root: &Path) -> PathBuf {
        root.join("lib/modules").join(&self.release)
    }

    /// A kernel given explicitly; the release comes from a `vmlinuz-<release>`
    /// file name or must be given.
    pub fn from_path(path: &Path, release: Option<&str>) -> Result<Kernel, ImageError> {
        if !path.is_file() {
            return Err(ImageError::KernelMissing(format!(
                "{} does not exist or is not a file",
                path.display()
            )));
        }
        let release = match release {
            Some(r) => r.to_string(),
            None => release_from_name(path).ok_or_else(|| {
                ImageError::KernelMissing(format!(
                    "cannot tell the kernel release of {} from its name; name it vmlinuz-<release> or pass --kernel-release",
                    path.display()
                ))
            })?,
        };
        Ok(Kernel {
            path: path.to_path_buf(),
            release,
        })
    }

    /// The newest `vmlinuz-*` in `boot_dir`.
    pub fn find(boot_dir: &Path) -> Result<Kernel, ImageError> {
        let entries = std::fs::read_dir(boot_dir).map_err(|e| {
            ImageError::KernelMissing(format!(
                "cannot list {}: {e}; install linux-image-amd64",
                boot_dir.display()
            ))
        })?;
        let mut found: Vec<(Vec<u64>, PathBuf, String)> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter_map(|p| release_from_name(&p).map(|r| (version_key(&r), p, r)))
            .collect();
        found.sort();
        let (_, path, release) = found.pop().ok_or_else(|| {
            ImageError::KernelMissing(format!(
                "no vmlinuz-* in {}; install one with `apt-get install linux-image-amd64` or pass --kernel",
                boot_dir.display()
            ))
        })?;
        Ok(Kernel { path, release })
    }
}

fn release_from_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let release = name.strip_prefix("vmlinuz-")?;
    (!release.is_empty() && !release.ends_with(".old")).then(|| release.to_string())
}

/// Orders "6.1.0-56-amd64" after "6.1.0-9-amd64": numeric runs compare as numbers.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_newest_release() {
        let dir = std::env::temp_dir().join(format!("ferry-kernel-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-56-amd64",
            "config-6.1.0-99-amd64",
            "vmlinuz-7.0.old",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let k = Kernel::find(&dir).unwrap();
        assert_eq!(k.release, "6.1.0-56-amd64");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_kernel_says_what_to_install() {
        let err = Kernel::find(Path::new("/nonexistent-boot")).unwrap_err().to_string();
        assert!(err.contains("linux-image-amd64"), "{err}");
    }
}
