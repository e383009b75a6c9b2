//! Builds the guest kernel command line with the `ferry.*` keys guest-init
//! reads (documented in docs/guest.md).

/// x86's COMMAND_LINE_SIZE, including the terminating NUL.
const MAX_CMDLINE: usize = 2048;

/// Kernel arguments every ferry guest gets: serial console, quiet boot, and
/// an immediate reboot (which QEMU's -no-reboot turns into exit) on panic.
const BASE: &str = "console=ttyS0 quiet loglevel=3 panic=-1 reboot=t";

/// Percent-encodes everything but a conservative set of characters, so the
/// value survives the kernel's word splitting and our `,` list separator.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"._/:=+@-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Clone, Debug, Default)]
pub struct GuestCmdline {
    words: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("the guest kernel command line would be {0} bytes, over the kernel's limit of {MAX_CMDLINE}; shorten the command, environment or mounts")]
pub struct CmdlineTooLong(pub usize);

impl GuestCmdline {
    pub fn new() -> Self {
        GuestCmdline::default()
    }

    /// The workload's argv.
    pub fn command(&mut self, argv: &[String]) -> &mut Self {
        if !argv.is_empty() {
            let list: Vec<String> = argv.iter().map(|a| encode(a)).collect();
            self.words.push(format!("ferry.cmd={}", list.join(",")));
        }
        self
    }

    /// A `ferry.KEY=VALUE` pair; the value is encoded.
    pub fn key(&mut self, key: &str, value: &str) -> &mut Self {
        self.words.push(format!("ferry.{key}={}", encode(value)));
        self
    }

    /// Raw words appended as given (for `ferry run --append`).
    pub fn raw(&mut self, word: &str) -> &mut Self {
        self.words.push(word.to_string());
        self
    }

    pub fn build(&self) -> Result<String, CmdlineTooLong> {
        let mut line = BASE.to_string();
        for w in &self.words {
            line.push(' ');
            line.push_str(w);
        }
        if line.len() >= MAX_CMDLINE {
            return Err(CmdlineTooLong(line.len()));
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_separators_and_spaces() {
        assert_eq!(encode("echo a,b %x\"y'"), "echo%20a%2Cb%20%25x%22y%27");
        let line = GuestCmdline::new()
            .command(&["sh".into(), "-c".into(), "exit 3".into()])
            .key("hostname", "web")
            .build()
            .unwrap();
        assert!(line.ends_with("ferry.cmd=sh,-c,exit%203 ferry.hostname=web"), "{line}");
    }

    #[test]
    fn refuses_overlong_lines() {
        let big = "x".repeat(3000);
        assert!(GuestCmdline::new().command(&[big]).build().is_err());
    }
}
