//! Network namespaces: open, create (like `ip netns add`), enter and run code inside them.
//!
//! A [`NetNs`] is an open file descriptor on a network namespace. Namespaces made with
//! [`NetNs::create`] are *owned*: they are bind-mounted on `/run/netns/NAME` exactly like
//! `ip netns add NAME` does, and dropping the value unmounts and removes that file again.
//!
//! Switching namespaces with `setns(2)` only ever affects the calling *thread*. Prefer
//! [`NetNs::run_in`], which runs a closure on a short-lived scoped thread inside the
//! namespace, so the caller's thread never moves; [`NetNs::enter`] is there for code that
//! must run on the current thread, and restores the original namespace when its guard drops.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
#[cfg(any(test, feature = "testutils"))]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
#[cfg(any(test, feature = "testutils"))]
use std::sync::Mutex;

#[cfg(any(test, feature = "testutils"))]
use crate::netlink::Netlink;
use crate::netlink::NetlinkError;

/// Where named network namespaces are bind-mounted (the `ip netns` convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `statfs.f_type` of the nsfs file system (namespace files on kernels >= 3.19).
const NSFS_MAGIC: u64 = 0x6e73_6673;
/// `statfs.f_type` of procfs (namespace files on kernels < 3.19).
const PROC_SUPER_MAGIC: u64 = 0x9fa0;

#[cfg(any(test, feature = "testutils"))]
/// Serialises the "make /run/netns a shared mount point" step inside this process, so
/// that concurrent [`NetNs::create`] calls do not stack several bind mounts on it.
static RUN_DIR_LOCK: Mutex<()> = Mutex::new(());

