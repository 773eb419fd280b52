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

use crate::consts::BOOT_ID_PATH;
use crate::fsutil::atomic_write;

pub use sinew_core::node::{NodeState, POOL_ANNOTATION, PoolState};

/// The current boot's id (empty if the kernel does not say, which then matches nothing).
pub fn current_boot_id() -> String {
    fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Why the node cannot serve pods yet in this boot, if it cannot (see `ready_boot`).
pub fn not_ready_since_boot(state: &NodeState) -> Option<String> {
    state.not_ready_in_boot(&current_boot_id())
}

pub fn node_state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("node.json")
}

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
pub fn store(state: &NodeState, state_dir: &Path) -> io::Result<()> {
    fs::create_dir_all(state_dir)?;
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    atomic_write(&node_state_path(state_dir), &bytes)
}

fn requests_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("requests")
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
    use sinew_core::PoolMode;

    #[test]
    fn state_roundtrips_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
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
        store(&s, dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s));
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
