//! Wakes a pass within two seconds when the node changes under the agent: a link, address,
//! route or rule (rtnetlink notifications), a file in the CNI configuration directory, or a
//! forwarding setting. Passes run the node checks, so a leftover bridge, a foreign conflist
//! or forwarding turned off is named in seconds rather than at the next resync (10 s). At
//! most one wake-up per round, so a burst of changes (pods starting) costs one pass.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sinew_node_lib::kernel_watch::KernelWatch;
use tokio::sync::Notify;

const ROUND_EVERY: Duration = Duration::from_secs(2);

/// What the agent wants watched besides the kernel's network configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    pub conf_dir: Option<PathBuf>,
    /// Setting files and the value each must have.
    pub settings: Vec<(PathBuf, String)>,
}

#[derive(Clone)]
pub struct NodeWatch {
    watched: Arc<Mutex<Watched>>,
}

type Listing = Vec<(String, u64, Option<SystemTime>)>;

/// The directory's entries with their sizes and modification times (`None` if unreadable).
fn listing(dir: &Path) -> Option<Listing> {
    let mut entries: Listing = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = e.metadata().ok();
            Some((
                e.file_name().to_string_lossy().into_owned(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            ))
        })
        .collect();
    entries.sort();
    Some(entries)
}

impl NodeWatch {
    /// Starts the watching thread in this process's network namespace.
    pub fn start(wake: Arc<Notify>) -> std::io::Result<NodeWatch> {
        let kernel = KernelWatch::new()?;
        let sentinel = NodeWatch {
            watched: Arc::new(Mutex::new(Watched::default())),
        };
        let watched = sentinel.watched.clone();
        std::thread::Builder::new()
            .name("sinew-sentinel".into())
            .spawn(move || {
                let mut last: Option<(PathBuf, Option<Listing>)> = None;
                loop {
                    std::thread::sleep(ROUND_EVERY);
                    let w = watched
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let mut changed = kernel.changed().unwrap_or(false);
                    if let Some(dir) = &w.conf_dir {
                        let now = listing(dir);
                        changed |= last.as_ref().is_some_and(|(d, l)| d == dir && *l != now);
                        last = Some((dir.clone(), now));
                    }
                    changed |= w.settings.iter().any(|(path, value)| {
                        std::fs::read_to_string(path).is_ok_and(|v| v.trim() != value)
                    });
                    if changed {
                        wake.notify_one();
                    }
                }
            })?;
        Ok(sentinel)
    }

    /// Sets what to watch (each pass).
    pub fn watch(&self, watched: Watched) {
        *self.watched.lock().unwrap_or_else(PoisonError::into_inner) = watched;
    }
}
