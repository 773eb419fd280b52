//! The CNI operations: ADD, DEL, CHECK, STATUS, GC, VERSION.
//!
//! Order of effects in ADD, chosen so that a kill -9 at any instant is recoverable:
//! 1. allocate the addresses and record the attachment, host ports included, in the IPAM store
//!    (one atomic write; a host port another pod holds refuses the ADD here);
//! 2. program the datapath (veth, addresses, routes, then the host ports' nftables elements);
//! 3. print the result.
//!
//! A crash after 1 leaves a recorded attachment that the runtime's DEL (it always sends one
//! for a failed ADD) or GC removes; nothing is ever programmed without a record, so nothing can
//! leak unseen. DEL undoes the datapath first and drops the record last, for the same reason.
//! The store is replaced atomically but never flushed to the disk here: what it records dies
//! with the boot, and the agent repairs it in the next one (`Store::unflushed`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sinew_core::Family;
use tracing::{debug, info, warn};

use crate::config::{self, NetConf};
use crate::datapath::{self, Datapath};
use crate::error::{CniError, CniResult, Code};
use crate::invocation::{Command, Invocation};
use crate::logging;
use crate::result::CniOutput;
use crate::version::{self, Version};
use sinew_core::node::{NodeState, POOL_ANNOTATION, PoolState};
use sinew_node_lib::hostport::{self, HostPort, PortMapping};
use sinew_node_lib::ipam::{AllocError, Attachment, AttachmentKey, IpamState, Store};
use sinew_node_lib::netns::NetNs;
use sinew_node_lib::node_state;

/// What the plugin prints on success (DEL, GC and CHECK print nothing).
pub type Output = Option<Value>;

/// Where the time of one invocation went: elapsed time at each step, logged at debug level
/// (`"logLevel": "debug"`), so a slow ADD or DEL can be explained without a profiler.
struct Timeline {
    start: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            marks: Vec::with_capacity(8),
        }
    }

    fn mark(&mut self, step: &'static str) {
        self.marks.push((step, self.start.elapsed()));
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = Duration::ZERO;
        for (step, at) in &self.marks {
            write!(f, "{step}={}us ", at.saturating_sub(previous).as_micros())?;
            previous = *at;
        }
        write!(f, "total={}us", previous.as_micros())
    }
}

/// Runs one invocation against `datapath`.
pub fn run(inv: &Invocation, stdin: &[u8], dp: &dyn Datapath) -> CniResult<Output> {
    if inv.command == Command::Version {
        return Ok(Some(version_output(stdin)));
    }
    let mut timeline = Timeline::new();
    let (conf, version) = config::parse(stdin)?;
    timeline.mark("parse");
    logging::init(conf.log_file.as_deref(), conf.log_level);
    timeline.mark("log_init");
    let state_dir = conf.state_dir();
    match inv.command {
        Command::Add => add(inv, &conf, version, dp, &mut timeline).map(Some),
        Command::Del => del(inv, &state_dir, dp, &mut timeline).map(|()| None),
        Command::Check => {
            require(version, Version::V0_4_0, "CHECK")?;
            check(inv, &state_dir, dp).map(|()| None)
        }
        Command::Status => {
            require(version, Version::V1_1_0, "STATUS")?;
            status(&state_dir).map(|()| None)
        }
        Command::Gc => {
            require(version, Version::V1_1_0, "GC")?;
            gc(&conf, &state_dir, dp).map(|()| None)
        }
        Command::Version => Ok(Some(version_output(stdin))),
    }
}

fn require(have: Version, need: Version, what: &str) -> CniResult<()> {
    if have < need {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("{what} needs cniVersion {need} or later; the configuration says {have}"),
        ));
    }
    Ok(())
}

fn version_output(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    json!({"cniVersion": asked, "supportedVersions": version::SUPPORTED})
}

fn io_error(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::new(Code::Io, format!("{what}: {e}"))
}

