//! The agent's node-local files: `node.json` (what the plugin reads on every ADD), the
//! namespace → pools mirror, and the plugin binary and conflist the runtime loads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sinew_crds::ClusterNetwork;
use sinew_crds::node::{InstallReport, NodeState};
use sinew_node_lib::consts::PLUGIN_BINARY;
use sinew_node_lib::{fsutil, ipam, node_state};
use tracing::info;

use super::error::{Error, Result};
use crate::conflist;
use crate::install::{self, Outcome};

/// Writes `node.json` when it differs from `previous`; the order of effects matters, since
/// the plugin reads it on every ADD: a block's retired mark is dropped only after a durable
/// `node.json` stops listing it (a crash in between must not let an ADD allocate from a block
/// another node may own by now; `draining`, this node's blocks of pools being deleted, keep
/// theirs too, see `Agent::drain_deleted_pools`), and block requests are cleared only once
/// their pool has blocks. Returns whether it wrote.
pub fn write_node_state(
    state_dir: &Path,
    state: &NodeState,
    previous: Option<&NodeState>,
    draining: &BTreeSet<String>,
) -> Result<bool> {
    if previous == Some(state) {
        return Ok(false);
    }
    node_state::store(state, state_dir).map_err(Error::files("writing node.json"))?;
    for p in &state.pools {
        if !p.blocks.is_empty() {
            node_state::clear_block_request(state_dir, &p.name)
                .map_err(Error::files("clearing a block request"))?;
        }
    }
    let listed: BTreeSet<&String> = state
        .pools
        .iter()
        .flat_map(|p| p.blocks.iter())
        .chain(draining)
        .collect();
    let store = ipam::Store::new(state_dir);
    let retired = store
        .snapshot()
        .map_err(Error::files("reading the IPAM store"))?
        .retired;
    if retired.iter().any(|r| !listed.contains(r)) {
        store
            .update(|s| s.retired.retain(|r| listed.contains(r)))
            .map_err(Error::files("updating the IPAM store"))?;
    }
    Ok(true)
}

/// The boot the state file says the node was last ready in (kept across agent restarts).
pub fn ready_boot_on_disk(state_dir: &Path) -> String {
    node_state::load(state_dir)
        .ok()
        .flatten()
        .and_then(|s| s.ready_boot)
        .unwrap_or_default()
}

/// Mirrors `wanted` (namespace → pools) into `<state>/namespaces/<ns>`, where the plugin
/// looks when a pod has no annotation of its own. `mirrored` is what the last call wrote
/// (`None`: reconcile the directory whatever it holds).
pub fn mirror_namespace_pools(
    state_dir: &Path,
    wanted: &BTreeMap<String, String>,
    mirrored: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let dir = state_dir.join("namespaces");
    std::fs::create_dir_all(&dir).map_err(Error::files("creating the namespaces directory"))?;
    for (ns, pools) in wanted {
        if mirrored.and_then(|m| m.get(ns)) != Some(pools) {
            fsutil::atomic_write(&dir.join(ns), pools.as_bytes())
                .map_err(Error::files(format!("mirroring namespace {ns}")))?;
        }
    }
    for entry in std::fs::read_dir(&dir)
        .map_err(Error::files("listing namespaces"))?
        .filter_map(std::result::Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !wanted.contains_key(&name) {
            std::fs::remove_file(entry.path())
                .map_err(Error::files(format!("removing namespace {name}")))?;
        }
    }
    Ok(())
}

/// Where the plugin and conflist go on this node.
pub struct InstallDirs<'a> {
    pub conf_dir: &'a Path,
    pub bin_dir: &'a Path,
    pub state_dir: &'a Path,
    pub log_file: &'a Path,
}

