//! Plugin logging: to the configured file (appended) or to stderr, never to stdout, which
//! belongs to the CNI result.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;

use crate::config::LogLevel;

/// Size at which the log file is rotated to `<file>.1` (one generation kept), so a node's
/// plugin log stays under twice this size however many pods come and go.
const ROTATE_AT: u64 = 8 << 20;

/// Moves `path` to `<path>.1` once it reached [`ROTATE_AT`] (one `stat` per invocation).
fn rotate(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= ROTATE_AT) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(path, old);
    }
}

/// Installs the global subscriber. Falls back to stderr if the file cannot be opened.
pub fn init(file: Option<&Path>, level: LogLevel) {
    // A plain level: no directive parsing (an `EnvFilter` costs ~0.1 ms per invocation).
    let filter = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_ansi(false)
        .with_target(false);
    let opened = file.and_then(|p| {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        rotate(p);
        OpenOptions::new().create(true).append(true).open(p).ok()
    });
    let _ = match opened {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_log_is_rotated_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("cni.log");
        std::fs::write(&log, vec![b'x'; ROTATE_AT as usize]).unwrap();
        rotate(&log);
        assert!(!log.exists());
        assert_eq!(
            std::fs::metadata(dir.path().join("cni.log.1"))
                .unwrap()
                .len(),
            ROTATE_AT
        );
        std::fs::write(&log, b"small").unwrap();
        rotate(&log);
        assert!(log.exists(), "a small log stays");
    }
}