fn open_netns(inv: &Invocation) -> CniResult<NetNs> {
    let path = inv.netns.as_deref().unwrap_or_default();
    NetNs::open(Path::new(path)).map_err(|e| {
        let code = if e.is_not_found() {
            Code::UnknownContainer
        } else {
            Code::InvalidEnvironment
        };
        CniError::new(code, format!("CNI_NETNS {path:?}: {e}"))
    })
}

/// Pools to take addresses from: the pod's `sinew.dev/ippool` annotation (from the runtime),
/// else its namespace's (kept by the agent), else the first enabled pool of each family.
fn select_pools<'a>(
    inv: &Invocation,
    conf: &NetConf,
    node: &'a NodeState,
    state_dir: &Path,
) -> CniResult<Vec<&'a PoolState>> {
    let from_pod = conf
        .runtime_config
        .pod_annotations
        .as_ref()
        .and_then(|a| a.get(POOL_ANNOTATION))
        .map(|s| (s.clone(), "pod annotation"));
    let from_namespace = || {
        inv.pod
            .namespace
            .as_deref()
            .and_then(|ns| node_state::namespace_pools(state_dir, ns))
            .map(|s| (s, "namespace annotation"))
    };
    if let Some((names, source)) = from_pod.or_else(from_namespace) {
        let mut chosen = Vec::new();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let pool = node.pool(name).ok_or_else(|| {
                CniError::new(
                    Code::InvalidNetworkConfig,
                    format!("{source} {POOL_ANNOTATION}={names:?} names pool {name:?}, which does not exist or does not select node {}", node.node),
                )
            })?;
            if pool.disabled {
                return Err(CniError::new(
                    Code::InvalidNetworkConfig,
                    format!(
                        "pool {name} (from the {source}) is disabled: it hands out no new addresses"
                    ),
                ));
            }
            chosen.push(pool);
        }
        if chosen.is_empty() {
            return Err(CniError::new(
                Code::InvalidNetworkConfig,
                format!("{source} {POOL_ANNOTATION}={names:?} names no pool"),
            ));
        }
        return Ok(chosen);
    }
    let mut families = BTreeSet::new();
    let chosen: Vec<&PoolState> = node
        .pools
        .iter()
        .filter(|p| !p.disabled)
        .filter(|p| p.family().is_some_and(|f| families.insert(f)))
        .collect();
    if chosen.is_empty() {
        return Err(CniError::new(
            Code::TryAgainLater,
            format!("node {} has no enabled IPPool yet", node.node),
        ));
    }
    Ok(chosen)
}

/// The node state for ADD: present, and written by an agent that completed a pass in this
/// boot (else "try again later": the runtime retries the sandbox).
fn load_node_state(state_dir: &Path) -> CniResult<NodeState> {
    let node = node_state::load(state_dir)
        .map_err(io_error(format!(
            "reading {}",
            node_state::node_state_path(state_dir).display()
        )))?
        .ok_or_else(|| {
            CniError::new(
                Code::TryAgainLater,
                format!(
                    "the sinew node agent has not written {} yet",
                    node_state::node_state_path(state_dir).display()
                ),
            )
        })?;
    match node_state::not_ready_since_boot(&node) {
        Some(why) => Err(CniError::new(Code::TryAgainLater, why)),
        None => Ok(node),
    }
}

