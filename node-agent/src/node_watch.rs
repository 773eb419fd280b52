//! Wakes a pass within two seconds when the node changes under the agent: a link, address,
//! route or rule someone else changed (rtnetlink notifications; the agent's own changes are
//! told apart by the port of the socket that made them), a file in the CNI configuration directory, or a
//! forwarding setting. Passes run the node checks, so a leftover bridge, a foreign conflist
//! or forwarding turned off is named in seconds rather than at the next resync (10 s). At
//! most one wake-up per round, so a burst of changes (pods starting) costs one pass.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Someone other than this agent changed the kernel's network configuration since
    /// [`NodeWatch::take_kernel_changed`] last looked.
    kernel_changed: Arc<AtomicBool>,
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
            kernel_changed: Arc::new(AtomicBool::new(true)),
        };
        let watched = sentinel.watched.clone();
        let kernel_changed = sentinel.kernel_changed.clone();
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
                    // The agent's own changes (its peer routes) wake nothing: the pass that
                    // made them knows them. An unreadable socket wakes nothing either (as
                    // before), but the next pass compares the whole kernel.
                    let kernel_now = kernel.changed();
                    let mut changed = kernel_now.as_ref().is_ok_and(|c| c.by_others);
                    if changed || kernel_now.is_err() {
                        kernel_changed.store(true, Ordering::SeqCst);
                    }
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

    /// Whether someone other than this agent changed the kernel's links, addresses, routes
    /// or rules since the last call (true at first): then a pass checks the kernel whole.
    pub fn take_kernel_changed(&self) -> bool {
        self.kernel_changed.swap(false, Ordering::SeqCst)
    }

    /// Sets what to watch (each pass).
    pub fn watch(&self, watched: Watched) {
        *self.watched.lock().unwrap_or_else(PoisonError::into_inner) = watched;
    }

    /// Test seam: a watch without its thread, told by the test when someone else changed
    /// the kernel.
    #[cfg(test)]
    pub fn by_hand() -> NodeWatch {
        NodeWatch {
            watched: Arc::default(),
            kernel_changed: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Test seam: someone other than the agent changed the kernel.
    #[cfg(test)]
    pub fn kernel_changed_by_others(&self) {
        self.kernel_changed.store(true, Ordering::SeqCst);
    }

    /// Test seam: what the agent last asked to be watched.
    #[cfg(test)]
    pub fn watched(&self) -> Watched {
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
