//! Crash-safe file primitives: atomic replacement and an advisory lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

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
    Staged::write(path, contents)?.commit()
}

/// New contents for a file, written and flushed to disk under a temporary name beside it:
/// [`Staged::commit`] renames it into place (the step [`atomic_replace`] ends with); dropped
/// without that, the temporary file is removed. Lets the slow flush happen before the moment
/// the replacement may become visible.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    pub fn write(path: &Path, contents: &[u8]) -> io::Result<Staged> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let file_name = path
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
        let staged = Staged {
            tmp: parent(path)?.join(format!(
                ".{}.{}.{}.tmp",
                file_name.to_string_lossy(),
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )),
            path: path.to_path_buf(),
            committed: false,
        };
        let mut f = File::create(&staged.tmp)?;
        f.write_all(contents)?;
        f.sync_data()?;
        Ok(staged)
    }

    /// Renames the flushed file over the target.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
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
    fn staged_contents_appear_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        atomic_write(&p, b"old").unwrap();
        let staged = Staged::write(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"old");
        staged.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        drop(Staged::write(&p, b"dropped").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
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
