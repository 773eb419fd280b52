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
//! effectors carry the decisions out ([`api`] for the API server, `datapath` for netlink,
//! `nat` for nftables, [`node_files`] for node-local files). This module only orchestrates.

mod api;
mod cleanup;
mod decide;
pub mod error;
mod index;
mod leaks;
mod node_files;
mod observe;
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

    /// One reconcile pass: reads what the cluster and the node say, decides (see [`decide`]),
    /// and carries the decisions out. Each step's failure is contained and reported (a
    /// `StepFailed` problem, and the pass-failure metric): peers are programmed before any
    /// block is claimed, one pool's claim trouble leaves the others alone, and a failed
    /// netlink call, NAT, forwarding or file write holds back only what depends on it.
    /// A `resync` pass compares the whole kernel with what it wants, whatever else says so.
    pub async fn pass(&mut self, resync: bool) -> Result<()> {
        let Some(network) = self.cluster.network() else {
            debug!("no ClusterNetwork yet");
            return Ok(());
        };
        if network.metadata.deletion_timestamp.is_some() {
            self.memory.programmed = None;
            if let Some(mesh) = &self.mesh {
                mesh.set_targets(Vec::new());
            }
            return self.clean_up(&network).await;
        }
        self.memory.cleaned = false;
        self.policy
            .set_enabled(network.spec.network_policy == NetworkPolicyMode::Enabled);
        self.policy
            .set_drop_log(network.spec.network_policy_drop_log == DropLogMode::Enabled);
        let Some(local) = self.local()? else {
            debug!(node = %self.node(), "Node object or its address not known yet");
            return Ok(());
        };
        if !self.memory.pass_completed {
            self.repair_store_of_a_past_boot(&local).await?;
        }
        // The change counts before the stores: a change in between derives again next pass.
        let changes = &self.cluster.changes;
        let (nodes_at, pools_at, blocks_at) = (
            changes.nodes.count(),
            changes.pools.count(),
            changes.blocks.count(),
        );
        let all = self.cluster.pools.state();
        let facts = vetting::pools(&all);
        let (blocks, mut problems) = self
            .memory
            .vetted
            .get((pools_at, blocks_at), || {
                let (blocks, problems) = vetting::blocks(&self.cluster.blocks.state(), &facts);
                (blocks.into(), problems)
            })
            .clone();
        let pools = PoolView {
            selected: Cluster::selected_pools(&all, &local.labels),
            all,
            facts,
            blocks,
        };

        let forwarding_on = self.ensure_forwarding(&pools, &local, &mut problems);

        let peers = self
            .memory
            .nodes
            .get(nodes_at, || {
                Arc::new(peers::Nodes::new(self.cluster.peers()))
            })
            .clone();
        let modes = self.memory.modes.get((nodes_at, pools_at), || {
            let nodes = self.cluster.nodes.state();
            decide::peer_modes(
                &pools.all,
                &nodes.iter().map(|n| n.labels()).collect::<Vec<_>>(),
            )
        });
        let peering = self
            .memory
            .peering
            .get(
                (nodes_at, pools_at, blocks_at, local.underlay.clone()),
                || {
                    Arc::new(decide::peering(
                        &self.settings.node_name,
                        &local.underlay,
                        modes.clone(),
                        &peers,
                        &pools.blocks,
                        self.settings.peer_selector.is_some(),
                    ))
                },
            )
            .clone();
        let plan = &peering.plan;
        let mut kernel = (self.kernel)()?;
        let nl = &mut *kernel;
        let params = VxlanParams {
            vni: network.spec.vxlan.vni,
            port: network.spec.vxlan.port,
        };
        let vxlan = match datapath::ensure_vxlan(
            nl,
            params,
            &local.underlay,
            sinew_node_lib::consts::vtep_mac(self.node()),
        ) {
            Ok(vxlan) => Some(vxlan),
            Err(e) => {
                self.step_failed(&mut problems, "creating the VXLAN device", e.into());
                None
            }
        };
        let sys = self.sysctls();
        for (device, drops) in &peering.loosen {
            if device != VXLAN_DEVICE || vxlan.is_some() {
                problems.extend(sysctls::loosen_rp_filter(&sys, device, drops));
            }
        }
        // The whole kernel is compared at each resync, after anyone else changed the node's
        // network and after a failed apply; in between, a pass writes what its plan changed.
        let kernel_changed = self
            .node_watch
            .as_ref()
            .is_none_or(NodeWatch::take_kernel_changed);
        let full = resync || kernel_changed || self.memory.programmed.is_none();
        let applied = match self.memory.programmed.take() {
            Some(before) if !full => {
                datapath::apply_changes(nl, &before, plan, &local.underlay, vxlan.as_ref())
            }
            _ => datapath::apply(nl, plan, &local.underlay, vxlan.as_ref()),
        };
        let programmed = match applied {
            Ok((changes, kept)) => {
                if changes.added + changes.removed + changes.skipped > 0 {
                    info!(node = %self.node(), added = changes.added, removed = changes.removed, skipped = changes.skipped, routes = plan.routes.len(), "peers programmed");
                }
                if let Some(problem) = changes.refused_problem() {
                    warn!(node = %self.node(), refused = changes.refused.len(), first = %changes.refused[0], "the kernel refused some peer entries; the others are in");
                    problems.push(problem);
                } else {
                    // Where the kernel refused a write it differs from `kept`: the next pass
                    // compares the whole kernel and tries again.
                    self.memory.programmed = Some(kept);
                }
                true
            }
            Err(e) => {
                self.step_failed(
                    &mut problems,
                    "programming peer routes, neighbours and FDB",
                    e.into(),
                );
                false
            }
        };
        self.metrics.peer_routes.set(plan.routes.len() as i64);
        problems.extend(
            plan.problems
                .iter()
                .map(|p| Problem::new(ProblemKind::PeersIncomplete, p.clone())),
        );
        problems.extend(plan.vtep_conflicts.iter().map(|c| {
            Problem::new(ProblemKind::VtepConflict, c.clone()).with_fix(
                "give each node a unique name and run sinew-node of this version on it (its VTEP MAC is derived from the node's name); find who wrote the annotation sinew.dev/vtep-mac on the named nodes",
            )
        }));
        if let Some(vxlan) = &vxlan {
            let drops = self.reverse_drops(nl, plan, &local, vxlan);
            problems.extend(diagnose::reverse_path_dropped(&drops));
        }

        match self.claim_blocks(&pools).await {
            Ok(claim_problems) => problems.extend(claim_problems),
            Err(e) => self.step_failed(&mut problems, "claiming blocks", e),
        }
        // Without a peer route the node sends nothing to remote pods: no address is spent.
        let peered = !plan.routes.is_empty();
        let tunnel = match &vxlan {
            Some(vxlan) => match self.ensure_tunnel_addresses(nl, vxlan, &pools, peered) {
                Ok(addresses) => addresses,
                Err(e) => {
                    warn!(node = %self.node(), error = %e, "cannot give the VXLAN device its pod-network address");
                    problems.push(Problem::new(
                        ProblemKind::PeersIncomplete,
                        format!("{VXLAN_DEVICE} has no address of this node's blocks ({e}): traffic from this node to remote pods over VXLAN leaves with the node's address, and replies that a cloud underlay or strict reverse-path filtering drops never come back"),
                    ));
                    BTreeSet::new()
                }
            },
            None => BTreeSet::new(),
        };
        match self.release_blocks(&pools, nl, vxlan.as_ref()).await {
            Ok(release_problems) => problems.extend(release_problems),
            Err(e) => problems.push(Problem::new(ProblemKind::BlockReleaseFailed, e.to_string())),
        }
        if forwarding_on && vxlan.is_some() && programmed && !self.memory.pass_completed {
            info!(node = %self.node(), "first complete pass in this boot: the node serves pods");
            self.memory.pass_completed = true;
        }
        // The plugin's block requests are answered by `node.json`, and a pool being deleted is
        // drained only once `node.json` no longer offers it: both wait for the write.
        let drained = match self.store_node_state(&network, &local, &pools) {
            Ok(()) => {
                self.answer_requests();
                self.drain_deleted_pools().await
            }
            Err(e) => {
                self.step_failed(&mut problems, "writing the node state for the plugin", e);
                Vec::new()
            }
        };
        if self.mesh.is_some() && self.memory.peer_reports_at != Some(nodes_at) {
            self.memory
                .peer_reports
                .refresh(&self.cluster.nodes.state());
            self.memory.peer_reports_at = Some(nodes_at);
        }
        if let (Some(mesh), Some(state)) = (&self.mesh, &self.memory.node_state) {
            // Probed at the pod MTU the plugin hands out (the node state just stored).
            let pod_mtus = state
                .pools
                .iter()
                .map(|p| (p.name.clone(), p.mtu))
                .collect();
            mesh.set_targets(probe::targets(
                local.underlay.ip,
                plan,
                &pools.blocks,
                &pod_mtus,
                &peers,
                &self.memory.peer_reports.underlay_mtus,
                &probe::PodAddresses {
                    own: tunnel.iter().copied().collect(),
                    peers: &self.memory.peer_reports.tunnels,
                },
            ));
        }

        if let Err(e) = self.apply_nft(nl, params.port, &pools.all, &peers) {
            problems.push(Problem::new(
                ProblemKind::NftablesFailed,
                format!("natOutgoing, the VXLAN source filter and host ports are not applied: {e}"),
            ));
        }
        if let Err(e) = self.mirror_namespace_pools() {
            self.step_failed(&mut problems, "mirroring namespace pools for the plugin", e);
        }
        if let Err(e) = self.release_leaks(nl, &local).await {
            self.step_failed(&mut problems, "releasing leaked addresses", e);
        }

        // With NetworkPolicy on, no pod starts before the node's policy table is in.
        let serving = self.memory.pass_completed
            && self.policy.ready()
            && self
                .memory
                .node_state
                .as_ref()
                .is_some_and(|st| st.pools.iter().any(|p| !p.disabled && !p.blocks.is_empty()));
        // The conflist goes in only once the node can serve pods; the node is ready once it is.
        let install = if serving {
            match self.install(&network) {
                Ok(report) => Some(report),
                Err(e) => {
                    self.step_failed(&mut problems, "installing the plugin and its conflist", e);
                    None
                }
            }
        } else {
            None
        };
        let ready = install.is_some();
        self.metrics.set_ready(ready);
        problems.extend(self.diagnose(nl, install.as_ref(), &pools, full));
        if let Some(mesh) = &self.mesh {
            problems.extend(mesh.problems());
        }
        let (policy, policy_problems) = self.policy.report();
        problems.extend(policy_problems);
        problems.sort();
        problems.dedup();
        self.metrics.set_problems(&problems);
        self.record_problem_events(&local, &problems).await;
        let report = NodeReport {
            ready,
            spec_hash: Some(network.spec.config_hash()),
            underlay: Some(local.underlay.subnet.to_string()),
            underlay_mtu: Some(local.underlay.mtu),
            install,
            modes: peering.modes.clone(),
            tunnel: tunnel.into_iter().collect(),
            problems,
            cleaned_up: false,
            drained,
            omitted: Vec::new(),
            policy,
        };
        // Without the device (a failed step), the MAC it will have: the annotation is applied
        // server-side, and leaving it out would withdraw it from every peer.
        let vtep = match &vxlan {
            Some(link) => link.mac,
            None => Some(sinew_node_lib::consts::vtep_mac(self.node())),
        };
        self.publish(&local, vtep, report).await
    }

    /// A step of the pass failed: counted, logged and reported; the pass goes on.
    fn step_failed(&self, problems: &mut Vec<Problem>, step: &str, e: Error) {
        self.metrics.pass_failed(e.label());
        warn!(node = %self.node(), step, kind = e.label(), error = %e, "a step of the pass failed; the others go on");
        problems.push(Problem::new(
            ProblemKind::StepFailed,
            format!("{step}: {e}"),
        ));
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

    fn store(&self) -> ipam::Store {
        ipam::Store::new(&self.settings.state_dir)
    }

    fn block_usage(&self) -> Result<BlockUsage> {
        let snapshot = self
            .store()
            .snapshot()
            .map_err(Error::files("reading the IPAM store"))?;
        Ok(BlockUsage::of(&snapshot))
    }

    /// Claims what [`blocks::claims`] says, and claims orphaned blocks again. Each pool on
    /// its own: an API error for one pool becomes a problem and the others go on.
    async fn claim_blocks(&mut self, pools: &PoolView) -> Result<Vec<Problem>> {
        let holdings = self.block_usage()?;
        self.memory.requests_read = node_state::block_requests(&self.settings.state_dir)
            .map_err(Error::files("reading block requests"))?
            .into_iter()
            .collect();
        let requested: BTreeSet<String> = self.memory.requests_read.keys().cloned().collect();
        let mut problems = Vec::new();
        for orphan in blocks::orphans(self.node(), &holdings, &pools.facts, &pools.blocks) {
            match &orphan.owner {
                // Another node's trusted block covers addresses pods here hold: nothing to
                // claim, but both nodes hand them out.
                Some(owner) => {
                    warn!(node = %self.node(), block = %orphan.block, pool = %orphan.pool, owner = %owner, addresses = orphan.addresses, "block lost: another node owns addresses pods here hold");
                    problems.push(blocks::lost_problem(&orphan, owner));
                }
                None => problems.extend(self.api.reassert(&orphan).await),
            }
        }
        let selected: Vec<String> = pools.selected.iter().map(|p| p.name_any()).collect();
        let plan = blocks::claims(
            self.node(),
            &selected,
            &pools.facts,
            &pools.blocks,
            &holdings,
            &requested,
            self.settings.min_free,
        );
        problems.extend(plan.problems);
        // Every block name in the cluster, read only when a block is to be claimed.
        let mut taken = None;
        for (name, need) in plan.needs {
            let BlockNeed::Block { free } = need else {
                self.memory.exhausted.remove(&name);
                continue;
            };
            let Some(fact) = pools.facts.get(&name) else {
                continue;
            };
            let free = free as u64;
            match self
                .api
                .claim(
                    &name,
                    &fact.cidr,
                    fact.block_size,
                    &pools.blocks,
                    taken.get_or_insert_with(|| self.cluster.block_names()),
                )
                .await
            {
                Ok(Some(block)) => {
                    // A block this node gave back earlier may come back to it.
                    self.store()
                        .update(|s| s.retired.remove(&block.to_string()))
                        .map_err(Error::files("updating the IPAM store"))?;
                    self.memory.exhausted.remove(&name);
                    self.metrics.blocks_claimed.inc();
                    info!(node = %self.node(), pool = %name, block = %block, free, "claimed block")
                }
                Ok(None) => {
                    if self.memory.exhausted.insert(name.clone()) {
                        warn!(node = %self.node(), pool = %name, free, "pool has no unclaimed block left");
                    }
                }
                Err(e) => {
                    warn!(node = %self.node(), pool = %name, error = %e, "claiming a block failed");
                    problems.push(Problem::new(
                        ProblemKind::BlockClaimFailed,
                        format!("pool {name}: {e}"),
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// Gives the VXLAN device its address from this node's blocks (see [`tunnel`]): chosen in
    /// the IPAM store under its lock, then put on the device; any other address sinew put
    /// there before (a moved or dropped choice) is removed. A node without peers (`peered`
    /// false) holds none.
    fn ensure_tunnel_addresses(
        &mut self,
        nl: &mut dyn Kernel,
        vxlan: &Link,
        pools: &PoolView,
        peered: bool,
    ) -> Result<BTreeSet<IpAddr>> {
        let candidates = if peered {
            decide::tunnel_candidates(self.node(), pools)
        } else {
            Vec::new()
        };
        let wanted = self
            .store()
            .update(|s| tunnel::update(s, &candidates))
            .map_err(Error::files("updating the IPAM store"))?;
        let (remove, add) = tunnel::device_changes(&nl.addresses(vxlan.index)?, &wanted);
        for (ip, prefix) in remove {
            nl.del_address(vxlan.index, ip, prefix)?;
            info!(node = %self.node(), address = %ip, device = VXLAN_DEVICE, "tunnel address removed");
        }
        for (ip, prefix) in add {
            nl.add_address(vxlan.index, ip, prefix)?;
            info!(node = %self.node(), address = %ip, device = VXLAN_DEVICE, "tunnel address set");
        }
        Ok(wanted)
    }

    /// This node's blocks of pools being deleted (CIDRs as the store writes them).
    fn draining_blocks(&self) -> BTreeSet<String> {
        let deleting = self.cluster.deleting_pools();
        self.cluster
            .blocks_of(self.node())
            .iter()
            .filter(|b| deleting.contains(&b.spec.pool))
            .filter_map(|b| b.spec.cidr.parse::<Cidr>().ok())
            .map(|c| c.to_string())
            .collect()
    }

    /// The pools being deleted from which this node provably hands out no more addresses:
    /// `node.json` no longer offers them (just written), their blocks here are retired in the
    /// store, under its lock (an ADD that read an older `node.json` cannot allocate from them
    /// any more, and one that did has committed), and the blocks' status was written after
    /// that, so it shows every address still held. The operator deletes a deleted pool's
    /// blocks only once every node holding one reports it here, not after a fixed delay.
    async fn drain_deleted_pools(&mut self) -> Vec<String> {
        let deleting: Vec<String> = self.cluster.deleting_pools().into_iter().collect();
        if deleting.is_empty() {
            return Vec::new();
        }
        let blocks = self.draining_blocks();
        let store = self.store();
        let missing = match store.snapshot() {
            Ok(st) => blocks.iter().any(|b| !st.retired.contains(b)),
            Err(e) => {
                warn!(node = %self.node(), error = %e, "reading the IPAM store failed; the pools being deleted are not reported drained");
                return Vec::new();
            }
        };
        if missing && let Err(e) = store.update(|st| st.retired.extend(blocks.iter().cloned())) {
            warn!(node = %self.node(), error = %e, "retiring the blocks of pools being deleted failed");
            return Vec::new();
        }
        if let Err(e) = self.sync_block_status().await {
            warn!(node = %self.node(), kind = e.label(), error = %e, "status sync failed; the pools being deleted are not reported drained");
            return Vec::new();
        }
        deleting
    }

    /// Removes the block requests this pass read, now that `node.json` answers them: with a
    /// new block, or with the pool's state (exhausted, disabled) and a problem in the report.
    /// A request the plugin made again meanwhile stays for the next pass.
    fn answer_requests(&mut self) {
        for (pool, made) in std::mem::take(&mut self.memory.requests_read) {
            match node_state::clear_block_request_made(&self.settings.state_dir, &pool, made) {
                Ok(true) => debug!(node = %self.node(), pool = %pool, "block request answered"),
                Ok(false) => {}
                Err(e) => {
                    warn!(node = %self.node(), pool = %pool, error = %e, "cannot remove a block request")
                }
            }
        }
    }

    /// Gives back what [`blocks::releases`] says: each block is first retired in the IPAM
    /// store under its lock (so no ADD can allocate from it any more), then deleted.
    /// The tunnel address leaves a block that is given back: the block is retired with it
    /// (under the store's lock), and the device takes a new address before the `IPBlock` goes.
    /// Each block on its own: one that cannot go now (its deletion refused, the device's
    /// address not moved) is a problem, stays retired, and is tried again next pass.
    async fn release_blocks(
        &mut self,
        pools: &PoolView,
        nl: &mut dyn Kernel,
        vxlan: Option<&Link>,
    ) -> Result<Vec<Problem>> {
        let holdings = self.block_usage()?;
        let releasable = blocks::releases(
            &self.settings.node_name,
            &decide::usable_selected(pools),
            &pools.blocks,
            &holdings,
            &mut self.memory.empty_since,
            Instant::now(),
            self.settings.block_release_grace,
            self.settings.min_free,
        );
        let mut problems = Vec::new();
        for block in releasable {
            let (retired, moved) = self
                .store()
                .update(|s| blocks::retire_for_release(s, &block))
                .map_err(Error::files("updating the IPAM store"))?;
            if !retired {
                continue;
            }
            if moved
                && let Some(vxlan) = vxlan
                // Another of this node's blocks (retired ones are never chosen) gives it.
                && let Err(e) = self.ensure_tunnel_addresses(nl, vxlan, pools, true)
            {
                problems.push(Problem::new(
                    ProblemKind::BlockReleaseFailed,
                    format!("block {block}: {VXLAN_DEVICE} still holds its address ({e})"),
                ));
                continue;
            }
            let name = sinew_crds::IPBlock::name_for(&block);
            let uid = self
                .cluster
                .blocks_of(self.node())
                .iter()
                .find(|b| b.name_any() == name)
                .and_then(|b| b.metadata.uid.clone());
            if let Err(e) = self.api.release(&block, uid).await {
                warn!(node = %self.node(), block = %block, error = %e, "releasing a block failed");
                problems.push(Problem::new(
                    ProblemKind::BlockReleaseFailed,
                    format!("block {block}: {e}"),
                ));
                continue;
            }
            info!(node = %self.node(), block = %block, "released empty block");
            self.memory.empty_since.remove(&block.to_string());
        }
        Ok(problems)
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

    /// Writes each owned block's allocations into its `IPBlockUsage` when they changed: the
    /// first time in this agent's life the usage object itself (owned by the block, so created
    /// once and removed with the block), then its status. Returns whether any was written.
    pub async fn sync_block_status(&mut self) -> Result<bool> {
        // No agent watches usages: one deleted by hand is written again within this time.
        if self
            .memory
            .usages_asserted
            .is_none_or(|t| t.elapsed() >= USAGE_REASSERT)
        {
            self.memory.reported_blocks.clear();
            self.memory.usages_asserted = Some(Instant::now());
        }
        let snapshot = self
            .store()
            .snapshot()
            .map_err(Error::files("reading the IPAM store"))?;
        let mut per_pool: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut owned = BTreeSet::new();
        let mut failed = None;
        let mut written_any = false;
        for block in self.cluster.blocks_of(self.node()) {
            let Ok(cidr) = block.spec.cidr.parse::<Cidr>() else {
                continue;
            };
            let status = block_usage(&snapshot, &cidr);
            let entry = per_pool.entry(block.spec.pool.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(status.allocated);
            // Keyed by UID: a block released and claimed again is a new object, with a new usage.
            let key = block.uid().unwrap_or_default();
            owned.insert(key.clone());
            if self.memory.reported_blocks.get(&key) == Some(&status) {
                continue;
            }
            let name = block.name_any();
            // One block's failure (the usage of a released block of the same name not yet
            // collected, say) does not hold up the others'.
            let written = async {
                if !self.memory.reported_blocks.contains_key(&key) {
                    self.api.create_usage(&block).await?;
                }
                self.api.usage_status(&name, &status).await
            }
            .await;
            match written {
                Ok(()) => {
                    written_any = true;
                    debug!(block = %name, allocated = status.allocated, "block usage synced");
                    self.memory.reported_blocks.insert(key, status);
                }
                Err(e) => {
                    // Written again in full (the object too: it may be gone) on the next sync.
                    self.memory.reported_blocks.remove(&key);
                    warn!(block = %name, error = %e, "writing the block's usage failed; retried");
                    failed.get_or_insert(e);
                }
            }
        }
        self.memory.reported_blocks.retain(|k, _| owned.contains(k));
        self.metrics.set_pools(&per_pool);
        failed.map_or(Ok(written_any), Err)
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

/// The allocations of `block` in the store, as its `IPBlockUsage` shows them.
fn block_usage(store: &ipam::IpamState, block: &Cidr) -> IPBlockUsageStatus {
    let mut allocations: Vec<Allocation> = store
        .attachments
        .values()
        .flat_map(|a| {
            a.addresses
                .iter()
                .filter(|h| block.contains(h.ip))
                .map(move |h| Allocation {
                    ip: h.ip.to_string(),
                    container_id: a.container_id.clone(),
                    interface: a.ifname.clone(),
                    pod_namespace: a.pod_namespace.clone(),
                    pod_name: a.pod_name.clone(),
                    pod_uid: a.pod_uid.clone(),
                    generation: h.generation,
                })
        })
        .collect();
    allocations.sort_by(|a, b| a.ip.cmp(&b.ip));
    IPBlockUsageStatus {
        allocated: u32::try_from(allocations.len()).unwrap_or(u32::MAX),
        allocations,
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
