//! Crash-safe file primitives: atomic replacement and an advisory lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Replaces `path` with `contents` so that a reader (or a crash at any instant) sees either
/// the old file or the new one, never a mix: [`atomic_replace`], then fsync the directory so
/// the new file also survives a power loss.
pub fn atomic_write(path: &Path, contents: &[u8]) -> io::Result<()> {
    atomic_replace(path, contents)?;
    File::open(parent(path)?)?.sync_all()
}

/// Replaces `path` with `contents` atomically: write a temporary file in the same directory,
/// fsync its data, rename it over `path`. A reader, a kill -9 or a power loss at any instant
/// leaves either the old file or the new one, never a mix. Unlike [`atomic_write`] the
/// directory is not fsynced: after a power loss the old file may come back, until the file
/// system commits the rename on its own (seconds later).
pub fn atomic_replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent(path)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_data()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))
}

/// An exclusive `flock` on a lock file, released on drop (and by the kernel if the process
/// dies, so a kill -9 never leaves the store locked).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        loop {
            // SAFETY: flock on a valid descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        atomic_replace(&p, b"three").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn lock_is_exclusive_between_handles() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = FileLock::acquire(&p).unwrap();
        let f = OpenOptions::new().read(true).open(&p).unwrap();
        // SAFETY: test-only flock probe on a valid descriptor.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, -1, "a second exclusive lock must not be granted");
        drop(held);
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0);
    }
}
