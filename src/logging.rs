//! Logging to stderr through tracing.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Debug, Default, Args)]
pub struct LogOptions {
    /// Log level: error, warn, info, debug or trace, or a full filter such
    /// as `info,ferry_net=debug`. Overrides RUST_LOG when given.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Send log lines to syslog(3) instead of stderr (virtiofsd's
    /// `--syslog`; set by that front end).
    #[arg(skip)]
    pub syslog: bool,
}

/// Log lines to syslog(3), each at its event's priority, as the
/// `virtiofsd` ident (what `virtiofsd --syslog` writes). Written with libc's
/// syslog(3) rather than a crate: one call, and it follows the host's
/// /dev/log wherever libc's does.
#[cfg(unix)]
struct Syslog;

/// What syslog(3) calls after start-up (it connects to /dev/log lazily),
/// for the seccomp allow-list of a mode logging to syslog.
#[cfg(target_os = "linux")]
pub const SYSLOG_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_getpid,
    libc::SYS_openat,
];

#[cfg(unix)]
struct SyslogLine {
    priority: libc::c_int,
    buf: Vec<u8>,
}

#[cfg(unix)]
impl std::io::Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text: Vec<u8> = self.buf.iter().copied().filter(|b| *b != 0 && *b != b'\n').collect();
        if let Ok(line) = std::ffi::CString::new(text) {
            // SAFETY: syslog(3) with a constant "%s" format and one valid
            // NUL-terminated argument.
            unsafe { libc::syslog(self.priority, c"%s".as_ptr(), line.as_ptr()) };
        }
    }
}

#[cfg(unix)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let priority = match *meta.level() {
            tracing::Level::ERROR => libc::LOG_ERR,
            tracing::Level::WARN => libc::LOG_WARNING,
            tracing::Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buf: Vec::new(),
        }
    }
}

/// Precedence: --log-level, then RUST_LOG, then `info`.
pub fn init(opts: &LogOptions) {
    init_to(opts, None);
}

/// Like `init`, writing to `file` instead of stderr when given.
pub fn init_to(opts: &LogOptions, file: Option<std::fs::File>) {
    if tracing::dispatcher::has_been_set() {
        // `ferry gvproxy ...`: main already set logging up.
        return;
    }
    let filter = match &opts.log_level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("ferry: ignoring --log-level {level:?} ({e}); using info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    let ansi = file.is_none() && !opts.syslog && std::io::stderr().is_terminal();
    let writer = match file {
        Some(f) => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f)),
        #[cfg(unix)]
        None if opts.syslog => {
            // SAFETY: openlog(3) with a 'static ident, as it requires.
            unsafe { libc::openlog(c"virtiofsd".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(Syslog)
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let result = match opts.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        eprintln!("ferry: logging setup failed: {e}");
    }
}
