//! Node-local state shared by the node agent (writer) and the plugin (reader), so that ADD
//! never needs the API server: the pools this node uses, their mode and MTU, and the blocks
//! the node owns. Also the plugin's "block needed" signal to the agent.
//!
//! Layout under the state directory (default `/var/lib/sinew`):
//! - `node.json`: [`NodeState`], replaced atomically by the agent.
//! - `requests/<pool>`: created (or touched again) by the plugin when a pool has no free address
//!   here; the agent claims a block, rewrites `node.json` and removes the request, or, when it
//!   cannot serve it (pool exhausted or unusable, claim failed), answers it with a problem and
//!   removes it too, unless the plugin asked again meanwhile (its modification time changed).
//! - `namespaces/<namespace>`: pool names a namespace asks for (its `sinew.dev/ippool`
//!   annotation), kept by the agent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::consts::BOOT_ID_PATH;
use crate::fsutil::atomic_write;

use sinew_core::node::NodeState;

/// Which kernel network state this process sees: the boot's id and, where the kernel has it
/// (Linux >= 5.14), the cookie of the process's network namespace, as
/// `<boot id>/netns-<cookie>`. A node that is a container (kind) gets a new network namespace
/// when it restarts, within the same boot: no route, VXLAN device or nftables table of the old
/// one is left. A cookie is never reused within a boot. The agent runs in the node's namespace
/// (hostNetwork), and so does the plugin when the runtime calls it. Empty if the kernel does
/// not say, which then matches nothing.
pub fn current_boot_id() -> String {
    let boot = fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match netns_cookie() {
        Some(cookie) if !boot.is_empty() => format!("{boot}/netns-{cookie}"),
        _ => boot,
    }
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

/// Agent side: pools with an outstanding block request, and when each was last made (the
/// file's modification time, which the plugin's every request renews).
pub fn block_requests(state_dir: &Path) -> io::Result<Vec<(String, SystemTime)>> {
    let mut out = Vec::new();
    for pool in pending_block_requests(state_dir)? {
        match fs::metadata(requests_dir(state_dir).join(&pool)).and_then(|m| m.modified()) {
            Ok(made) => out.push((pool, made)),
            // Cleared meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Agent side: removes the request for `pool` if it is still the one made at `made` (a
/// request made again since is kept for the next pass); returns whether it removed it.
pub fn clear_block_request_made(
    state_dir: &Path,
    pool: &str,
    made: SystemTime,
) -> io::Result<bool> {
    let path = requests_dir(state_dir).join(pool);
    match fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(now) if now == made => {
            clear_block_request(state_dir, pool)?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
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
    use sinew_core::node::PoolState;

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
    fn the_current_state_names_boot_and_namespace_stably() {
        let now = current_boot_id();
        if let Some((_, netns)) = now.split_once('/') {
            assert!(netns.starts_with("netns-"), "{now}");
        }
        assert!(sinew_core::node::is_current(&now, &now));
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

    #[test]
    fn a_request_made_again_after_it_was_read_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        request_block(dir.path(), "p").unwrap();
        let read = block_requests(dir.path()).unwrap();
        let [(pool, made)] = read.as_slice() else {
            panic!("{read:?}")
        };
        assert_eq!(pool, "p");
        // The plugin asks again (a later ADD) before the agent answers the first request.
        std::thread::sleep(std::time::Duration::from_millis(20));
        request_block(dir.path(), "p").unwrap();
        assert!(!clear_block_request_made(dir.path(), "p", *made).unwrap());
        assert_eq!(pending_block_requests(dir.path()).unwrap(), ["p"]);
        let again = block_requests(dir.path()).unwrap()[0].1;
        assert!(clear_block_request_made(dir.path(), "p", again).unwrap());
        assert!(pending_block_requests(dir.path()).unwrap().is_empty());
        assert!(!clear_block_request_made(dir.path(), "p", again).unwrap());
    }
}
