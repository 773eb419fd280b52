//! The node agent (`sinew-node run`): watches the cluster, claims blocks, writes the node
//! state the plugin reads, programs peers, installs the conflist once the node can serve pods,
//! and reports allocations and install state back to the API server.
//!
//! State machine of one node:
//!
//! ```text
//! Waiting ──ClusterNetwork + Node address known──▶ Claiming ──a block per selected pool──▶
//! Programming ──peer routes applied──▶ Ready (conflist written, NetworkUnavailable=False)
//!      ▲                                                                     │
//!      └────────────── every change and every resync re-runs the pass ◀──────┘
//! ClusterNetwork deleting ──▶ CleaningUp (conflist, binary, routes, VXLAN) ──▶ CleanedUp
//! ```
//!
//! Shape: the [`index`] turns watched objects into pruned views; pure planners decide
//! (`vetting`, `blocks`, `peers`, [`decide`], `sysctl`, `nat::table`, `conflist::render`);
//! effectors carry the decisions out ([`api`] for the API server, `datapath::Kernel` for
//! netlink and nftables, [`node_files`] for node-local files). [`pass`] strings one pass's
//! steps together (view, forwarding, peers, blocks, node state, probes, tables, serving,
//! report); [`own_blocks`] keeps this node's blocks; [`cleanup`] removes sinew from the node.
//! `pass_tests` runs whole passes against fakes of every effect (decision 103, 104).

mod api;
mod cleanup;
mod decide;
pub mod error;
mod index;
mod leaks;
mod node_files;
mod observe;
mod own_blocks;
mod pass;
mod reverse;
mod settings;
mod sysctls;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{Client, ResourceExt};
use sinew_crds::node::NodeState;
use sinew_crds::node::{
    InstallReport, NODE_STATE_ANNOTATION, NodeReport, Problem, ProblemKind, VTEP_MAC_ANNOTATION,
};
use sinew_crds::{
    Allocation, Cidr, ClusterNetwork, DropLogMode, Family, IPBlockUsageStatus, IPPool,
    NetworkPolicyMode, PoolMode,
};
use sinew_node_lib::consts::VXLAN_DEVICE;
use sinew_node_lib::ipam;
use sinew_node_lib::netlink::{Link, Netlink, NetlinkError};
use sinew_node_lib::node_state;
use sinew_runtime::node::NodeFacts;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::blocks::{self, BlockNeed, BlockUsage};
use crate::datapath::{self, Kernel, Underlay, VxlanParams};
use crate::diagnose;
use crate::http;
use crate::nat;
use crate::node_watch::{NodeWatch, Watched};
use crate::peers;
use crate::policy::Policy;
use crate::probe;
use crate::sysctl::{self, SysctlDir};
use crate::tunnel;
use crate::vetting;

use api::ApiWriter;
use decide::PoolView;
use error::{Error, Result};
use index::{Cluster, Derived, mac_string};
pub use settings::{ListenAddr, Settings};

/// The trusted blocks, and a problem line per block refused ([`vetting::blocks`]).
type VettedBlocks = (Arc<[peers::BlockInfo]>, Vec<Problem>);

