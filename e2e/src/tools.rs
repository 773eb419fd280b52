//! Locates the upstream tools built by `e2e/tools/build.sh` (kube-apiserver, etcd, kubectl…).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::Error;

/// Directory holding the Go-built tools.
#[derive(Debug, Clone)]
pub struct Tools {
    bin_dir: PathBuf,
}

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Tools {
    /// `SINEW_TOOLS_BIN` if set, otherwise runs `e2e/tools/build.sh` (which builds whatever is
    /// not cached yet, with progress on stderr) once per process.
    pub fn locate() -> Result<Tools, Error> {
        static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let found = FOUND.get_or_init(|| {
            if let Some(dir) = std::env::var_os("SINEW_TOOLS_BIN") {
                return Ok(PathBuf::from(dir));
            }
            let script = repo_root().join("e2e/tools/build.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!("{} exited with {}", script.display(), out.status));
            }
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        });
        match found {
            Ok(bin_dir) => Ok(Tools {
                bin_dir: bin_dir.clone(),
            }),
            Err(e) => Err(Error::ToolBuild(e.clone())),
        }
    }

    /// Path of tool `name`, checked to exist.
    pub fn path(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::MissingTool {
                name: name.to_string(),
                path,
                hint: "build it with e2e/tools/build.sh".to_string(),
            })
        }
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }
}