fn add(
    inv: &Invocation,
    conf: &NetConf,
    version: Version,
    dp: &dyn Datapath,
    timeline: &mut Timeline,
) -> CniResult<Value> {
    // A malformed prevResult is refused before anything is allocated or programmed.
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniOutput::from_prev_result)
        .transpose()?;
    let mappings = config::port_mappings(conf.runtime_config.port_mappings.as_ref())?;
    let state_dir = conf.state_dir();
    let netns = open_netns(inv)?;
    let key = AttachmentKey::new(&inv.container_id, &inv.ifname);
    // Atomic for every process, not flushed to the disk: see `Store::unflushed`.
    let store = Store::new(&state_dir).unflushed();

    // `node.json` is read under the store's lock: the agent gives a block back by retiring it
    // in the store, deleting its IPBlock, writing `node.json` without it and only then
    // forgetting the retirement, each store step under the lock. Read outside it, a block
    // list from before the release could meet a store from after it, and hand out an address
    // of a block another node may own by then.
    let (recorded, node) = store
        .update(|state| -> CniResult<_> {
            let node = load_node_state(&state_dir)?;
            let pools = select_pools(inv, conf, &node, &state_dir)?;
            Ok((
                allocate(state, &key, inv, &conf.name, &pools, &mappings),
                node,
            ))
        })
        .map_err(io_error("updating the IPAM store"))??;
    timeline.mark("ipam");
    let (attachment, existed) = match recorded {
        Ok(r) => r,
        Err(Refused::HostPortTaken { port, holder }) => {
            return Err(CniError::new(
                Code::TryAgainLater,
                format!(
                    "host port {} {} on {} is held by {holder} on node {}; it is free once that pod is gone",
                    port.protocol,
                    port.host_port,
                    port.host_ip
                        .map_or_else(|| "every local address".to_string(), |ip| ip.to_string()),
                    node.node
                ),
            ));
        }
        Err(Refused::Alloc(AllocError::Exhausted { pool })) => {
            if let Err(e) = node_state::request_block(&state_dir, &pool) {
                warn!(pool = %pool, error = %e, "could not signal the node agent for a block");
            }
            let exhausted = node.pools.iter().any(|p| p.name == pool && p.exhausted);
            return Err(CniError::new(
                Code::TryAgainLater,
                if exhausted {
                    format!(
                        "pool {pool} is exhausted: no free address on node {} and no unclaimed block left in the pool (see `kubectl get ippool {pool}`; free addresses or add a pool)",
                        node.node
                    )
                } else {
                    format!(
                        "pool {pool} has no free address on node {}; a new block has been requested from the node agent",
                        node.node
                    )
                },
            ));
        }
        Err(Refused::Alloc(e @ AllocError::BadPool { .. })) => {
            return Err(CniError::new(Code::InvalidNetworkConfig, e.to_string()));
        }
    };

    let setup = match dp.setup(&attachment, &netns) {
        Ok(s) => s,
        Err(e) => {
            // Roll back a new attachment, but drop its record only once its datapath is gone:
            // a record without a datapath is harmless, a datapath without a record is a leak
            // nothing would find again.
            if !existed {
                match dp.teardown(&attachment) {
                    Ok(()) => {
                        let _ = store.update(|s| s.remove_attachment(&key));
                    }
                    Err(t) => {
                        warn!(container = %inv.container_id, error = %t, "rollback could not remove the datapath; the record stays for DEL or GC")
                    }
                }
            }
            return Err(CniError::new(
                Code::Datapath,
                format!("setting up {}: {e}", inv.ifname),
            ));
        }
    };
    timeline.mark("datapath");
    debug!(%timeline, "ADD timing");
    info!(
        container = %inv.container_id,
        pod = ?inv.pod.name, namespace = ?inv.pod.namespace,
        ips = ?attachment.addresses.iter().map(|a| a.ip).collect::<Vec<_>>(),
        repeat = existed,
        "ADD"
    );
    let ours = datapath::result_for(&attachment, &setup);
    let out = match prev {
        Some(prev) => prev.merge(ours),
        None => ours,
    };
    Ok(out.render(version))
}

/// Why ADD could not record an attachment.
enum Refused {
    Alloc(AllocError),
    /// Another pod's record holds this host port (same protocol, address and port).
    HostPortTaken {
        port: HostPort,
        holder: String,
    },
}