/// What the agent remembers between passes.
#[derive(Default)]
struct PassMemory {
    node_state: Option<NodeState>,
    /// A pass completed (forwarding, peers, VXLAN) in this process; the node is then ready
    /// for pods in this boot.
    pass_completed: bool,
    plugin_sha256: Option<String>,
    /// What each owned block's `IPBlockUsage` last said, by block UID.
    reported_blocks: BTreeMap<String, IPBlockUsageStatus>,
    /// When every usage was last written whatever `reported_blocks` says.
    usages_asserted: Option<Instant>,
    published: Option<String>,
    /// The nftables table last applied.
    nat: Option<sinew_node_lib::nft::Table>,
    /// Namespace -> pools, as last mirrored to disk (`None` until the first pass of this
    /// process, which reconciles the directory whatever it holds).
    namespace_pools: Option<BTreeMap<String, String>>,
    /// When each owned block was first seen empty.
    empty_since: blocks::EmptySince,
    /// Last conflist situation an Event was recorded for.
    evented: Option<String>,
    cleaned: bool,
    /// Pools that had no unclaimed block left when this node needed one.
    exhausted: BTreeSet<String>,
    /// Dangling host veths of sinew, and when each was first seen.
    dangling_since: BTreeMap<String, Instant>,
    /// The problems of the last report, by kind (for Events when they appear and clear).
    problem_kinds: BTreeMap<ProblemKind, String>,
    /// The plugin's block requests the last pass read, and when each was made: only a new
    /// one (or one made again) wakes a pass.
    requests_read: BTreeMap<String, std::time::SystemTime>,
    /// Release requests refused because the pod's sandbox runs here (address, generation):
    /// said once, not every pass.
    leaks_kept: BTreeSet<(String, u64)>,
    /// What the last apply left in the kernel (`None`: unknown, the next pass compares the
    /// whole kernel).
    programmed: Option<datapath::Programmed>,
    /// The routes the node checks saw (all but sinew's peer routes) at the last full look.
    observed_routes: Option<Vec<sinew_node_lib::netlink::RouteEntry>>,
    /// Reverse-path verdicts of peers' blocks (a bounded number asked per pass).
    reverse: reverse::ReverseChecks,
    /// What the probes read of peers' reports, parsed once per version of each Node.
    peer_reports: index::PeerReports,
    /// The nodes' count of changes `peer_reports` was brought in line with.
    peer_reports_at: Option<u64>,
    /// Views of the watched stores, kept while what they came from is unchanged.
    nodes: Derived<u64, Arc<peers::Nodes>>,
    modes: Derived<(u64, u64), BTreeMap<String, PoolMode>>,
    vetted: Derived<(u64, u64), VettedBlocks>,
    peering: Derived<(u64, u64, u64, Underlay), Arc<decide::Peering>>,
}

pub struct Agent {
    settings: Settings,
    cluster: Cluster,
    api: ApiWriter,
    memory: PassMemory,
    notify: Arc<Notify>,
    metrics: Arc<http::Metrics>,
    /// The probe mesh (`None` where its thread could not start).
    mesh: Option<probe::Mesh>,
    /// Wakes a pass when the node changes under the agent (`None` where it could not start).
    node_watch: Option<NodeWatch>,
    /// The NetworkPolicy loop (idle while the network does not enforce policy).
    policy: Policy,
    /// Woken when the plugin changes the IPAM store or asks for a block.
    local: Arc<Notify>,
    /// Opens the kernel a pass reads and writes (netlink on a node).
    kernel: OpenKernel,
}

/// Opens the kernel for one pass.
type OpenKernel = Arc<dyn Fn() -> std::result::Result<Box<dyn Kernel>, NetlinkError> + Send + Sync>;

/// The node's kernel, through netlink.
fn netlink() -> std::result::Result<Box<dyn Kernel>, NetlinkError> {
    Ok(Box::new(Netlink::new()?))
}

/// One pass's view of the local node.
struct LocalNode {
    underlay: Underlay,
    labels: BTreeMap<String, String>,
    node: Arc<NodeFacts>,
}

impl Agent {
    pub async fn start(settings: Settings, client: Client) -> Agent {
        let notify = Arc::new(Notify::new());
        let metrics = Arc::new(http::Metrics::new(&settings.node_name));
        let cluster = Cluster::watch(
            &client,
            &notify,
            settings.peer_selector.as_deref(),
            &metrics,
        );
        let mesh = probe::Mesh::start(notify.clone())
            .map_err(|e| warn!(error = %e, "cannot start the probe mesh; peers are not probed"))
            .ok();
        let node_watch = NodeWatch::start(notify.clone())
            .map_err(|e| warn!(error = %e, "cannot watch the node's network configuration; node checks run at each resync only"))
            .ok();
        // One watch of the node state directory wakes both the passes and the policy loop.
        let local = Arc::new(Notify::new());
        let policy_local = Arc::new(Notify::new());
        let watching = watch_local_state(
            &settings.state_dir,
            vec![local.clone(), policy_local.clone()],
        );
        let policy = Policy::start(crate::policy::engine::Loop {
            client: client.clone(),
            kernel: Box::new(crate::policy::engine::Kernel),
            node: settings.node_name.clone(),
            state_dir: settings.state_dir.clone(),
            local: policy_local,
            local_watched: watching,
            pass: notify.clone(),
            metrics: metrics.clone(),
        });
        Agent {
            node_watch,
            mesh,
            policy,
            local,
            api: ApiWriter::new(client, &settings.node_name),
            metrics,
            settings,
            cluster,
            memory: PassMemory::default(),
            notify,
            kernel: Arc::new(netlink),
        }
    }

