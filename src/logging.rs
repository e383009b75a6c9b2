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
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(match file {
        Some(f) => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f)),
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    });
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