/// Allocates (or finds, for a repeated ADD) the attachment of `key`. Nothing is changed
/// unless every pool yields an address and no other pod holds one of its host ports. A
/// repeated ADD keeps what its record says, host ports included.
fn allocate(
    state: &mut IpamState,
    key: &AttachmentKey,
    inv: &Invocation,
    network: &str,
    pools: &[&PoolState],
    mappings: &[PortMapping],
) -> Result<(Attachment, bool), Refused> {
    if let Some(existing) = state.attachment(key) {
        return Ok((existing.clone(), true));
    }
    let mut draft = state.clone();
    let mut addresses = Vec::with_capacity(pools.len());
    for pool in pools {
        addresses.push(draft.allocate(pool, key).map_err(Refused::Alloc)?);
    }
    let wanted = hostport::host_ports(mappings, addresses.iter().map(|a| a.ip));
    if let Some((port, holder)) = hostport::conflict(state, key, &wanted) {
        let holder = match (&holder.pod_namespace, &holder.pod_name) {
            (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
            _ => format!("container {}", holder.container_id),
        };
        return Err(Refused::HostPortTaken { port, holder });
    }
    let attachment = Attachment {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: inv.netns.clone(),
        host_veth: datapath::host_veth_name(&inv.container_id, &inv.ifname),
        mtu: pools.iter().map(|p| p.mtu).min().unwrap_or(1500),
        addresses,
        pod_namespace: inv.pod.namespace.clone(),
        pod_name: inv.pod.name.clone(),
        pod_uid: inv.pod.uid.clone(),
        network: Some(network.to_string()),
        port_mappings: mappings.to_vec(),
    };
    draft.insert_attachment(attachment.clone());
    *state = draft;
    Ok((attachment, false))
}

fn del(
    inv: &Invocation,
    state_dir: &Path,
    dp: &dyn Datapath,
    timeline: &mut Timeline,
) -> CniResult<()> {
    let key = AttachmentKey::new(&inv.container_id, &inv.ifname);
    let store = Store::new(state_dir).unflushed();
    let snapshot = match store.snapshot() {
        Ok(s) => s,
        Err(e) => {
            // The store cannot be read (corrupt, a disk error): the pod's interface still
            // goes (its name derives from the container), and the error says why its address
            // cannot be released yet.
            let name = datapath::host_veth_name(&inv.container_id, &inv.ifname);
            let removed = dp.remove_host_veth(&name);
            return Err(CniError::new(
                Code::Io,
                format!(
                    "reading the IPAM store: {e}; the host interface {name} was {}, but the address stays recorded until the store is repaired",
                    if removed.is_ok() {
                        "removed"
                    } else {
                        "not removed either"
                    }
                ),
            ));
        }
    };
    match snapshot.attachment(&key) {
        Some(attachment) => {
            timeline.mark("read_store");
            // The record goes only once the datapath is gone.
            dp.teardown(attachment).map_err(|e| {
                CniError::new(
                    Code::Datapath,
                    format!("removing {}: {e}", attachment.host_veth),
                )
            })?;
            timeline.mark("datapath");
            store
                .update(|s| {
                    s.remove_attachment(&key);
                })
                .map_err(io_error("updating the IPAM store"))?;
            timeline.mark("ipam");
            debug!(%timeline, "DEL timing");
            info!(container = %inv.container_id, pod = ?inv.pod.name, "DEL");
        }
        None => {
            // Nothing recorded: still remove a veth a crashed ADD may have left.
            let name = datapath::host_veth_name(&inv.container_id, &inv.ifname);
            dp.remove_host_veth(&name)
                .map_err(|e| CniError::new(Code::Datapath, format!("removing {name}: {e}")))?;
        }
    }
    Ok(())
}

fn check(inv: &Invocation, state_dir: &Path, dp: &dyn Datapath) -> CniResult<()> {
    let netns = open_netns(inv)?;
    let key = AttachmentKey::new(&inv.container_id, &inv.ifname);
    let snapshot = Store::new(state_dir)
        .snapshot()
        .map_err(io_error("reading the IPAM store"))?;
    let attachment = snapshot.attachment(&key).ok_or_else(|| {
        CniError::new(
            Code::UnknownContainer,
            format!(
                "no attachment of container {} interface {} is recorded",
                inv.container_id, inv.ifname
            ),
        )
    })?;
    let problems = dp.check(attachment, &netns);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(Code::CheckMismatch, problems.join("; ")))
    }
}

