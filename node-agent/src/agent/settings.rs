//! Where the agent works and how (from flags and environment, see `main.rs`).

use std::path::PathBuf;
use std::time::Duration;

/// Where the agent works and how.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub conf_dir_override: Option<PathBuf>,
    pub bin_dir_override: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub log_file: PathBuf,
    /// The `sinew` plugin binary to install.
    pub plugin_source: PathBuf,
    /// Free addresses to keep available per pool before claiming another block.
    pub min_free: u64,
    /// Label selector of the Nodes that are peers (`None`: every Node).
    pub peer_selector: Option<String>,
    /// How long a block must stay empty before it is given back.
    pub block_release_grace: Duration,
    pub resync: Duration,
    /// Where `/metrics` (and the probe paths) are served.
    pub metrics_addr: ListenAddr,
    /// Where the kubelet's probes (`/healthz`, `/readyz`) are served, from the start (before
    /// the caches sync): loopback, which pods cannot reach (`None`: nowhere).
    pub probe_addr: Option<std::net::SocketAddr>,
    /// Where the node's sysctls are written (`/proc/sys`, or the host's mounted into a
    /// container).
    pub sysctl_dir: PathBuf,
    /// `/healthz` fails when the agent's loop has not come round for this long (a stalled
    /// agent is restarted by its liveness probe).
    pub stall_after: Duration,
    /// sinew's dangling host veths are removed after this long.
    pub dangling_grace: Duration,
}

#[cfg(test)]
impl Settings {
    /// Node `node`'s agent working below `dir` (its state, the plugin's source, sysctls),
    /// the CNI directories from the `ClusterNetwork`, nothing served.
    pub fn for_tests(node: &str, dir: &std::path::Path) -> Settings {
        Settings {
            node_name: node.into(),
            conf_dir_override: None,
            bin_dir_override: None,
            state_dir: dir.to_path_buf(),
            log_file: dir.join("cni.log"),
            plugin_source: dir.join("sinew"),
            min_free: 4,
            peer_selector: None,
            block_release_grace: Duration::from_secs(300),
            resync: Duration::from_secs(10),
            metrics_addr: ListenAddr::Off,
            probe_addr: None,
            sysctl_dir: dir.to_path_buf(),
            stall_after: Duration::from_secs(120),
            dangling_grace: Duration::from_secs(60),
        }
    }
}

/// Where the agent's HTTP endpoints listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    Off,
    At(std::net::SocketAddr),
    /// The node's own address (its InternalIP), where kubelet's probes of a host-network pod
    /// go, and not every address of the host.
    NodeIp(u16),
}

/// The server-side-apply field manager of this node's agent.
pub fn field_manager(node: &str) -> String {
    format!("sinew-node/{node}")
}
