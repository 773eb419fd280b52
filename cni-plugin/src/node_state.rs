//! Node-local state shared by the node agent (writer) and the plugin (reader), so that ADD
//! never needs the API server: the pools this node uses, their mode and MTU, and the blocks
//! the node owns. Also the plugin's "block needed" signal to the agent.
//!
//! Layout under the state directory (default `/var/lib/sinew`):
//! - `node.json`: [`NodeState`], replaced atomically by the agent.
//! - `requests/<pool>`: created by the plugin when a pool has no free address here; the agent
//!   claims a block, rewrites `node.json` and removes the request.
//! - `namespaces/<namespace>`: pool names a namespace asks for (its `sinew.dev/ippool`
//!   annotation), kept by the agent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sinew_core::{Cidr, Family, PoolMode};

use crate::fsutil::atomic_write;

/// Annotation (on a pod or its namespace) naming the pools to take addresses from.
pub const POOL_ANNOTATION: &str = "sinew.dev/ippool";

/// What the agent tells the plugin about one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolState {
    pub name: String,
    pub cidr: String,
    pub mode: PoolMode,
    /// MTU for new pod interfaces of this pool.
    pub mtu: u32,
    #[serde(default)]
    pub disabled: bool,
    /// Addresses or CIDRs never handed out.
    #[serde(default)]
    pub reserved: Vec<String>,
    /// Blocks of this pool owned by this node, in claim order.
    #[serde(default)]
    pub blocks: Vec<String>,
    /// The pool had no unclaimed block left when this node last needed one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exhausted: bool,
}

impl PoolState {
    pub fn family(&self) -> Option<Family> {
        self.cidr.parse::<Cidr>().ok().map(|c| c.family())
    }
}

/// The whole node state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub node: String,
    /// Pools whose node selector matches this node, in preference order.
    pub pools: Vec<PoolState>,
    /// The kernel boot and network namespace ([`current_boot_id`]) in which the agent last
    /// completed a whole pass (blocks, peer routes, VXLAN, NAT, forwarding). After a reboot,
    /// or a restart of a node that is a container (its network namespace is new, its disk
    /// kept), the file is still there but the kernel state is not: until the agent's first
    /// complete pass there, ADD answers "try again" and STATUS "not available". `None` only in
    /// files written without an agent (tests and tools), which are not gated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_boot: Option<String>,
}

/// Where the kernel publishes the current boot's random id.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Which kernel network state this process sees: the boot's id and, where the kernel has it
/// (Linux >= 5.14), the cookie of the process's network namespace, as `<boot id>/netns-<cookie>`.
/// A node that is a container (kind) gets a new network namespace when it restarts, within
/// the same boot: no route, VXLAN device or nftables table of the old one is left. A cookie is
/// never reused within a boot. The agent runs in the node's namespace (hostNetwork), and so
/// does the plugin when the runtime calls it. Empty if the kernel does not say, which then
/// matches nothing.
pub fn current_boot_id() -> String {
    let boot = fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match netns_cookie() {
        Some(cookie) if !boot.is_empty() => format!("{boot}/netns-{cookie}"),
        _ => boot,
    }
}

