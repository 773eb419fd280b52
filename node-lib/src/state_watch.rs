//! Wake-ups when the plugin changes node-local state (inotify): the IPAM store replaced by an
//! ADD or DEL, or a block requested. The agent reports allocations within milliseconds of an
//! ADD instead of at its next poll.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// An inotify instance watching the store directory and the block request directory.
#[derive(Debug)]
pub struct StateWatch {
    fd: OwnedFd,
}

/// Directories under the state directory whose changes matter, created if missing.
const WATCHED: [&str; 2] = ["ipam", "requests"];

impl StateWatch {
    pub fn new(state_dir: &Path) -> io::Result<StateWatch> {
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor this value now owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for dir in WATCHED {
            let path = state_dir.join(dir);
            fs::create_dir_all(&path)?;
            let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(io::Error::other)?;
            let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE | libc::IN_DELETE;
            // SAFETY: the descriptor is open and `c_path` is NUL-terminated for the call.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), mask) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(StateWatch { fd })
    }

    /// Blocks until at least one change happened (and consumes every pending event). Taking
    /// and releasing the store's lock file is not a change: every pass of the agent takes it
    /// (and closing a file opened for writing is an inotify event).
    pub fn wait(&self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of its length; the descriptor is open.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let events = buf.get(..n as usize).unwrap_or_default();
                if changes_something(events) {
                    return Ok(());
                }
                continue;
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if n == 0 {
                io::Error::new(io::ErrorKind::UnexpectedEof, "inotify descriptor closed")
            } else {
                e
            });
        }
    }
}

/// The name of the lock file beside the store.
const LOCK_FILE: &[u8] = b"lock";

/// Whether a buffer of inotify events (`struct inotify_event`: wd, mask, cookie, len, then a
/// NUL-padded name of `len` bytes) holds an event for anything but the lock file.
fn changes_something(mut events: &[u8]) -> bool {
    const HEADER: usize = 16;
    while events.len() >= HEADER {
        let len = u32::from_ne_bytes([events[12], events[13], events[14], events[15]]) as usize;
        let Some(name) = events.get(HEADER..HEADER + len) else {
            return true;
        };
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        if name != LOCK_FILE {
            return true;
        }
        events = &events[HEADER + len..];
    }
    // A truncated event: count it as a change (a wake too many costs a pass, one too few a pod).
    !events.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Store;

    fn event(name: &[u8]) -> Vec<u8> {
        let padded = name.len().div_ceil(16) * 16;
        let mut out = Vec::new();
        out.extend(1i32.to_ne_bytes());
        out.extend((libc::IN_CLOSE_WRITE).to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.extend((padded as u32).to_ne_bytes());
        out.extend(name);
        out.resize(16 + padded, 0);
        out
    }

    #[test]
    fn the_lock_file_alone_changes_nothing() {
        assert!(!changes_something(&event(b"lock")));
        assert!(!changes_something(
            &[event(b"lock"), event(b"lock")].concat()
        ));
        assert!(changes_something(
            &[event(b"lock"), event(b"store.json")].concat()
        ));
        assert!(changes_something(&event(b"locks")));
        assert!(changes_something(&event(b"lock")[..10]));
    }

    /// The agent's passes take the store's lock without changing the store: that wakes no one.
    #[test]
    fn taking_the_lock_without_a_change_wakes_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store
            .update(|s| s.retired.insert("10.0.0.0/26".into()))
            .unwrap();
        let watch = StateWatch::new(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while watch.wait().is_ok() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        store.update(|s| s.retired.len()).unwrap();
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "woken by a lock taken and released"
        );
        store.update(|s| s.retired.clear()).unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(1))
            .expect("woken by the change");
    }

    #[test]
    fn a_store_update_and_a_block_request_wake_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let watch = StateWatch::new(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while watch.wait().is_ok() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        let second = std::time::Duration::from_secs(1);
        Store::new(dir.path())
            .update(|s| s.retired.insert("10.0.0.0/26".into()))
            .unwrap();
        rx.recv_timeout(second).expect("woken by the store");
        while rx.try_recv().is_ok() {}
        crate::node_state::request_block(dir.path(), "p").unwrap();
        rx.recv_timeout(second).expect("woken by the request");
    }
}