    fn node(&self) -> &str {
        &self.settings.node_name
    }

    /// Runs passes forever: on every watched change, on a block request from the plugin and
    /// at least every `resync`; syncs `IPBlock` status whenever the plugin changed the store
    /// (inotify; polled twice a second where inotify is unavailable).
    pub async fn run(mut self) -> anyhow::Result<()> {
        // The probes first: the kubelet must get answers while the caches sync, which takes
        // as long as the API server does (a slow one must not crash-loop every agent).
        if let Some(addr) = self.settings.probe_addr {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot serve the probes /healthz and /readyz on {addr}: {e}")
            })?;
            info!(node = %self.node(), %addr, "serving the probes /healthz and /readyz");
            tokio::spawn(http::serve_probes(
                listener,
                self.metrics.clone(),
                self.settings.stall_after,
            ));
        }
        self.cluster.synced().await.map_err(anyhow::Error::msg)?;
        info!(node = %self.node(), "caches synced; agent running");
        self.metrics.synced();
        let notify = self.notify.clone();
        let local = self.local.clone();
        let mut last_full = tokio::time::Instant::now();
        let mut serving = self.settings.metrics_addr == ListenAddr::Off;
        let mut allocations_changed = false;
        loop {
            if !serving {
                serving = self.serve_http();
            }
            // A pass follows every change of this node's allocations written out (claims
            // ahead of need, empty blocks, the clean-up's wait for pods read them).
            let woke = allocations_changed
                || tokio::select! {
                    _ = notify.notified() => true,
                    _ = local.notified() => false,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => false,
                };
            // A request the last pass read and could not serve is not asked again until the
            // plugin makes it again (another ADD): no pass every 500 ms for a full pool.
            let requested = blocks::fresh_requests(
                &node_state::block_requests(&self.settings.state_dir).unwrap_or_default(),
                &self.memory.requests_read,
            );
            let due = last_full.elapsed() >= self.settings.resync;
            if woke || requested || due {
                self.metrics.passes.inc();
                if let Err(e) = self.pass(due).await {
                    self.metrics.pass_failed(e.label());
                    warn!(node = %self.node(), kind = e.label(), error = %e, "pass failed; retrying");
                }
                last_full = tokio::time::Instant::now();
            }
            allocations_changed = match self.sync_block_status().await {
                Ok(written) => written,
                Err(e) => {
                    warn!(node = %self.node(), kind = e.label(), error = %e, "status sync failed");
                    false
                }
            };
            self.metrics.beat();
        }
    }

    /// Starts the metrics listener once its address is known; `false` while it is not.
    fn serve_http(&self) -> bool {
        let addr = match self.settings.metrics_addr {
            ListenAddr::Off => return true,
            ListenAddr::At(addr) => addr,
            ListenAddr::NodeIp(port) => {
                match self
                    .cluster
                    .node(self.node())
                    .and_then(|n| n.addresses.primary)
                {
                    Some(ip) => std::net::SocketAddr::new(ip, port),
                    None => return false,
                }
            }
        };
        let metrics = self.metrics.clone();
        let stall_after = self.settings.stall_after;
        tokio::spawn(async move {
            if let Err(e) = http::serve_metrics(addr, metrics, stall_after).await {
                warn!(%addr, error = %e, "cannot serve /metrics");
            }
        });
        info!(%addr, "serving /metrics");
        true
    }

    fn local(&self) -> Result<Option<LocalNode>> {
        let Some(node) = self.cluster.node(self.node()) else {
            return Ok(None);
        };
        let Some(ip) = node.addresses.primary else {
            return Ok(None);
        };
        let underlay = datapath::find_underlay(&mut *(self.kernel)()?, ip)?.ok_or_else(|| {
            Error::Node(format!(
                "no interface on this node holds the Node's address {ip}"
            ))
        })?;
        Ok(Some(LocalNode {
            underlay,
            labels: node.labels().clone(),
            node,
        }))
    }

    fn sysctls(&self) -> SysctlDir {
        SysctlDir(self.settings.sysctl_dir.clone())
    }

    /// Mirrors the namespaces' pool annotations to disk for the plugin, when they changed.
    fn mirror_namespace_pools(&mut self) -> Result<()> {
        let wanted = self.cluster.namespace_pools();
        if self.memory.namespace_pools.as_ref() != Some(&wanted) {
            node_files::mirror_namespace_pools(
                &self.settings.state_dir,
                &wanted,
                self.memory.namespace_pools.as_ref(),
            )?;
            self.memory.namespace_pools = Some(wanted);
        }
        Ok(())
    }

    /// Asks the kernel, for one block of each peer and path, whether traffic from its pods
    /// arriving where sinew's routes send it back passes reverse-path filtering (IPv4 only:
    /// IPv6 has no `rp_filter`). A bounded number of questions per pass (see [`reverse`]);
    /// the drops are those of the last answers.
    fn reverse_drops(
        &mut self,
        nl: &mut dyn Kernel,
        plan: &peers::Plan,
        local: &LocalNode,
        vxlan: &Link,
    ) -> Vec<diagnose::ReverseDrop> {
        let IpAddr::V4(_) = local.underlay.ip else {
            return Vec::new();
        };
        let sys = self.sysctls();
        let read = |dev: &str| sysctl::read_number(&sys, &sysctl::rp_filter_key(dev));
        let device = |path: peers::PeerPath| match path {
            peers::PeerPath::Routed => (local.underlay.index, local.underlay.name.clone()),
            peers::PeerPath::Vxlan => (vxlan.index, vxlan.name.clone()),
        };
        let mut seen = std::collections::HashSet::new();
        let pairs: Vec<(reverse::Pair, Cidr)> = plan
            .routes
            .iter()
            .filter(|r| r.dst.family() == Family::V4 && seen.insert((&r.peer, r.path)))
            .map(|r| ((r.peer.clone(), r.path), r.dst))
            .collect();
        let (all, underlay, vxlan_own) =
            (read("all"), read(&local.underlay.name), read(&vxlan.name));
        let own = |path: peers::PeerPath| match path {
            peers::PeerPath::Routed => underlay,
            peers::PeerPath::Vxlan => vxlan_own,
        };
        for (pair, block) in self
            .memory
            .reverse
            .questions(&pairs, vec![all, underlay, vxlan_own])
        {
            let Some(src) = block.nth(1) else {
                continue;
            };
            match nl.input_accepted(src, local.underlay.ip, device(pair.1).0) {
                Ok(accepted) => self.memory.reverse.answered(pair, block, accepted),
                Err(e) => debug!(node = %self.node(), error = %e, "input route lookup failed"),
            }
        }
        self.memory
            .reverse
            .dropped()
            .map(|((peer, path), block)| diagnose::ReverseDrop {
                peer: peer.clone(),
                block: *block,
                all,
                own: own(*path),
                device: device(*path).1,
            })
            .collect()
    }

    /// Turns on the forwarding the node's pools need (see [`sysctls`]) and has the node watch
    /// watch it; `false` (with a problem) where it cannot.
    fn ensure_forwarding(
        &self,
        pools: &PoolView,
        local: &LocalNode,
        problems: &mut Vec<Problem>,
    ) -> bool {
        let families: BTreeSet<Family> = pools
            .selected
            .iter()
            .filter_map(|p| pools.facts.get(&p.name_any()))
            .map(|f| f.cidr.family())
            .collect();
        let families: Vec<_> = families.into_iter().collect();
        let out = sysctls::ensure_forwarding(
            &self.sysctls(),
            &families,
            &local.underlay.name,
            self.memory.pass_completed,
        );
        if let Some(node_watch) = &self.node_watch {
            node_watch.watch(Watched {
                conf_dir: self.cluster.network().map(|n| self.conf_dir(&n)),
                settings: out.watched,
            });
        }
        problems.extend(out.problems);
        out.complete
    }

    /// In a new boot, before the node serves pods: a store a power loss tore (the plugin does
    /// not flush it, see `ipam::Store::unflushed`) is set aside, so that the node starts from
    /// an empty store instead of refusing every pod. Its records named pods of a past boot.
    /// Within one boot (an agent restart) a torn store is a fault: it is left to be reported.
    async fn repair_store_of_a_past_boot(&mut self, local: &LocalNode) -> Result<()> {
        if node_files::ready_boot_on_disk(&self.settings.state_dir) == node_state::current_boot_id()
        {
            return Ok(());
        }
        let Some(aside) = self
            .store()
            .set_aside_if_torn()
            .map_err(Error::files("checking the IPAM store"))?
        else {
            return Ok(());
        };
        warn!(node = %self.node(), set_aside = %aside.display(), "the IPAM store was torn by a crash in an earlier boot: set aside, starting from an empty store");
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "IPAMStoreTorn".into(),
            note: Some(format!(
                "the node's IPAM store was torn by a crash in an earlier boot (its pods are gone with that boot); moved to {} and started empty",
                aside.display()
            )),
            action: "Repair".into(),
            secondary: None,
        };
        if let Err(e) = self.api.event(&local.node, &event).await {
            warn!(node = %self.node(), error = %e, "recording an Event failed");
        }
        Ok(())
    }

    /// Writes `node.json` when it changed, stamped with the boot the node is ready in.
    fn store_node_state(
        &mut self,
        network: &ClusterNetwork,
        local: &LocalNode,
        pools: &PoolView,
    ) -> Result<()> {
        let mut state = decide::node_state(
            self.node(),
            network.spec.fixed_mtu(),
            &local.underlay,
            pools,
            &self.memory.exhausted,
        );
        state.ready_boot = Some(if self.memory.pass_completed {
            node_state::current_boot_id()
        } else {
            // Not yet: keep what the file says (the same boot after an agent restart stays
            // ready; a file from before a reboot stays stale until this boot's first pass).
            node_files::ready_boot_on_disk(&self.settings.state_dir)
        });
        if node_files::write_node_state(
            &self.settings.state_dir,
            &state,
            self.memory.node_state.as_ref(),
            &self.draining_blocks(),
        )? {
            self.memory.node_state = Some(state);
        }
        Ok(())
    }

    /// Keeps the `inet sinew` nftables table in line with every pool of the cluster (NAT) and
    /// every node's address (who may send VXLAN here), with every pod's host ports from the
    /// IPAM store (read under its lock), over netlink in one batch; rewritten only when the
    /// declared table differs from the last one applied (compared as values) or is gone.
    fn apply_nft(
        &mut self,
        nl: &mut dyn Kernel,
        vxlan_port: u16,
        pools: &[Arc<IPPool>],
        nodes: &peers::Nodes,
    ) -> std::result::Result<(), nat::NatError> {
        let pools = Cluster::nat_pools(pools);
        let peers = nat::VxlanPeers {
            port: vxlan_port,
            nodes: nodes.list.iter().map(|n| n.ip).collect(),
        };
        let last = self.memory.nat.as_ref();
        let applied = nat::apply_with_store(
            &self.store(),
            |host_ports| nat::table(&pools, &peers, host_ports),
            // The same table as last applied, still in the kernel: nothing to do.
            |table| {
                if last == Some(table) && nl.nat_table_exists() {
                    return Ok(false);
                }
                nl.replace_nat_table(table).map(|()| true)
            },
        )?;
        if let Some((table, host_ports)) = applied {
            info!(node = %self.node(), pools = pools.len(), nodes = peers.nodes.len(), host_ports, "nftables table applied (natOutgoing, VXLAN sources, host ports)");
            self.memory.nat = Some(table);
        }
        Ok(())
    }

    fn conf_dir(&self, network: &ClusterNetwork) -> PathBuf {
        self.settings
            .conf_dir_override
            .clone()
            .unwrap_or_else(|| PathBuf::from(&network.spec.cni.conf_dir))
    }

    fn bin_dir(&self, network: &ClusterNetwork) -> PathBuf {
        self.settings
            .bin_dir_override
            .clone()
            .unwrap_or_else(|| PathBuf::from(&network.spec.cni.bin_dir))
    }

    /// Installs the plugin binary and the conflist; returns the install report.
    fn install(&mut self, network: &ClusterNetwork) -> Result<InstallReport> {
        let (conf_dir, bin_dir) = (self.conf_dir(network), self.bin_dir(network));
        let dirs = node_files::InstallDirs {
            conf_dir: &conf_dir,
            bin_dir: &bin_dir,
            state_dir: &self.settings.state_dir,
            log_file: &self.settings.log_file,
        };
        node_files::install(
            network,
            &dirs,
            &self.settings.plugin_source,
            &mut self.memory.plugin_sha256,
            &self.settings.node_name,
        )
    }

    /// Publishes the VTEP MAC and the report, the Node condition, and an Event when the
    /// runtime's choice of conflist changed.
    async fn publish(
        &mut self,
        local: &LocalNode,
        vtep: Option<[u8; 6]>,
        report: NodeReport,
    ) -> Result<()> {
        if let Some(install) = &report.install {
            self.record_conflist_event(local, install).await;
        }
        let ready = report.ready;
        let mut annotations =
            BTreeMap::from([(NODE_STATE_ANNOTATION.to_string(), report.to_annotation())]);
        if let Some(mac) = vtep {
            annotations.insert(VTEP_MAC_ANNOTATION.to_string(), mac_string(mac));
        }
        let fingerprint = format!("{annotations:?}");
        let current_matches = annotations
            .iter()
            .all(|(k, v)| local.node.annotations().get(k) == Some(v));
        if self.memory.published.as_deref() == Some(fingerprint.as_str()) && current_matches {
            return Ok(());
        }
        self.api.annotate(&annotations).await?;
        if ready {
            self.api.network_available().await?;
        }
        self.memory.published = Some(fingerprint);
        Ok(())
    }

    /// The node checks (see `diagnose`); sinew's own dangling veths are removed once they
    /// dangled for the grace period. A node that cannot be observed is logged, not failed.
    /// A `full` pass looks at every route again; the others at those the last full one saw
    /// (only someone else changes them, which makes the next pass full: decision 98).
    fn diagnose(
        &mut self,
        nl: &mut dyn Kernel,
        install: Option<&InstallReport>,
        pools: &PoolView,
        full: bool,
    ) -> Vec<Problem> {
        let mut problems: Vec<Problem> = install
            .and_then(diagnose::conflist_shadowed)
            .into_iter()
            .collect();
        let kept = self.memory.observed_routes.take().filter(|_| !full);
        let seen = match observe::observe(nl, &self.store(), kept) {
            Ok(seen) => {
                self.memory.observed_routes = Some(seen.routes.clone());
                seen
            }
            Err(e) => {
                warn!(node = %self.node(), error = %e, "cannot observe the node for its checks");
                return problems;
            }
        };
        problems.extend(diagnose::foreign_interfaces(&seen));
        let ranges = diagnose::PodRanges {
            pools: pools
                .facts
                .values()
                .map(|f| (f.name.clone(), f.cidr))
                .collect(),
        };
        problems.extend(diagnose::route_conflicts(&seen, &ranges));
        // A veth listed before the store was read and still there after it, with no record,
        // dangles: ADD records before it creates a veth, DEL removes the veth first.
        let dangling: Vec<String> = diagnose::dangling_veths(&seen)
            .into_iter()
            .filter(|name| nl.link_by_name(name).is_ok_and(|l| l.is_some()))
            .collect();
        let now = Instant::now();
        self.memory
            .dangling_since
            .retain(|name, _| dangling.contains(name));
        let mut reported = Vec::new();
        for name in dangling {
            let since = *self
                .memory
                .dangling_since
                .entry(name.clone())
                .or_insert(now);
            if now.duration_since(since) < self.settings.dangling_grace {
                reported.push(name);
                continue;
            }
            match nl.delete_link_by_name(&name) {
                Ok(_) => info!(node = %self.node(), veth = %name, "removed a dangling host veth"),
                Err(e) => {
                    warn!(node = %self.node(), veth = %name, error = %e, "cannot remove a dangling host veth")
                }
            }
            self.memory.dangling_since.remove(&name);
        }
        problems.extend(diagnose::dangling_problem(
            &reported,
            self.settings.dangling_grace.as_secs(),
        ));
        problems
    }

    /// A Warning Event on the Node when a kind of problem appears (or its message changes),
    /// a Normal one when it clears.
    async fn record_problem_events(&mut self, local: &LocalNode, problems: &[Problem]) {
        let (now, events) = decide::problem_events(&self.memory.problem_kinds, problems);
        for event in &events {
            if let Err(e) = self.api.event(&local.node, event).await {
                warn!(node = %self.node(), error = %e, "recording an Event failed");
            }
        }
        self.memory.problem_kinds = now;
    }

    /// Records an Event on the Node when the runtime's choice of conflist changes.
    async fn record_conflist_event(&mut self, local: &LocalNode, report: &InstallReport) {
        let ours = report.conflist.as_deref().unwrap_or_default();
        let chosen = report.chosen.as_deref().unwrap_or_default();
        let situation = format!("{chosen}|{:?}", report.shadowing);
        if self.memory.evented.as_deref() == Some(situation.as_str()) {
            return;
        }
        let event = api::conflist_event(ours, chosen, &report.shadowing);
        match self.api.event(&local.node, &event).await {
            Ok(()) => self.memory.evented = Some(situation),
            Err(e) => warn!(node = %self.node(), error = %e, "recording an Event failed"),
        }
    }

    /// Carries out the operator's release requests on this node's blocks (see [`leaks`]):
    /// an allocation is freed only if it still matches the request exactly and its pod's
    /// sandbox is gone from this node (its host veth with it); one whose sandbox still runs is
    /// kept and said so once, in an Event on the Node.
    async fn release_leaks(&mut self, nl: &mut dyn Kernel, local: &LocalNode) -> Result<()> {
        let requests = self.cluster.release_requests(self.node());
        if requests.is_empty() {
            self.memory.leaks_kept.clear();
            return Ok(());
        }
        let outcome = leaks::release(&self.store(), nl, &requests)
            .map_err(Error::files("updating the IPAM store"))?;
        for (block, r) in &outcome.freed {
            info!(node = %self.node(), block = %block, ip = %r.ip, generation = r.generation, pod = %r.pod, pod_uid = %r.pod_uid, "leaked allocation released");
        }
        let mut kept = BTreeSet::new();
        for (block, r, veth) in outcome.kept {
            let key = (r.ip.clone(), r.generation);
            kept.insert(key.clone());
            if self.memory.leaks_kept.contains(&key) {
                continue;
            }
            warn!(node = %self.node(), block = %block, ip = %r.ip, generation = r.generation, pod = %r.pod, pod_uid = %r.pod_uid, veth = %veth, "release request refused: the pod's sandbox still runs on this node");
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: "LeakedAddressKept".into(),
                note: Some(format!(
                    "{} of pod {} (uid {}) is not released: the API server has no such pod, but its sandbox still runs on this node (host veth {veth} exists), e.g. a static pod whose mirror pod is missing. It is released once the sandbox is gone; if nothing runs there, delete the pod's network namespace",
                    r.ip, r.pod, r.pod_uid
                )),
                action: "Release".into(),
                secondary: None,
            };
            if let Err(e) = self.api.event(&local.node, &event).await {
                warn!(node = %self.node(), error = %e, "recording an Event failed");
            }
        }
        self.memory.leaks_kept = kept;
        Ok(())
    }
}