/// Whether `ready` (a `ready_boot`) names the kernel network state of now. A value without a
/// namespace part was written by an agent that did not record it (or a kernel without
/// cookies): it is compared with the boot alone, as that agent meant.
fn is_current(ready: &str, now: &str) -> bool {
    !ready.is_empty()
        && (ready == now
            || (!ready.contains('/') && now.split_once('/').is_some_and(|(boot, _)| boot == ready)))
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`).
fn netns_cookie() -> Option<u64> {
    use std::os::fd::AsRawFd;
    let socket = std::os::unix::net::UnixDatagram::unbound().ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the call (owned by `socket`); the kernel writes at
    // most `len` bytes (exactly 8 for this option) into `cookie`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

pub fn node_state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("node.json")
}

fn requests_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("requests")
}

impl NodeState {
    /// Reads the state; `Ok(None)` when the agent has not written it yet.
    pub fn load(state_dir: &Path) -> io::Result<Option<NodeState>> {
        match fs::read(node_state_path(state_dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically (agent side).
    pub fn store(&self, state_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(state_dir)?;
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        atomic_write(&node_state_path(state_dir), &bytes)
    }

    pub fn pool(&self, name: &str) -> Option<&PoolState> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Why the node cannot serve pods yet in this boot, if it cannot (see `ready_boot`).
    pub fn not_ready_since_boot(&self) -> Option<String> {
        let ready = self.ready_boot.as_deref()?;
        (!is_current(ready, &current_boot_id())).then(|| {
            format!(
                "the sinew node agent has not completed a pass since this node booted (routes, VXLAN and NAT of node {} are not programmed yet)",
                self.node
            )
        })
    }
}

/// Plugin side of the handshake: ask the agent for another block of `pool`.
pub fn request_block(state_dir: &Path, pool: &str) -> io::Result<()> {
    let dir = requests_dir(state_dir);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(pool), b"")
}

/// Agent side: pools with an outstanding block request.
pub fn pending_block_requests(state_dir: &Path) -> io::Result<Vec<String>> {
    match fs::read_dir(requests_dir(state_dir)) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Agent side: the request for `pool` has been served.
pub fn clear_block_request(state_dir: &Path, pool: &str) -> io::Result<()> {
    match fs::remove_file(requests_dir(state_dir).join(pool)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Pool names a namespace asks for, as recorded by the agent.
pub fn namespace_pools(state_dir: &Path, namespace: &str) -> Option<String> {
    fs::read_to_string(state_dir.join("namespaces").join(namespace))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrips_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeState::load(dir.path()).unwrap(), None);
        let s = NodeState {
            node: "n1".into(),
            pools: vec![PoolState {
                name: "p".into(),
                cidr: "10.244.0.0/16".into(),
                mode: PoolMode::Vxlan,
                mtu: 1450,
                disabled: false,
                reserved: vec![],
                blocks: vec!["10.244.1.0/26".into()],
                exhausted: false,
            }],
            ready_boot: None,
        };
        s.store(dir.path()).unwrap();
        assert_eq!(NodeState::load(dir.path()).unwrap(), Some(s));
    }

    #[test]
    fn readiness_is_per_boot() {
        let mut s = NodeState {
            node: "n1".into(),
            pools: vec![],
            ready_boot: None,
        };
        assert_eq!(s.not_ready_since_boot(), None, "ungated without an agent");
        s.ready_boot = Some(String::new());
        assert!(s.not_ready_since_boot().is_some(), "no pass completed yet");
        s.ready_boot = Some("an-earlier-boot".into());
        assert!(
            s.not_ready_since_boot()
                .unwrap()
                .contains("since this node booted")
        );
        s.ready_boot = Some(current_boot_id());
        assert_eq!(s.not_ready_since_boot(), None);
    }

    /// A restarted container node: same boot, new network namespace (kind's `docker restart`).
    #[test]
    fn readiness_is_per_network_namespace() {
        let now = current_boot_id();
        let Some((boot, netns)) = now.split_once('/') else {
            return; // a kernel without namespace cookies: per boot only
        };
        assert!(netns.starts_with("netns-"), "{now}");
        assert!(is_current(&now, &now));
        assert!(
            !is_current(&format!("{boot}/netns-0"), &now),
            "another namespace of this boot"
        );
        assert!(
            !is_current(&format!("an-earlier-boot/{netns}"), &now),
            "another boot"
        );
        assert!(
            is_current(boot, &now),
            "written by an agent without cookies"
        );
        assert!(!is_current("an-earlier-boot", &now));
        assert!(!is_current("", &now));
        // Stable within one namespace (the agent writes it, the plugin compares).
        assert_eq!(current_boot_id(), now);
    }

    #[test]
    fn block_requests_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(pending_block_requests(dir.path()).unwrap().is_empty());
        request_block(dir.path(), "p").unwrap();
        request_block(dir.path(), "p").unwrap();
        assert_eq!(
            pending_block_requests(dir.path()).unwrap(),
            vec!["p".to_string()]
        );
        clear_block_request(dir.path(), "p").unwrap();
        clear_block_request(dir.path(), "p").unwrap();
        assert!(pending_block_requests(dir.path()).unwrap().is_empty());
    }
}