/// Installs the plugin binary (when `plugin_sha256` is unknown, or the file disappeared) and
/// then the conflist; removes a stale conflist of ours under another priority. Returns the
/// install report.
pub fn install(
    network: &ClusterNetwork,
    dirs: &InstallDirs<'_>,
    plugin_source: &Path,
    plugin_sha256: &mut Option<String>,
    node: &str,
) -> Result<InstallReport> {
    let bin = dirs.bin_dir.join(PLUGIN_BINARY);
    if plugin_sha256.is_none() || !bin.exists() {
        let plugin = std::fs::read(plugin_source).map_err(Error::files(format!(
            "reading the plugin binary {}",
            plugin_source.display()
        )))?;
        let outcome = install::install_file(&bin, &plugin, 0o755)
            .map_err(Error::files(format!("installing {}", bin.display())))?;
        info!(node, path = %bin.display(), ?outcome, "plugin binary");
        *plugin_sha256 = Some(install::sha256_hex(&plugin));
    }
    let file = conflist::file_name(&network.spec.cni);
    let bytes = conflist::render(
        &network.spec.cni,
        network.spec.log_level,
        dirs.state_dir,
        dirs.log_file,
    );
    let target = dirs.conf_dir.join(&file);
    if install::install_file(&target, &bytes, 0o644)
        .map_err(Error::files(format!("installing {}", target.display())))?
        == Outcome::Written
    {
        info!(node, file = %file, "conflist written");
    }
    // A stale conflist of ours under another priority would shadow or linger: remove it.
    for old in std::fs::read_dir(dirs.conf_dir)
        .map_err(Error::files("listing the CNI configuration directory"))?
        .filter_map(std::result::Result::ok)
    {
        let name = old.file_name().to_string_lossy().into_owned();
        if name.ends_with("-sinew.conflist") && name != file {
            install::remove_file(&old.path()).map_err(Error::files(format!("removing {name}")))?;
        }
    }
    let report = install::conf_report(dirs.conf_dir, &file)
        .map_err(Error::files("reading the CNI configuration directory"))?;
    Ok(InstallReport {
        conflist: Some(file),
        conflist_hash: Some(install::sha256_hex(&bytes)),
        plugin_sha256: plugin_sha256.clone(),
        chosen: report.chosen,
        shadowing: report.shadowing,
        others: report.others,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_crds::PoolMode;
    use sinew_crds::node::PoolState;

    fn state(blocks: &[&str]) -> NodeState {
        NodeState {
            node: "n1".into(),
            pools: vec![PoolState {
                name: "p".into(),
                cidr: "10.244.0.0/16".into(),
                mode: PoolMode::Auto,
                mtu: 1450,
                disabled: false,
                reserved: vec![],
                blocks: blocks.iter().map(|b| b.to_string()).collect(),
                exhausted: false,
            }],
            ready_boot: None,
        }
    }

    #[test]
    fn node_state_is_written_before_retired_marks_and_requests_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = ipam::Store::new(dir.path());
        store
            .update(|s| {
                s.retired.insert("10.244.0.64/26".into());
                s.retired.insert("10.244.0.0/26".into());
            })
            .unwrap();
        node_state::request_block(dir.path(), "p").unwrap();
        let st = state(&["10.244.0.0/26"]);
        assert!(write_node_state(dir.path(), &st, None, &BTreeSet::new()).unwrap());
        assert_eq!(node_state::load(dir.path()).unwrap(), Some(st.clone()));
        // The unlisted block's mark goes (node.json no longer offers it); a listed one keeps it.
        let retired = store.snapshot().unwrap().retired;
        assert_eq!(retired, BTreeSet::from(["10.244.0.0/26".to_string()]));
        assert!(
            node_state::pending_block_requests(dir.path())
                .unwrap()
                .is_empty()
        );
        // Unchanged: nothing written.
        assert!(!write_node_state(dir.path(), &st, Some(&st), &BTreeSet::new()).unwrap());
    }

    #[test]
    fn namespace_mirror_follows_the_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = BTreeMap::from([("a".to_string(), "p1".to_string())]);
        mirror_namespace_pools(dir.path(), &wanted, None).unwrap();
        assert_eq!(
            node_state::namespace_pools(dir.path(), "a").as_deref(),
            Some("p1")
        );
        mirror_namespace_pools(dir.path(), &BTreeMap::new(), Some(&wanted)).unwrap();
        assert_eq!(node_state::namespace_pools(dir.path(), "a"), None);
    }
}
