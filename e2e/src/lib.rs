//! sinew's test harness: the real control plane (etcd + kube-apiserver built from pinned
//! upstream modules), helpers shared by the test tiers, and later the local cluster.

pub mod certs;
pub mod cluster;
pub mod control_plane;
pub mod harness;
pub mod helm;
pub mod install;
pub mod netsim;
pub mod operator;
pub mod plugin;
pub mod policy_scale;
pub mod process;
pub mod require;
pub mod scale;
pub mod tools;
pub mod usage;

pub use control_plane::ControlPlane;

/// Everything that can go wrong while setting up test infrastructure. Each variant says what
/// to do about it, because a test that fails in setup should not need a debugger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name} not found at {path}: {hint}")]
    MissingTool {
        name: String,
        path: std::path::PathBuf,
        hint: String,
    },
    #[error("building the upstream test tools failed ({0}); run e2e/tools/build.sh to see why")]
    ToolBuild(String),
    #[error("port {port} on 127.0.0.1 (for {what}) is already taken by another process")]
    PortTaken { port: u16, what: &'static str },
    #[error("{name} exited during start-up ({status}); last lines of its log:\n{log_tail}")]
    ProcessExited {
        name: String,
        status: String,
        log_tail: String,
    },
    #[error("{what} not ready after {secs}s; last lines of its log:\n{log_tail}")]
    Timeout {
        what: String,
        secs: u64,
        log_tail: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating test certificates: {0}")]
    Certificates(String),
    #[error("kubeconfig for the test control plane: {0}")]
    Kubeconfig(String),
    #[error("setting up the test cluster: {0}")]
    Setup(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
