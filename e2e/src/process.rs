//! Child processes owned by a test: killed on drop, and killed by the kernel if the test
//! process itself dies (`PR_SET_PDEATHSIG`), so no etcd or API server outlives its test.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use crate::{Error, io_err};

/// A running child process with its output going to a log file.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    pid: i32,
    log: PathBuf,
    exited: Arc<Mutex<Option<ExitStatus>>>,
    waiter: Option<JoinHandle<()>>,
}

impl Supervised {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    ///
    /// The death signal is tied to the thread that forks, so the child is forked from a thread
    /// that lives exactly as long as the child: it waits for it and reports the exit status.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Supervised, Error> {
        let out = File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("duplicating {}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure only calls async-signal-safe libc functions.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Make the child the leader of its own process group so it can be killed whole.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (pid_tx, pid_rx) = mpsc::channel();
        let exited = Arc::new(Mutex::new(None));
        let exit_slot = exited.clone();
        let program = cmd.get_program().to_string_lossy().into_owned();
        let waiter = std::thread::Builder::new()
            .name(format!("supervise-{name}"))
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = pid_tx.send(Ok(child.id() as i32));
                    if let (Ok(status), Ok(mut slot)) = (child.wait(), exit_slot.lock()) {
                        *slot = Some(status);
                    }
                }
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                }
            })
            .map_err(io_err(format!("starting the supervisor thread of {name}")))?;
        let pid = pid_rx
            .recv()
            .map_err(|_| Error::Io {
                what: format!("spawning {program}"),
                source: std::io::Error::other("supervisor thread ended"),
            })?
            .map_err(io_err(format!("spawning {program}")))?;
        Ok(Supervised {
            name: name.to_string(),
            pid,
            log: log.to_path_buf(),
            exited,
            waiter: Some(waiter),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        self.exited.lock().ok().and_then(|s| *s)
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// An error describing an exit during start-up.
    pub fn exited_error(&self, status: ExitStatus) -> Error {
        Error::ProcessExited {
            name: self.name.clone(),
            status: status.to_string(),
            log_tail: self.log_tail(20),
        }
    }

    /// Sends `signal` to the process group.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on a process group we created.
        unsafe {
            libc::kill(-self.pid, signal);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
    }
}
