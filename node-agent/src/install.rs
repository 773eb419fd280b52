//! Atomic installation of the plugin binary and the conflist, and the report of what the
//! container runtime will actually use.
//!
//! Files are written to a hidden temporary name in the target directory (runtimes read only
//! `*.conf`, `*.conflist` and `*.json`, and never a dot file), fsynced, and `rename(2)`d into
//! place, then the directory is fsynced: a reader sees the old file or the new one, never half
//! of either. A binary is replaced by rename, never rewritten in place, so a running plugin
//! keeps its old inode and nothing ever hits ETXTBSY. Unchanged content is not rewritten.
//! Other vendors' files are never renamed or deleted: they are reported.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Whether an install changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Unchanged,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn temp_path(target: &Path) -> io::Result<PathBuf> {
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", target.display())))?;
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", target.display())))?;
    Ok(dir.join(format!(
        ".{}.sinew-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Removes temporaries of `target` left by installs that were killed mid-way.
fn sweep_temporaries(target: &Path) -> io::Result<()> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(());
    };
    let prefix = format!(".{}.sinew-", name.to_string_lossy());
    for entry in fs::read_dir(dir)?.filter_map(Result::ok) {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Atomically places `contents` at `target` with `mode`, unless it already has them.
pub fn install_file(target: &Path, contents: &[u8], mode: u32) -> io::Result<Outcome> {
    if target.parent().is_some_and(Path::is_dir) {
        sweep_temporaries(target)?;
    }
    if let Ok(existing) = fs::read(target)
        && existing == contents
        && fs::metadata(target).is_ok_and(|m| m.permissions().mode() & 0o777 == mode)
    {
        return Ok(Outcome::Unchanged);
    }
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", target.display())))?;
    fs::create_dir_all(dir)?;
    let tmp = temp_path(target)?;
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, target)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| Outcome::Written)
}

/// Removes `target` if it exists (and syncs its directory).
pub fn remove_file(target: &Path) -> io::Result<bool> {
    match fs::remove_file(target) {
        Ok(()) => {
            if let Some(dir) = target.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// What the runtime sees in the conf directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfReport {
    /// The file the runtime loads: the lexicographically first config file.
    pub chosen: Option<String>,
    /// Config files sorting before ours: they win over sinew.
    pub shadowing: Vec<String>,
    /// Every other config file (not used while ours or a shadowing one exists).
    pub others: Vec<String>,
}

impl ConfReport {
    pub fn ours_wins(&self, ours: &str) -> bool {
        self.chosen.as_deref() == Some(ours)
    }
}

/// Lists the conf directory the way libcni does (`.conf`, `.conflist`, `.json`, sorted).
pub fn conf_report(conf_dir: &Path, ours: &str) -> io::Result<ConfReport> {
    let mut files: Vec<String> = match fs::read_dir(conf_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                [".conf", ".conflist", ".json"]
                    .iter()
                    .any(|ext| n.ends_with(ext))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    let chosen = files.first().cloned();
    let (shadowing, others) = files
        .into_iter()
        .filter(|f| f != ours)
        .partition(|f| f.as_str() < ours);
    Ok(ConfReport {
        chosen,
        shadowing,
        others,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_and_skips_unchanged_content() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("10-sinew.conflist");
        assert_eq!(install_file(&t, b"{}", 0o644).unwrap(), Outcome::Written);
        assert_eq!(install_file(&t, b"{}", 0o644).unwrap(), Outcome::Unchanged);
        assert_eq!(install_file(&t, b"{ }", 0o644).unwrap(), Outcome::Written);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporaries left"
        );
    }

    #[test]
    fn a_running_binary_is_replaced_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("sinew");
        install_file(&t, b"old", 0o755).unwrap();
        let held = fs::File::open(&t).unwrap();
        let old_ino = std::os::unix::fs::MetadataExt::ino(&held.metadata().unwrap());
        install_file(&t, b"new", 0o755).unwrap();
        let new_ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&t).unwrap());
        assert_ne!(old_ino, new_ino, "the binary was rewritten in place");
        assert_eq!(fs::read(&t).unwrap(), b"new");
    }

    #[test]
    fn reports_which_file_wins_and_what_shadows_us() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "05-other.conflist",
            "10-sinew.conflist",
            "99-loopback.conf",
            "README",
            ".10-x.conflist.tmp",
        ] {
            fs::write(dir.path().join(f), "{}").unwrap();
        }
        let r = conf_report(dir.path(), "10-sinew.conflist").unwrap();
        assert_eq!(r.chosen.as_deref(), Some("05-other.conflist"));
        assert_eq!(r.shadowing, vec!["05-other.conflist".to_string()]);
        assert_eq!(r.others, vec!["99-loopback.conf".to_string()]);
        assert!(!r.ours_wins("10-sinew.conflist"));
    }
}