/// How often the agent writes its blocks' usages again although they did not change.
const USAGE_REASSERT: Duration = Duration::from_secs(300);

/// Wakes every one of `wakes` whenever the plugin changes the IPAM store or asks for a block
/// (one inotify watch on a blocking thread). Returns whether the watch runs: without inotify
/// nothing wakes and the loops poll.
fn watch_local_state(state_dir: &std::path::Path, wakes: Vec<Arc<Notify>>) -> bool {
    match sinew_node_lib::state_watch::StateWatch::new(state_dir) {
        Ok(watch) => {
            std::thread::spawn(move || {
                while watch.wait().is_ok() {
                    wakes.iter().for_each(|w| w.notify_one());
                }
                warn!("the node state watch ended; polling the IPAM store instead");
            });
            true
        }
        Err(e) => {
            warn!(error = %e, "cannot watch the node state directory; polling the IPAM store instead");
            false
        }
    }
}

#[cfg(test)]
mod pass_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).await.ok()?;
        Some(response)
    }

    #[tokio::test]
    async fn probes_are_answered_while_the_api_server_does_not_answer() {
        let dir = tempfile::tempdir().unwrap();
        // An API server that accepts every request and never answers.
        let (service, _api) = tower_test::mock::pair::<
            ::http::Request<kube::client::Body>,
            ::http::Response<kube::client::Body>,
        >();
        let client = kube::Client::new(service, "default");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let settings = Settings {
            metrics_addr: ListenAddr::At(metrics_addr),
            probe_addr: Some(addr),
            ..Settings::for_tests("n1", dir.path())
        };
        let agent = Agent::start(settings, client).await;
        tokio::spawn(agent.run());
        let mut health = None;
        for _ in 0..40 {
            health = get(addr, "/healthz").await;
            if health.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let health = health.expect("/healthz answered while the caches cannot sync");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        // Not ready, and saying why.
        let ready = get(addr, "/readyz").await.expect("/readyz answered");
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.contains("waiting for the API server"), "{ready}");
    }
}
