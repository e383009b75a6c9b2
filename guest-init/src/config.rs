//! The guest's configuration, read from the kernel command line.
//!
//! Every key guest-init understands starts with `ferry.`; other words on the
//! command line belong to the kernel and are ignored. Values are
//! percent-encoded so that spaces, commas and quotes survive the kernel's own
//! word splitting. The keys are documented in docs/guest.md.

use std::fmt;

/// How the guest's network is brought up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// Leave interfaces down except loopback.
    None,
    /// Run busybox `udhcpc` on the first Ethernet interface.
    Dhcp,
    /// Fixed address: `static:ADDR/PREFIX,GATEWAY[,DNS]`.
    Static {
        addr: String,
        gateway: String,
        dns: Option<String>,
    },
}

/// One virtio-fs share to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub tag: String,
    pub path: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The workload's argv; empty means an interactive shell.
    pub argv: Vec<String>,
    pub hostname: String,
    pub net: NetMode,
    pub mounts: Vec<Mount>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// Modules to load in addition to those listed in the image.
    pub modules: Vec<String>,
    /// virtio-fs tag of a directory to use as the root file system (read
    /// only, with a writable overlay in guest memory).
    pub rootfs: Option<String>,
    /// Report listening ports to the host (`ferry run --publish-auto`).
    pub publish_auto: bool,
    /// `ferry run --platform` without a root tree: the image's foreign
    /// busybox provides the workload's tools.
    pub platform: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            argv: Vec::new(),
            hostname: "ferry".to_string(),
            net: NetMode::None,
            mounts: Vec::new(),
            env: Vec::new(),
            cwd: None,
            modules: Vec::new(),
            rootfs: None,
            publish_auto: false,
            platform: false,
        }
    }
}

/// A configuration the guest cannot run with; the message is printed as-is.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Decodes `%XX` escapes; anything else passes through unchanged.
pub fn percent_decode(s: &str) -> Result<String, ConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                None => return err(format!("bad percent escape in {s:?}")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).or_else(|_| err(format!("{s:?} does not decode to UTF-8")))
}

fn split_list(value: &str) -> Result<Vec<String>, ConfigError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value.split(',').map(percent_decode).collect()
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn parse_net(value: &str) -> Result<NetMode, ConfigError> {
    match value {
        "none" => return Ok(NetMode::None),
        "dhcp" => return Ok(NetMode::Dhcp),
        _ => {}
    }
    let Some(rest) = value.strip_prefix("static:") else {
        return err(format!(
            "ferry.net={value:?}: expected none, dhcp or static:ADDR/PREFIX,GATEWAY[,DNS]"
        ));
    };
    let parts: Vec<&str> = rest.split(',').collect();
    let (addr, gateway, dns) = match parts.as_slice() {
        [a, g] => (*a, *g, None),
        [a, g, d] => (*a, *g, Some(d.to_string())),
        _ => {
            return err(format!(
                "ferry.net={value:?}: expected static:ADDR/PREFIX,GATEWAY[,DNS]"
            ))
        }
    };
    let ok_addr = addr
        .split_once('/')
        .is_some_and(|(ip, p)| ip.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 32));
    if !ok_addr || gateway.parse::<std::net::Ipv4Addr>().is_err() {
        return err(format!(
            "ferry.net={value:?}: address must be IPv4 ADDR/PREFIX and gateway an IPv4 address"
        ));
    }
    Ok(NetMode::Static {
        addr: addr.to_string(),
        gateway: gateway.to_string(),
        dns,
    })
}

fn parse_mount(value: &str) -> Result<Mount, ConfigError> {
    let mut parts = value.splitn(3, ':');
    let tag = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return err(format!(
                "ferry.mount={value:?}: unknown option {other:?}, expected ro or rw"
            ))
        }
    };
    let path = percent_decode(path)?;
    if tag.is_empty() || !path.starts_with('/') {
        return err(format!("ferry.mount={value:?}: expected TAG:/absolute/path[:ro]"));
    }
    Ok(Mount {
        tag: percent_decode(tag)?,
        path,
        read_only,
    })
}

