//! What a share is served with: virtiofsd's options, parsed from both its
//! modern flags (by the CLI) and its old `-o a=b,c` style (here).

use std::path::PathBuf;
use std::str::FromStr;

/// How much the guest may cache (`--cache`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Close-to-open consistency: data cached while a file is open.
    #[default]
    Auto,
    /// Everything cached; only for a directory nothing else changes.
    Always,
    /// Nothing cached: every read goes to the host.
    Never,
    /// Metadata and directories cached, file data not.
    Metadata,
}

impl FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CacheMode::Auto),
            "always" => Ok(CacheMode::Always),
            "never" | "none" => Ok(CacheMode::Never),
            "metadata" => Ok(CacheMode::Metadata),
            _ => Err(format!("cache mode {s:?}: expected auto, always, never or metadata")),
        }
    }
}

/// How the server confines itself to the shared directory (`--sandbox`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// New mount namespace with the shared directory as its root.
    #[default]
    Namespace,
    /// chroot(2) into the shared directory.
    Chroot,
    /// No confinement beyond the file system's own checks.
    None,
}

impl FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "namespace" => Ok(SandboxMode::Namespace),
            "chroot" => Ok(SandboxMode::Chroot),
            "none" => Ok(SandboxMode::None),
            _ => Err(format!("sandbox {s:?}: expected namespace, chroot or none")),
        }
    }
}

/// `--inode-file-handles=never|prefer|mandatory`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InodeFileHandles {
    #[default]
    Never,
    Prefer,
    Mandatory,
}

impl FromStr for InodeFileHandles {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(InodeFileHandles::Never),
            // "fallback": virtiofsd's deprecated name for prefer.
            "prefer" | "fallback" => Ok(InodeFileHandles::Prefer),
            "mandatory" => Ok(InodeFileHandles::Mandatory),
            _ => Err(format!("inode file handles {s:?}: expected never, prefer or mandatory")),
        }
    }
}

/// virtiofsd's negotiation modes (`--security-label[=never|auto|always]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Negotiation {
    #[default]
    Never,
    /// Used if the guest offers it.
    Auto,
    /// Required: a guest that does not offer it is refused at INIT.
    Always,
}

impl FromStr for Negotiation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Negotiation::Never),
            "auto" => Ok(Negotiation::Auto),
            "always" => Ok(Negotiation::Always),
            _ => Err(format!("{s:?}: expected never, auto or always")),
        }
    }
}

/// Everything that shapes one served share.
#[derive(Clone, Debug, Default)]
pub struct FsOptions {
    pub shared_dir: Option<PathBuf>,
    pub tag: Option<String>,
    pub cache: CacheMode,
    pub sandbox: SandboxMode,
    pub xattr: bool,
    pub posix_acl: bool,
    pub readonly: bool,
    pub writeback: bool,
    pub announce_submounts: bool,
    pub inode_file_handles: InodeFileHandles,
    pub thread_pool_size: usize,
    pub allow_direct_io: bool,
    pub killpriv_v2: bool,
    pub readdirplus: bool,
    pub rlimit_nofile: Option<u64>,
    /// Request queues besides the high-priority one.
    pub request_queues: usize,
    /// Owner translation between guest and host (`--translate-uid`,
    /// `--translate-gid`, `--uid-map`, `--gid-map`).
    pub uids: crate::idmap::IdMap,
    pub gids: crate::idmap::IdMap,
    /// `--security-label`: grant FUSE_SECURITY_CTX and label new files.
    pub security_label: Negotiation,
    /// `--preserve-noatime`: pass the guest's O_NOATIME on.
    pub preserve_noatime: bool,
    /// `--allow-mmap`: grant FUSE_DIRECT_IO_ALLOW_MMAP.
    pub allow_mmap: bool,
    /// `--xattrmap`: guest ↔ host xattr names.
    pub xattrmap: Option<crate::xattrmap::XattrMap>,
}

impl FsOptions {
    /// Applies virtiofsd's legacy `-o` list (comma-separated). Options that
    /// virtiofsd accepts but that change nothing here are accepted too;
    /// unknown ones are an error that names them.
    pub fn apply_legacy(&mut self, list: &str) -> Result<(), String> {
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            let need = || value.ok_or_else(|| format!("-o {key} needs a value ({key}=...)"));
            match key {
                "source" => self.shared_dir = Some(PathBuf::from(need()?)),
                "cache" => self.cache = need()?.parse()?,
                "xattr" => self.xattr = true,
                "no_xattr" => self.xattr = false,
                // As virtiofsd: a mapping implies xattr support.
                "security_label" => {
                    self.security_label = Negotiation::Always;
                    self.xattr = true;
                }
                "no_security_label" => self.security_label = Negotiation::Never,
                "xattrmap" => {
                    self.xattrmap = Some(crate::xattrmap::XattrMap::parse(need()?)?);
                    self.xattr = true;
                }
                "posix_acl" => self.posix_acl = true,
                "no_posix_acl" => self.posix_acl = false,
                "writeback" => self.writeback = true,
                "no_writeback" => self.writeback = false,
                "announce_submounts" => self.announce_submounts = true,
                "readdirplus" => self.readdirplus = true,
                "no_readdirplus" => self.readdirplus = false,
                "allow_direct_io" => self.allow_direct_io = true,
                "killpriv_v2" => self.killpriv_v2 = true,
                "no_killpriv_v2" => self.killpriv_v2 = false,
                "sandbox" => self.sandbox = need()?.parse()?,
                // Locking is done by the host kernel; flock/posix_lock are
                // accepted for compatibility and change nothing.
                "flock" | "no_flock" | "posix_lock" | "no_posix_lock" | "norace" | "log_level" | "timeout"
                | "thread_pool_size" => {
                    if key == "thread_pool_size" {
                        self.thread_pool_size = need()?
                            .parse()
                            .map_err(|_| format!("-o thread_pool_size={value:?}: not a number"))?;
                    }
                }
                _ => return Err(format!("-o {item}: unknown option (see `ferry fs --help`)")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_options_parse_and_unknown_ones_are_named() {
        let mut o = FsOptions {
            readdirplus: true,
            ..FsOptions::default()
        };
        o.apply_legacy("source=/srv,cache=always,xattr,no_posix_lock,no_readdirplus")
            .unwrap();
        assert_eq!(o.shared_dir.as_deref(), Some(std::path::Path::new("/srv")));
        assert_eq!(o.cache, CacheMode::Always);
        assert!(o.xattr && !o.readdirplus);
        let e = o.apply_legacy("cache=sometimes").unwrap_err();
        assert!(e.contains("sometimes"), "{e}");
        let e = o.apply_legacy("xattr,bogus_flag").unwrap_err();
        assert!(e.contains("bogus_flag"), "{e}");
        assert!(o.apply_legacy("source").unwrap_err().contains("source=..."));
    }
}