fn status(state_dir: &Path) -> CniResult<()> {
    let unavailable = |msg: String| Err(CniError::new(Code::PluginNotAvailable, msg));
    let node = match node_state::load(state_dir) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return unavailable("the sinew node agent has not written node state yet".into());
        }
        Err(e) => return unavailable(format!("node state unreadable: {e}")),
    };
    if let Some(why) = node_state::not_ready_since_boot(&node) {
        return unavailable(why);
    }
    let usable: Vec<&PoolState> = node
        .pools
        .iter()
        .filter(|p| !p.disabled && !p.blocks.is_empty())
        .collect();
    if usable.is_empty() {
        return unavailable(format!(
            "node {} owns no block of an enabled pool yet",
            node.node
        ));
    }
    // Every usable pool exhausted (no unclaimed block left, as the agent found, and no free
    // address in this node's blocks): no new pod can get an address here.
    if usable.iter().all(|p| p.exhausted)
        && let Ok(state) = Store::new(state_dir).snapshot()
    {
        let probe = AttachmentKey::new("sinew-status-probe", "eth0");
        if usable
            .iter()
            .all(|p| state.clone().allocate(p, &probe).is_err())
        {
            let names: Vec<&str> = usable.iter().map(|p| p.name.as_str()).collect();
            return unavailable(format!(
                "every pool of node {} is exhausted ({}): no address left for a new pod",
                node.node,
                names.join(", ")
            ));
        }
    }
    Ok(())
}

fn gc(conf: &NetConf, state_dir: &Path, dp: &dyn Datapath) -> CniResult<()> {
    // Without the list nothing proves an attachment stale: refuse rather than wipe the node.
    let listed = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidNetworkConfig,
            "GC needs cni.dev/valid-attachments (the attachments still in use); without it nothing is released",
        )
    })?;
    let valid: BTreeSet<AttachmentKey> = listed
        .iter()
        .map(|a| AttachmentKey::new(&a.container_id, &a.ifname))
        .collect();
    let store = Store::new(state_dir);
    let snapshot = store
        .snapshot()
        .map_err(io_error("reading the IPAM store"))?;
    for key in snapshot.stale_attachments(&conf.name, &valid) {
        if let Some(attachment) = snapshot.attachment(&key)
            && let Err(e) = dp.teardown(attachment)
        {
            warn!(container = %key.container_id, error = %e, "GC could not remove the datapath");
            continue;
        }
        store
            .update(|s| s.remove_attachment(&key))
            .map_err(io_error("updating the IPAM store"))?;
        info!(container = %key.container_id, ifname = %key.ifname, "GC released");
    }
    let freed = store
        .update(IpamState::free_orphaned_slots)
        .map_err(io_error("updating the IPAM store"))?;
    if !freed.is_empty() {
        info!(addresses = ?freed, "GC freed addresses without an attachment");
    }
    let live: BTreeSet<String> = store
        .snapshot()
        .map_err(io_error("reading the IPAM store"))?
        .attachments
        .values()
        .map(|a| a.host_veth.clone())
        .collect();
    dp.remove_stray_host_veths(&live)
        .map_err(|e| CniError::new(Code::Datapath, format!("GC of stray veths: {e}")))?;
    Ok(())
}

/// Addresses of one family held by an attachment (used by the datapath and CHECK).
pub fn family_addresses(attachment: &Attachment, family: Family) -> Vec<IpAddr> {
    attachment
        .addresses
        .iter()
        .map(|a| a.ip)
        .filter(|ip| Family::of(*ip) == family)
        .collect()
}