/// Errors from network namespace operations. Each names the path and the failed step.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist.
    #[error("network namespace {path} does not exist")]
    NotFound {
        /// The path that was opened.
        path: PathBuf,
    },
    /// The path exists but is not a network namespace (a plain file, a directory, a
    /// `/run/netns` entry whose bind mount is gone, or another kind of namespace).
    #[error("{path} is not a network namespace ({reason})")]
    NotANetns {
        /// The path that was opened.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// [`NetNs::create`] found a namespace (or a file) with that name already.
    #[error("network namespace {path} already exists")]
    AlreadyExists {
        /// The path of the existing entry.
        path: PathBuf,
    },
    /// The name cannot be used as a file name under [`NETNS_RUN_DIR`].
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A system call failed.
    #[error("{syscall} on {path} failed: {source}")]
    Syscall {
        /// The system call (or library step) that failed.
        syscall: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The namespace was created but its loopback interface could not be brought up.
    #[error("cannot bring lo up in new network namespace {path}: {source}")]
    Loopback {
        /// The namespace's path.
        path: PathBuf,
        /// The netlink failure.
        #[source]
        source: Box<NetlinkError>,
    },
}

impl NetnsError {
    /// True when the namespace path does not exist ([`NetnsError::NotFound`]).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetnsError::NotFound { .. })
    }

    fn syscall(syscall: &'static str, path: &Path, source: io::Error) -> Self {
        NetnsError::Syscall {
            syscall,
            path: path.to_path_buf(),
            source,
        }
    }

    fn last_os(syscall: &'static str, path: &Path) -> Self {
        Self::syscall(syscall, path, io::Error::last_os_error())
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// An open network namespace.
///
/// When created with [`NetNs::create`] the value owns the `/run/netns/NAME` bind mount
/// and removes it on drop; values from [`NetNs::open`] and [`NetNs::current`] only hold
/// a file descriptor.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
    owned: bool,
}

impl NetNs {
    /// Opens `path` and checks that it is a network namespace (nsfs, or procfs for
    /// `/proc/<pid>/ns/net` on old kernels).
    ///
    /// A missing path gives [`NetnsError::NotFound`]; a plain file, a directory or a
    /// namespace of another type gives [`NetnsError::NotANetns`].
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NetnsError::NotFound {
                path: path.to_path_buf(),
            },
            _ => NetnsError::syscall("open", path, e),
        })?;
        verify_netns(&file, path)?;
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
            owned: false,
        })
    }

    /// Opens the network namespace of the calling thread (`/proc/thread-self/ns/net`).
    pub fn current() -> Result<NetNs> {
        match NetNs::open("/proc/thread-self/ns/net") {
            Err(NetnsError::NotFound { .. }) => {
                NetNs::open(format!("/proc/self/task/{}/ns/net", current_tid()))
            }
            other => other,
        }
    }

    #[cfg(any(test, feature = "testutils"))]
    /// Creates a persistent named namespace the way `ip netns add NAME` does.
    ///
    /// `/run/netns` is created if needed and made a shared mount point, an empty file
    /// `/run/netns/NAME` is created, and a dedicated short-lived thread unshares a new
    /// network namespace and bind-mounts it onto that file, then brings `lo` up inside
    /// it. The returned value is owned: dropping it unmounts and removes the file.
    pub fn create(name: &str) -> Result<NetNs> {
        let path = named_path(name)?;
        ensure_run_dir()?;
        create_mount_target(&path)?;
        if let Err(e) = run_on_new_thread(|| populate_new_netns(&path)) {
            let _ = remove_named(&path);
            return Err(e);
        }
        match NetNs::open(&path) {
            Ok(mut ns) => {
                ns.owned = true;
                Ok(ns)
            }
            Err(e) => {
                let _ = remove_named(&path);
                Err(e)
            }
        }
    }

    #[cfg(any(test, feature = "testutils"))]
    /// Removes a named namespace left behind (e.g. by a crashed process): unmounts and
    /// unlinks `/run/netns/NAME`. Returns `false` when there was nothing to remove.
    pub fn delete_named(name: &str) -> Result<bool> {
        remove_named(&named_path(name)?)
    }

    /// Moves the calling thread into this namespace until the returned guard drops.
    ///
    /// Only the calling thread is affected: other threads, and threads spawned later by
    /// other threads, stay where they are. Threads spawned by this thread while the guard
    /// lives start inside the namespace. The guard is `!Send` so it is restored on the same
    /// thread; prefer [`NetNs::run_in`] where possible.
    pub fn enter(&self) -> Result<NetnsGuard> {
        let original = NetNs::current()?;
        self.setns_current_thread()?;
        Ok(NetnsGuard {
            original,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` on a new scoped thread that has entered this namespace and returns its
    /// result. The calling thread never changes namespace. A panic in `f` is propagated.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        run_on_new_thread(|| {
            self.setns_current_thread()?;
            Ok(f())
        })
    }

    /// Whether `other` refers to the same namespace (same nsfs inode).
    pub fn is_same(&self, other: &NetNs) -> Result<bool> {
        Ok(self.identity()? == other.identity()?)
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether dropping this value removes the `/run/netns` bind mount.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    fn identity(&self) -> Result<(u64, u64)> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| NetnsError::syscall("fstat", &self.path, e))?;
        Ok((meta.dev(), meta.ino()))
    }

    fn setns_current_thread(&self) -> Result<()> {
        // SAFETY: setns only reads the descriptor, which `self.file` keeps open.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(NetnsError::last_os("setns(CLONE_NEWNET)", &self.path));
        }
        Ok(())
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = remove_named(&self.path) {
            let path = self.path.display();
            tracing::warn!(%path, error = %e, "cannot remove network namespace");
        }
    }
}

/// Restores the thread's original network namespace when dropped (see [`NetNs::enter`]).
#[derive(Debug)]
#[must_use = "the namespace is left as soon as the guard is dropped"]
pub struct NetnsGuard {
    original: NetNs,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Returns to the original namespace now, reporting failure instead of logging it.
    pub fn restore(self) -> Result<()> {
        let result = self.original.setns_current_thread();
        std::mem::forget(self);
        result
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.original.setns_current_thread() {
            tracing::error!(error = %e, "cannot return thread to its original network namespace");
        }
    }
}

/// Checks with fstatfs (and NS_GET_NSTYPE where available) that `file` is a netns.
fn verify_netns(file: &File, path: &Path) -> Result<()> {
    // SAFETY: statfs is plain data; fstatfs fills it from a descriptor `file` keeps open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the pointer is to a live, properly sized statfs.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(NetnsError::last_os("fstatfs", path));
    }
    let not_netns = |reason: String| NetnsError::NotANetns {
        path: path.to_path_buf(),
        reason,
    };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libc targets
    let fs_type = st.f_type as u64;
    match fs_type {
        NSFS_MAGIC => match namespace_type(file) {
            Some(t) if t != libc::CLONE_NEWNET => {
                Err(not_netns(format!("a namespace of type {t:#x}")))
            }
            _ => Ok(()),
        },
        PROC_SUPER_MAGIC if path.ends_with("ns/net") => Ok(()),
        magic => Err(not_netns(format!(
            "a file on a file system with magic {magic:#x}"
        ))),
    }
}

/// The namespace type of an nsfs file, or None when the kernel lacks NS_GET_NSTYPE.
fn namespace_type(file: &File) -> Option<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only inspects the descriptor.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    (rc >= 0).then_some(rc)
}

#[cfg(any(test, feature = "testutils"))]
fn named_path(name: &str) -> Result<PathBuf> {
    let invalid = |reason| NetnsError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(invalid("must be a non-empty file name"));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(invalid("must not contain '/' or NUL"));
    }
    if name.len() > 255 {
        return Err(invalid("longer than 255 bytes"));
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

#[cfg(any(test, feature = "testutils"))]
/// `mkdir -p /run/netns` and make it a shared mount point, as iproute2 does: try to mark
/// it shared (recursively); if it is not a mount point yet (EINVAL), bind-mount it onto
/// itself once and try again.
fn ensure_run_dir() -> Result<()> {
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| NetnsError::syscall("mkdir", dir, e))?;
    let _lock = RUN_DIR_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut made_mount_point = false;
    loop {
        match mount(None, dir, libc::MS_SHARED | libc::MS_REC) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !made_mount_point => {
                mount(Some(dir), dir, libc::MS_BIND | libc::MS_REC)
                    .map_err(|e| NetnsError::syscall("mount(MS_BIND) of itself", dir, e))?;
                made_mount_point = true;
            }
            Err(e) => return Err(NetnsError::syscall("mount(MS_SHARED)", dir, e)),
        }
    }
}

#[cfg(any(test, feature = "testutils"))]
/// Creates the empty file a namespace is bind-mounted on (fails if it exists).
fn create_mount_target(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map(drop)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => NetnsError::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => NetnsError::syscall("create", path, e),
        })
}

#[cfg(any(test, feature = "testutils"))]
/// Runs on a throw-away thread: unshare a new netns, pin it on `path`, bring `lo` up.
fn populate_new_netns(path: &Path) -> Result<()> {
    // SAFETY: unshare(CLONE_NEWNET) only changes this (dedicated) thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::last_os("unshare(CLONE_NEWNET)", path));
    }
    let source = PathBuf::from(format!("/proc/self/task/{}/ns/net", current_tid()));
    mount(Some(&source), path, libc::MS_BIND)
        .map_err(|e| NetnsError::syscall("mount(MS_BIND)", path, e))?;
    bring_loopback_up().map_err(|e| NetnsError::Loopback {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

#[cfg(any(test, feature = "testutils"))]
fn bring_loopback_up() -> std::result::Result<(), NetlinkError> {
    let mut nl = Netlink::new()?;
    let lo = nl.link_by_name("lo")?.ok_or(NetlinkError::Kernel {
        op: "find lo",
        errno: libc::ENODEV,
        message: "no loopback interface in new namespace".to_string(),
    })?;
    nl.set_link_up(lo.index)
}

/// Unmounts (lazily) and unlinks a named namespace file. `Ok(false)` if it was absent.
fn remove_named(path: &Path) -> Result<bool> {
    let c_path = c_path(path)?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (half-created or already unmounted); ENOENT: gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(NetnsError::syscall("umount2(MNT_DETACH)", path, e));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(NetnsError::syscall("unlink", path, e)),
    }
}

#[cfg(any(test, feature = "testutils"))]
/// mount(2) with file system type "none" and no data.
fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let to_c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let source = source.map(to_c).transpose()?;
    let target = to_c(target)?;
    let fstype = c"none";
    let source_ptr = source.as_ref().map_or(c"".as_ptr(), |s| s.as_ptr());
    // SAFETY: all strings are NUL-terminated and outlive the call; data may be NULL.
    let rc = unsafe {
        libc::mount(
            source_ptr,
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        NetnsError::syscall(
            "path conversion",
            path,
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

fn current_tid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    tid as libc::pid_t
}

/// Runs `f` on a fresh scoped thread and returns its result, re-raising its panic.
fn run_on_new_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Whether this process runs as root (what creating namespaces and links needs); a safe
/// wrapper for the crates that forbid `unsafe`.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Helpers of the privileged tests of this crate and of the crates built on it (feature
/// `testutils`).
#[cfg(any(test, feature = "testutils"))]
pub mod test_support {
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::NetNs;

    /// True when the test may run. Without root it prints a loud SKIPPING line and
    /// returns false, unless `CI` is set and non-empty, where it panics instead.
    pub fn have_root(test: &str) -> bool {
        if super::is_root() {
            return true;
        }
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
        assert!(!ci, "{test}: needs root, and CI is set: refusing to skip");
        // Straight to the stderr handle: libtest's capture only catches `eprintln!`.
        let _ = writeln!(std::io::stderr(), "*** SKIPPING {test}: needs root ***");
        false
    }

    /// A unique namespace name for this test process: `sinew-t-<pid>-<n>`.
    pub fn unique_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("sinew-t-{}-{n}", std::process::id())
    }

    /// Creates an owned namespace with a unique name; dropping it removes it.
    pub fn new_netns() -> NetNs {
        let name = unique_name();
        match NetNs::create(&name) {
            Ok(ns) => ns,
            Err(e) => panic!("cannot create test network namespace {name}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{have_root, new_netns, unique_name};
    use super::*;

    #[test]
    fn open_rejects_missing_plain_file_directory_and_other_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(
            matches!(NetNs::open(&missing), Err(NetnsError::NotFound { path }) if path == missing)
        );

        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let err = NetNs::open(&plain).unwrap_err();
        assert!(matches!(err, NetnsError::NotANetns { .. }), "{err}");
        assert!(err.to_string().contains("plain"), "{err}");

        let err = NetNs::open(dir.path()).unwrap_err();
        assert!(matches!(err, NetnsError::NotANetns { .. }), "{err}");

        let err = NetNs::open("/proc/self/ns/uts").unwrap_err();
        assert!(matches!(err, NetnsError::NotANetns { .. }), "{err}");
    }

    #[test]
    fn current_is_a_netns_and_not_owned() {
        let ns = NetNs::current().unwrap();
        assert!(!ns.is_owned());
        assert!(ns.as_raw_fd() >= 0);
        let again = NetNs::open("/proc/self/ns/net").unwrap();
        assert!(ns.is_same(&again).unwrap());
    }

    #[test]
    fn invalid_names_are_rejected() {
        for name in ["", ".", "..", "a/b", "nul\0"] {
            assert!(
                matches!(NetNs::create(name), Err(NetnsError::InvalidName { .. })),
                "{name:?}"
            );
        }
    }

    #[test]
    fn create_open_and_drop_removes_the_namespace() {
        if !have_root("create_open_and_drop_removes_the_namespace") {
            return;
        }
        let ns = new_netns();
        let path = ns.path().to_path_buf();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(ns.is_owned());
        assert!(path.starts_with(NETNS_RUN_DIR));

        let opened = NetNs::open(&path).unwrap();
        assert!(!opened.is_owned());
        assert!(opened.is_same(&ns).unwrap());
        assert!(!ns.is_same(&NetNs::current().unwrap()).unwrap());

        let dup = NetNs::create(&name).unwrap_err();
        assert!(matches!(dup, NetnsError::AlreadyExists { .. }), "{dup}");
        assert!(
            NetNs::open(&path).is_ok(),
            "failed duplicate must not remove the original"
        );

        drop(opened);
        drop(ns);
        assert!(!path.exists(), "{} still exists", path.display());
        assert!(!NetNs::delete_named(&name).unwrap());
    }

    #[test]
    fn delete_named_removes_leftovers() {
        if !have_root("delete_named_removes_leftovers") {
            return;
        }
        let ns = new_netns();
        let path = ns.path().to_path_buf();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(NetNs::delete_named(&name).unwrap());
        assert!(!path.exists());
        drop(ns); // its own cleanup now finds nothing and must not panic
        assert!(!NetNs::delete_named(&unique_name()).unwrap());
    }

    #[test]
    fn enter_moves_only_this_thread_and_guard_restores() {
        if !have_root("enter_moves_only_this_thread_and_guard_restores") {
            return;
        }
        let ns = new_netns();
        let original = NetNs::current().unwrap();
        let entered = std::sync::Barrier::new(2);
        let checked = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                let before = NetNs::current().unwrap();
                let guard = ns.enter().unwrap();
                assert!(NetNs::current().unwrap().is_same(&ns).unwrap());
                // threads spawned while inside start inside too
                let child =
                    std::thread::scope(|s2| s2.spawn(|| NetNs::current().unwrap()).join().unwrap());
                assert!(child.is_same(&ns).unwrap());
                entered.wait();
                checked.wait();
                drop(guard);
                assert!(NetNs::current().unwrap().is_same(&before).unwrap());

                let guard = ns.enter().unwrap();
                guard.restore().unwrap();
                assert!(NetNs::current().unwrap().is_same(&before).unwrap());
            });
            entered.wait();
            // the other thread is inside, this one has not moved
            let here = NetNs::current().unwrap();
            checked.wait();
            assert!(here.is_same(&original).unwrap());
            assert!(!here.is_same(&ns).unwrap());
        });
    }

    #[test]
    fn run_in_runs_inside_and_leaves_the_caller_alone() {
        if !have_root("run_in_runs_inside_and_leaves_the_caller_alone") {
            return;
        }
        let ns = new_netns();
        let before = NetNs::current().unwrap();
        let inside = ns
            .run_in(|| NetNs::current().unwrap().is_same(&ns).unwrap())
            .unwrap();
        assert!(inside);
        assert!(NetNs::current().unwrap().is_same(&before).unwrap());
        assert_eq!(ns.run_in(|| 41 + 1).unwrap(), 42);
    }

    #[test]
    fn loopback_is_up_in_a_created_namespace() {
        if !have_root("loopback_is_up_in_a_created_namespace") {
            return;
        }
        let ns = new_netns();
        let mut nl = Netlink::in_netns(&ns).unwrap();
        let lo = nl.link_by_name("lo").unwrap().unwrap();
        assert!(lo.up);
    }
}
