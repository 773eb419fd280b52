//! Plugin logging: to the configured file (appended) or to stderr, never to stdout, which
//! belongs to the CNI result.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// Installs the global subscriber. Falls back to stderr if the file cannot be opened.
pub fn init(file: Option<&Path>, level: LogLevel) {
    let filter = EnvFilter::new(level.as_str());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let opened = file.and_then(|p| {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        OpenOptions::new().create(true).append(true).open(p).ok()
    });
    let _ = match opened {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
