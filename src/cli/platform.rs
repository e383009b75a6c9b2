//! `ferry run --platform linux/ARCH` and `--binfmt ARCH,...`: foreign-
//! architecture binaries in the guest through qemu-user and binfmt_misc,
//! as Docker Desktop and Lima's `qus` do.
//!
//! From the host's Debian `qemu-user-static`: the static interpreter
//! (`/usr/bin/qemu-ARCH-static`) goes into the guest image as
//! `/usr/libexec/qemu-binfmt/ARCH-binfmt-P` (the name tells qemu that the
//! kernel preserves argv[0]), and the package's own binfmt rule
//! (`/usr/lib/binfmt.d/qemu-ARCH.conf`: the ELF magic and mask) as
//! `/etc/ferry/binfmt/qemu-ARCH`, with flags `POCF`: P keeps argv[0],
//! O and C open the binary for the interpreter and take credentials from
//! it (set-uid binaries keep their semantics), F opens the interpreter once
//! at registration, so chroots, `--rootfs` trees and containers in the
//! guest find it without carrying it. guest-init registers the rules.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Docker platform names and the qemu architecture each maps to.
const PLATFORMS: &[(&str, &str)] = &[
    ("linux/arm64", "aarch64"),
    ("linux/arm64/v8", "aarch64"),
    ("linux/arm", "arm"),
    ("linux/arm/v7", "arm"),
    ("linux/arm/v6", "arm"),
    ("linux/riscv64", "riscv64"),
    ("linux/ppc64le", "ppc64le"),
    ("linux/s390x", "s390x"),
    ("linux/386", "i386"),
    ("linux/mips64le", "mips64el"),
    ("linux/loong64", "loongarch64"),
];

/// Debian's name for a qemu architecture (for `apt-get download`).
fn debian_arch(arch: &str) -> &str {
    match arch {
        "aarch64" => "arm64",
        "arm" => "armhf",
        "ppc64le" => "ppc64el",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// A static busybox for `arch`: ferry's cached copy, else Debian's
/// `busybox-static:ARCH` fetched once with `apt-get download` when that
/// architecture is enabled in apt (ferry does not change the host's apt
/// configuration itself). None if neither is possible.
pub fn cached_busybox(arch: &str, cache: &Path, progress: &mut dyn FnMut(&str)) -> Option<PathBuf> {
    let dir = cache.join("platform").join(arch);
    let bin = dir.join("bin/busybox");
    if bin.is_file() {
        return Some(bin);
    }
    let deb = debian_arch(arch);
    let tmp = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).ok()?;
    progress(&format!(
        "fetching Debian's busybox-static:{deb} for --platform (once; cached in {})",
        dir.display()
    ));
    let fetched = std::process::Command::new("apt-get")
        .args(["download", &format!("busybox-static:{deb}")])
        .current_dir(&tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let package = std::fs::read_dir(&tmp)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    let unpacked = fetched
        && package.is_some_and(|p| {
            std::process::Command::new("dpkg-deb")
                .arg("-x")
                .arg(p)
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success())
        });
    let _ = std::fs::remove_dir_all(&tmp);
    (unpacked && bin.is_file()).then_some(bin)
}

/// Where the guest finds what `--platform` adds.
pub const GUEST_BUSYBOX: &str = "usr/lib/ferry/platform/busybox";

/// The qemu architecture for a platform; None for the host's own.
pub fn arch_of(platform: &str) -> anyhow::Result<Option<&'static str>> {
    let p = platform.to_ascii_lowercase();
    if matches!(
        p.as_str(),
        "linux/amd64" | "linux/x86_64" | "linux/amd64/v2" | "linux/amd64/v3"
    ) {
        return Ok(None);
    }
    PLATFORMS
        .iter()
        .find(|(name, _)| *name == p)
        .map(|(_, arch)| Some(*arch))
        .with_context(|| {
            let known: Vec<&str> = PLATFORMS.iter().map(|(n, _)| *n).collect();
            format!(
                "--platform {platform:?}: unknown platform; known: linux/amd64, {}",
                known.join(", ")
            )
        })
}

/// `--binfmt` names: qemu architectures or platforms.
pub fn arch_name(name: &str) -> anyhow::Result<String> {
    if name.contains('/') {
        return Ok(arch_of(name)?.unwrap_or("x86_64").to_string());
    }
    let known = PLATFORMS.iter().any(|(_, a)| *a == name);
    anyhow::ensure!(
        known,
        "--binfmt {name:?}: unknown architecture; known: {}",
        PLATFORMS
            .iter()
            .map(|(_, a)| *a)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(name.to_string())
}

/// Where the host's qemu-user-static lives (`FERRY_QEMU_USER_DIR` moves
/// it, for tests and unusual installs).
fn qemu_dirs() -> (PathBuf, PathBuf) {
    match std::env::var_os("FERRY_QEMU_USER_DIR") {
        Some(d) => (PathBuf::from(&d), PathBuf::from(d)),
        None => (PathBuf::from("/usr/bin"), PathBuf::from("/usr/lib/binfmt.d")),
    }
}

/// One parsed binfmt rule: `:name:M:offset:magic:mask:interpreter:flags`.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub offset: String,
    pub magic: String,
    pub mask: String,
}