impl Config {
    /// Parses the whole kernel command line (as in /proc/cmdline).
    pub fn from_cmdline(cmdline: &str) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(item) = word.strip_prefix("ferry.") else {
                continue;
            };
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            match key {
                "cmd" => cfg.argv = split_list(value)?,
                "hostname" => {
                    let name = percent_decode(value)?;
                    if !valid_hostname(&name) {
                        return err(format!("ferry.hostname={value:?}: not a valid host name"));
                    }
                    cfg.hostname = name;
                }
                "net" => cfg.net = parse_net(value)?,
                "mount" => cfg.mounts.push(parse_mount(value)?),
                "rootfs" => {
                    let tag = percent_decode(value)?;
                    if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        return err(format!("ferry.rootfs={value:?}: not a virtio-fs tag"));
                    }
                    cfg.rootfs = Some(tag);
                }
                "env" => {
                    let decoded = percent_decode(value)?;
                    match decoded.split_once('=') {
                        Some((k, v)) if !k.is_empty() => cfg.env.push((k.to_string(), v.to_string())),
                        _ => return err(format!("ferry.env={value:?}: expected KEY=VALUE")),
                    }
                }
                "cwd" => {
                    let dir = percent_decode(value)?;
                    if !dir.starts_with('/') {
                        return err(format!("ferry.cwd={value:?}: must be an absolute path"));
                    }
                    cfg.cwd = Some(dir);
                }
                "modules" => cfg.modules.extend(split_list(value)?),
                "publish_auto" => cfg.publish_auto = value == "1",
                "platform" => cfg.platform = value == "1",
                // Read again at the end by sys::power_off.
                "halt" if matches!(value, "poweroff" | "reboot") => {}
                "halt" => return err(format!("ferry.halt={value:?}: expected poweroff or reboot")),
                _ => return err(format!("unknown key ferry.{key} (see docs/guest.md for the keys)")),
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let cfg = Config::from_cmdline(
            "console=ttyS0 quiet ferry.cmd=sh,-c,echo%20hi%2Cthere ferry.hostname=web \
             ferry.net=static:10.0.2.2/24,10.0.2.1,10.0.2.1 ferry.mount=src:/src ferry.mount=data:/data:ro \
             ferry.env=A%3Db=c ferry.cwd=/src ferry.modules=fuse ferry.halt=reboot",
        )
        .unwrap();
        assert_eq!(cfg.argv, ["sh", "-c", "echo hi,there"]);
        assert_eq!(cfg.hostname, "web");
        assert_eq!(
            cfg.net,
            NetMode::Static {
                addr: "10.0.2.2/24".into(),
                gateway: "10.0.2.1".into(),
                dns: Some("10.0.2.1".into())
            }
        );
        assert_eq!(cfg.mounts.len(), 2);
        assert!(cfg.mounts[1].read_only);
        assert_eq!(cfg.env, [("A".to_string(), "b=c".to_string())]);
        assert_eq!(cfg.cwd.as_deref(), Some("/src"));
        assert_eq!(cfg.modules, ["fuse"]);
    }

    #[test]
    fn ignores_kernel_words() {
        assert_eq!(
            Config::from_cmdline("ro root=/dev/vda panic=-1").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "ferry.bogus=1",
            "ferry.net=wat",
            "ferry.net=static:10.0.0.2,10.0.0.1",
            "ferry.mount=nopath",
            "ferry.mount=tag:relative",
            "ferry.mount=tag:/x:rx",
            "ferry.cmd=%zz",
            "ferry.cmd=%4",
            "ferry.env=novalue",
            "ferry.hostname=bad%20name",
            "ferry.cwd=rel",
            "ferry.cmd=%ff",
            "ferry.halt=sometimes",
        ] {
            assert!(Config::from_cmdline(bad).is_err(), "{bad} should be rejected");
        }
    }
}
