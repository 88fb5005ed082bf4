//! Installs the logging subscriber (JSON or text on stderr; `RUST_LOG` filters). Text carries
//! colour codes only when stderr is a terminal, so a log file or journal never holds them.

use std::io::IsTerminal;

use crate::config::{Log, LogFormat};

/// Installs the global tracing subscriber (JSON or text on stderr; `RUST_LOG` filters).
pub fn init_logging(log: &Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