impl Rule {
    pub fn parse(line: &str) -> Option<Rule> {
        let f: Vec<&str> = line.trim().split(':').collect();
        // ["", name, "M", offset, magic, mask, interpreter, flags]
        if f.len() != 8 || !f[0].is_empty() || f[2] != "M" {
            return None;
        }
        Some(Rule {
            name: f[1].to_string(),
            offset: f[3].to_string(),
            magic: f[4].to_string(),
            mask: f[5].to_string(),
        })
    }

    /// The registration line for the guest's interpreter path.
    pub fn line(&self, interpreter: &str) -> String {
        format!(
            ":{}:M:{}:{}:{}:{interpreter}:POCF\n",
            self.name, self.offset, self.magic, self.mask
        )
    }

    /// Whether the binary `data` is one this rule hands to its interpreter.
    pub fn matches(&self, data: &[u8]) -> bool {
        let (Some(magic), Some(mask)) = (unescape(&self.magic), unescape(&self.mask)) else {
            return false;
        };
        let off: usize = self.offset.parse().unwrap_or(0);
        magic.iter().enumerate().all(|(i, &m)| {
            let k = mask.get(i).copied().unwrap_or(0xff);
            data.get(off + i).is_some_and(|&b| b & k == m & k)
        })
    }
}

/// `\x7f\x45...` (binfmt_misc's escapes) as bytes.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(hex) = rest.strip_prefix("\\x") {
            out.push(u8::from_str_radix(hex.get(..2)?, 16).ok()?);
            rest = &hex[2..];
        } else {
            let c = rest.chars().next()?;
            out.push(u8::try_from(c).ok()?);
            rest = &rest[c.len_utf8()..];
        }
    }
    Some(out)
}

/// A file for the guest image: (path in the guest, contents, mode).
pub type ImageFile = (String, Vec<u8>, u32);

/// The image files for `arch`: the interpreter and its rule.
pub fn binfmt_files(arch: &str) -> anyhow::Result<(Rule, Vec<ImageFile>)> {
    let (bin_dir, conf_dir) = qemu_dirs();
    let interp_host = bin_dir.join(format!("qemu-{arch}-static"));
    let missing = |what: &Path, e: std::io::Error| {
        anyhow::anyhow!(
            "{arch} binaries need qemu-user-static: {} is missing ({e}); install it with `apt-get install qemu-user-static`",
            what.display()
        )
    };
    let interp = std::fs::read(&interp_host).map_err(|e| missing(&interp_host, e))?;
    let conf_path = conf_dir.join(format!("qemu-{arch}.conf"));
    let conf = std::fs::read_to_string(&conf_path).map_err(|e| missing(&conf_path, e))?;
    let rule = conf
        .lines()
        .find_map(Rule::parse)
        .with_context(|| format!("{}: no binfmt rule in it", conf_path.display()))?;
    let guest_interp = format!("/usr/libexec/qemu-binfmt/{arch}-binfmt-P");
    let files = vec![
        (guest_interp.trim_start_matches('/').to_string(), interp, 0o755),
        (
            format!("etc/ferry/binfmt/qemu-{arch}"),
            rule.line(&guest_interp).into_bytes(),
            0o644,
        ),
    ];
    Ok((rule, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = ":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF";

    #[test]
    fn rules_and_platforms() {
        let r = Rule::parse(DEBIAN).unwrap();
        assert_eq!(r.name, "qemu-aarch64");
        let line = r.line("/usr/libexec/qemu-binfmt/aarch64-binfmt-P");
        assert!(
            line.ends_with(":/usr/libexec/qemu-binfmt/aarch64-binfmt-P:POCF\n"),
            "{line}"
        );
        let mut elf = vec![
            0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0xb7, 0,
        ];
        assert!(r.matches(&elf));
        elf[18] = 0x3e; // x86-64
        assert!(!r.matches(&elf));
        assert!(!r.matches(b"\x7fELF"));
        assert_eq!(arch_of("linux/arm64").unwrap(), Some("aarch64"));
        assert_eq!(arch_of("linux/amd64").unwrap(), None);
        assert!(arch_of("linux/sparc")
            .unwrap_err()
            .to_string()
            .contains("known: linux/amd64"));
        assert_eq!(arch_name("riscv64").unwrap(), "riscv64");
        assert!(arch_name("z80").is_err());
        assert!(Rule::parse("garbage").is_none());
    }
}
