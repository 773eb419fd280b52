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

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Resource;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use sinew_crds::{
    Allocation, CLUSTER_NETWORK_NAME, Cidr, ClusterNetwork, IPBlock, IPBlockSpec, IPBlockStatus,
    IPPool, PoolMode, ReleaseRequest,
};
use sinew_node_lib::ipam;
use sinew_node_lib::netlink::Netlink;
use sinew_node_lib::node_state::{self, NodeState, PoolState};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::conflist;
use crate::forwarding;
use crate::http;
use crate::install::{self, Outcome};
use crate::nat;
use crate::plan::{self, BlockInfo, NodeInfo};
use crate::program::{self, Underlay, VxlanParams};
use crate::trust::{self, PoolFacts};

use sinew_crds::ip_block::{NODE_LABEL, POOL_LABEL};
use sinew_crds::node::{InstallReport, NodeReport, Problem, ProblemKind};
pub use sinew_crds::node::{NODE_STATE_ANNOTATION, VTEP_MAC_ANNOTATION};
use sinew_node_lib::consts::PLUGIN_BINARY;

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
    /// How long a block must stay empty before it is given back.
    pub block_release_grace: Duration,
    pub resync: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub metrics_addr: ListenAddr,
    /// Where the node's sysctls are written (`/proc/sys`, or the host's mounted into a
    /// container).
    pub sysctl_dir: PathBuf,
    /// `/healthz` fails when the agent's loop has not come round for this long (a stalled
    /// agent is restarted by its liveness probe).
    pub stall_after: Duration,
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

fn field_manager(node: &str) -> String {
    format!("sinew-node/{node}")
}

/// Spawns a reflector for `api`, waking `notify` on every change.
fn watch<K>(api: Api<K>, notify: Arc<Notify>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream =
        reflector::reflector(writer, watcher(api, config).default_backoff()).touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                warn!(error = %e, "watch error; retrying");
            }
            notify.notify_one();
        }
    });
    store
}

/// Reads the pieces of cluster state the agent needs.
struct Cluster {
    nodes: Store<Node>,
    pools: Store<IPPool>,
    blocks: Store<IPBlock>,
    networks: Store<ClusterNetwork>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
}

/// What the agent remembers between passes.
#[derive(Default)]
struct Memory {
    node_state: Option<NodeState>,
    /// A pass completed (forwarding, peers, VXLAN) in this process; the node is then ready
    /// for pods in this boot.
    pass_completed: bool,
    plugin_sha256: Option<String>,
    conflist_hash: Option<String>,
    reported_blocks: BTreeMap<String, IPBlockStatus>,
    published: Option<String>,
    nat: Option<String>,
    /// Namespace -> pools, as last mirrored to disk (`None` until the first pass of this
    /// process, which reconciles the directory whatever it holds).
    namespace_pools: Option<BTreeMap<String, String>>,
    /// When each owned block was first seen empty.
    empty_since: BTreeMap<String, tokio::time::Instant>,
    /// Last conflist situation an Event was recorded for.
    evented: Option<String>,
    cleaned: bool,
    /// Pools that had no unclaimed block left when this node needed one.
    exhausted: BTreeSet<String>,
}

pub struct Agent {
    settings: Settings,
    client: Client,
    cluster: Cluster,
    memory: Memory,
    notify: Arc<Notify>,
    metrics: Arc<http::Metrics>,
    recorder: Recorder,
}

/// One pass's view of the local node.
struct Local {
    underlay: Underlay,
    labels: BTreeMap<String, String>,
    node: Arc<Node>,
}

fn node_ip(node: &Node) -> Option<IpAddr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .or_else(|| addresses.first())
        .and_then(|a| a.address.parse().ok())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Agent {
    pub async fn start(settings: Settings, client: Client) -> Agent {
        let notify = Arc::new(Notify::new());
        let cluster = Cluster {
            nodes: watch(
                Api::all(client.clone()),
                notify.clone(),
                watcher::Config::default(),
            ),
            pools: watch(
                Api::all(client.clone()),
                notify.clone(),
                watcher::Config::default(),
            ),
            blocks: watch(
                Api::all(client.clone()),
                notify.clone(),
                watcher::Config::default(),
            ),
            networks: watch(
                Api::all(client.clone()),
                notify.clone(),
                watcher::Config::default().fields(&format!("metadata.name={CLUSTER_NETWORK_NAME}")),
            ),
            // Metadata only (names and annotations): `Api<PartialObjectMeta<_>>` asks for no more.
            namespaces: watch(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                notify.clone(),
                watcher::Config::default(),
            ),
        };
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "sinew-node".into(),
                instance: Some(settings.node_name.clone()),
            },
        );
        Agent {
            settings,
            client,
            cluster,
            memory: Memory::default(),
            notify,
            metrics: Arc::new(http::Metrics::default()),
            recorder,
        }
    }

    /// Runs passes forever: on every watched change, on a block request from the plugin
    /// (polled twice a second) and at least every `resync`.
    pub async fn run(mut self) -> anyhow::Result<()> {
        for (what, ready) in [
            ("nodes", self.cluster.nodes.wait_until_ready().await),
            ("pools", self.cluster.pools.wait_until_ready().await),
            ("blocks", self.cluster.blocks.wait_until_ready().await),
            (
                "clusternetworks",
                self.cluster.networks.wait_until_ready().await,
            ),
        ] {
            ready.map_err(|e| anyhow::anyhow!("watch of {what} ended: {e}"))?;
        }
        info!(node = %self.settings.node_name, "caches synced; agent running");
        self.metrics.beat();
        let notify = self.notify.clone();
        let mut last_full = tokio::time::Instant::now();
        let mut serving = self.settings.metrics_addr == ListenAddr::Off;
        loop {
            if !serving {
                serving = self.serve_http();
            }
            let woke = tokio::time::timeout(Duration::from_millis(500), notify.notified()).await;
            let requested = !node_state::pending_block_requests(&self.settings.state_dir)
                .unwrap_or_default()
                .is_empty();
            let due = last_full.elapsed() >= self.settings.resync;
            if woke.is_ok() || requested || due {
                self.metrics.passes.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.pass().await {
                    self.metrics.pass_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(node = %self.settings.node_name, error = %format!("{e:#}"), "pass failed; retrying");
                }
                last_full = tokio::time::Instant::now();
            }
            if let Err(e) = self.sync_block_status().await {
                warn!(node = %self.settings.node_name, error = %format!("{e:#}"), "status sync failed");
            }
            self.metrics.beat();
        }
    }

    /// Starts the HTTP endpoints once their address is known; `false` while it is not.
    fn serve_http(&self) -> bool {
        let addr = match self.settings.metrics_addr {
            ListenAddr::Off => return true,
            ListenAddr::At(addr) => addr,
            ListenAddr::NodeIp(port) => {
                let node = self
                    .cluster
                    .nodes
                    .get(&ObjectRef::new(&self.settings.node_name));
                match node.as_deref().and_then(node_ip) {
                    Some(ip) => std::net::SocketAddr::new(ip, port),
                    None => return false,
                }
            }
        };
        let (node, metrics) = (self.settings.node_name.clone(), self.metrics.clone());
        let stall_after = self.settings.stall_after;
        tokio::spawn(async move {
            if let Err(e) = http::serve(addr, node, metrics, stall_after).await {
                warn!(%addr, error = %e, "cannot serve /metrics, /healthz, /readyz");
            }
        });
        info!(%addr, "serving /healthz, /readyz and /metrics");
        true
    }

    fn local(&self) -> anyhow::Result<Option<Local>> {
        let Some(node) = self
            .cluster
            .nodes
            .get(&ObjectRef::new(&self.settings.node_name))
        else {
            return Ok(None);
        };
        let Some(ip) = node_ip(&node) else {
            return Ok(None);
        };
        let mut nl = Netlink::new()?;
        let underlay = program::find_underlay(&mut nl, ip)?.ok_or_else(|| {
            anyhow::anyhow!("no interface on this node holds the Node's address {ip}")
        })?;
        Ok(Some(Local {
            underlay,
            labels: node.labels().clone(),
            node,
        }))
    }

    /// One reconcile pass. Each step's failure is contained: peers are programmed before
    /// any block is claimed, one pool's claim trouble leaves the others alone, and a NAT or
    /// forwarding failure is reported without holding back routes, blocks or node state.
    pub async fn pass(&mut self) -> anyhow::Result<()> {
        let network = self
            .cluster
            .networks
            .get(&ObjectRef::new(CLUSTER_NETWORK_NAME));
        let Some(network) = network else {
            debug!("no ClusterNetwork yet");
            return Ok(());
        };
        if network.metadata.deletion_timestamp.is_some() {
            return self.clean_up(&network).await;
        }
        self.memory.cleaned = false;
        let Some(local) = self.local()? else {
            debug!(node = %self.settings.node_name, "Node object or its address not known yet");
            return Ok(());
        };
        let facts = trust::pools(&self.cluster.pools.state());
        let (blocks, mut problems) = trust::blocks(&self.cluster.blocks.state(), &facts);
        let pools = self.selected_pools(&local);
        // What this node's datapath needs before it can serve a pod: forwarding, peers, VXLAN.
        let mut datapath_complete = true;

        let families: BTreeSet<sinew_crds::Family> = pools
            .iter()
            .filter_map(|p| facts.get(&p.name_any()))
            .map(|f| f.cidr.family())
            .collect();
        let families: Vec<_> = families.into_iter().collect();
        for (key, value) in
            forwarding::wanted(&self.settings.sysctl_dir, &families, &local.underlay.name)
        {
            match forwarding::ensure(&self.settings.sysctl_dir, &key, value) {
                Ok(true) => {
                    info!(node = %self.settings.node_name, setting = %key, value, "node setting applied")
                }
                Ok(false) => {}
                Err(e) => {
                    datapath_complete = false;
                    problems.push(Problem::new(ProblemKind::ForwardingOff, e.to_string()));
                }
            }
        }

        let mut nl = Netlink::new()?;
        let params = VxlanParams {
            vni: network.spec.vxlan.vni,
            port: network.spec.vxlan.port,
        };
        let vxlan = program::ensure_vxlan(&mut nl, params, &local.underlay)?;
        let modes: BTreeMap<String, PoolMode> =
            pools.iter().map(|p| (p.name_any(), p.spec.mode)).collect();
        let plan = plan::plan(
            &self.settings.node_name,
            &local.underlay.subnet,
            &self.peers(),
            &blocks,
            &modes,
        );
        let changes = program::apply(&mut nl, &plan, &local.underlay, Some(&vxlan))?;
        self.metrics
            .peer_routes
            .store(plan.routes.len() as u64, Ordering::Relaxed);
        if changes.added + changes.removed > 0 {
            info!(node = %self.settings.node_name, added = changes.added, removed = changes.removed, routes = plan.routes.len(), "peers programmed");
        }
        problems.extend(
            plan.problems
                .iter()
                .map(|p| Problem::new(ProblemKind::PeersIncomplete, p.clone())),
        );

        problems.extend(self.claim_blocks(&pools, &facts, &blocks).await?);
        if let Err(e) = self.release_blocks(&pools, &facts, &blocks).await {
            problems.push(Problem::new(
                ProblemKind::BlockReleaseFailed,
                format!("{e:#}"),
            ));
        }
        if datapath_complete && !self.memory.pass_completed {
            info!(node = %self.settings.node_name, "first complete pass in this boot: the node serves pods");
            self.memory.pass_completed = true;
        }
        let state = self.node_state(&network, &local, &pools, &facts, &blocks);
        self.store_node_state(state)?;

        if let Err(e) = self.apply_nft(params.port) {
            problems.push(Problem::new(
                ProblemKind::NftablesFailed,
                format!("natOutgoing and the VXLAN source filter are not applied: {e}"),
            ));
        }
        self.mirror_namespace_pools()?;
        self.release_leaks(&mut nl)?;

        let ready = self.memory.pass_completed
            && self
                .memory
                .node_state
                .as_ref()
                .is_some_and(|st| st.pools.iter().any(|p| !p.disabled && !p.blocks.is_empty()));
        self.metrics.ready.store(ready, Ordering::Relaxed);
        let report = if ready {
            Some(self.install(&network)?)
        } else {
            None
        };
        problems.sort();
        problems.dedup();
        self.publish(
            &local,
            vxlan.mac,
            &modes,
            report,
            problems,
            &network.spec.config_hash(),
        )
        .await
    }

    /// Writes `node.json` when it changed. The plugin reads it on every ADD, so the order of
    /// effects matters: a block's retired mark is dropped only after a durable `node.json`
    /// stops listing it (a crash in between must not let an ADD allocate from a block another
    /// node may own by now), and block requests are cleared only once their pool has blocks.
    fn store_node_state(&mut self, mut state: NodeState) -> anyhow::Result<()> {
        let boot = node_state::current_boot_id();
        state.ready_boot = Some(if self.memory.pass_completed {
            boot
        } else {
            // Not yet: keep what the file says (the same boot after an agent restart stays
            // ready; a file from before a reboot stays stale until this boot's first pass).
            node_state::load(&self.settings.state_dir)
                .ok()
                .flatten()
                .and_then(|s| s.ready_boot)
                .unwrap_or_default()
        });
        if self.memory.node_state.as_ref() == Some(&state) {
            return Ok(());
        }
        node_state::store(&state, &self.settings.state_dir)?;
        for p in &state.pools {
            if !p.blocks.is_empty() {
                node_state::clear_block_request(&self.settings.state_dir, &p.name)?;
            }
        }
        let listed: BTreeSet<String> = state
            .pools
            .iter()
            .flat_map(|p| p.blocks.iter().cloned())
            .collect();
        let store = ipam::Store::new(&self.settings.state_dir);
        if store
            .snapshot()?
            .retired
            .iter()
            .any(|r| !listed.contains(r))
        {
            store.update(|s| s.retired.retain(|r| listed.contains(r)))?;
        }
        self.memory.node_state = Some(state);
        Ok(())
    }

    /// Keeps the `inet sinew` nftables table in line with every pool of the cluster (NAT) and
    /// every node's address (who may send VXLAN here); rewritten only when it changes.
    fn apply_nft(&mut self, vxlan_port: u16) -> Result<(), nat::NatError> {
        let pools: Vec<nat::NatPool> = self
            .cluster
            .pools
            .state()
            .iter()
            .filter_map(|p| {
                Some(nat::NatPool {
                    cidr: p.spec.parsed_cidr().ok()?,
                    nat_outgoing: p.spec.nat_outgoing,
                })
            })
            .collect();
        let peers = nat::VxlanPeers {
            port: vxlan_port,
            nodes: self
                .cluster
                .nodes
                .state()
                .iter()
                .filter_map(|n| node_ip(n))
                .collect(),
        };
        let script = nat::render(&pools, &peers);
        if self.memory.nat.as_deref() != Some(script.as_str()) || !nat::table_exists() {
            nat::apply(&script)?;
            info!(node = %self.settings.node_name, pools = pools.len(), nodes = peers.nodes.len(), "nftables table applied (natOutgoing, VXLAN sources)");
            self.memory.nat = Some(script);
        }
        Ok(())
    }

    /// Mirrors each namespace's `sinew.dev/ippool` annotation into `<state>/namespaces/<ns>`,
    /// where the plugin looks when a pod has no annotation of its own.
    fn mirror_namespace_pools(&mut self) -> anyhow::Result<()> {
        let dir = self.settings.state_dir.join("namespaces");
        let wanted: BTreeMap<String, String> = self
            .cluster
            .namespaces
            .state()
            .iter()
            .filter_map(|ns| {
                let pools = ns.annotations().get(node_state::POOL_ANNOTATION)?;
                Some((ns.name_any(), pools.clone()))
            })
            .collect();
        if self.memory.namespace_pools.as_ref() == Some(&wanted) {
            return Ok(());
        }
        std::fs::create_dir_all(&dir)?;
        for (ns, pools) in &wanted {
            let mirrored = self.memory.namespace_pools.as_ref().and_then(|m| m.get(ns));
            if mirrored != Some(pools) {
                sinew_node_lib::fsutil::atomic_write(&dir.join(ns), pools.as_bytes())?;
            }
        }
        for entry in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !wanted.contains_key(&name) {
                std::fs::remove_file(entry.path())?;
            }
        }
        self.memory.namespace_pools = Some(wanted);
        Ok(())
    }

    fn selected_pools(&self, local: &Local) -> Vec<Arc<IPPool>> {
        let mut pools: Vec<Arc<IPPool>> = self
            .cluster
            .pools
            .state()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| sinew_crds::selector::matches(p.spec.node_selector.as_ref(), &local.labels))
            .collect();
        pools.sort_by_key(|p| p.name_any());
        pools
    }

    fn my_blocks(&self, blocks: &[BlockInfo], pool: &str) -> Vec<Cidr> {
        let mut mine: Vec<Cidr> = blocks
            .iter()
            .filter(|b| b.node == self.settings.node_name && b.pool == pool)
            .map(|b| b.cidr)
            .collect();
        mine.sort();
        mine
    }

    fn peers(&self) -> Vec<NodeInfo> {
        self.cluster
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                Some(NodeInfo {
                    name: n.name_any(),
                    ip: node_ip(n)?,
                    vtep_mac: n
                        .annotations()
                        .get(VTEP_MAC_ANNOTATION)
                        .and_then(|m| parse_mac(m)),
                })
            })
            .collect()
    }

    /// Claims a block for every selected, usable pool that has none here, has fewer than
    /// `min_free` free addresses here, or that the plugin asked a block for. Each pool on its
    /// own: an API error for one pool becomes a problem line and the others go on.
    async fn claim_blocks(
        &mut self,
        pools: &[Arc<IPPool>],
        facts: &BTreeMap<String, PoolFacts>,
        blocks: &[BlockInfo],
    ) -> anyhow::Result<Vec<Problem>> {
        let held = ipam::Store::new(&self.settings.state_dir).snapshot()?;
        let requested: BTreeSet<String> =
            node_state::pending_block_requests(&self.settings.state_dir)?
                .into_iter()
                .collect();
        let mut problems = self.reassert_blocks(&held, facts, blocks).await;
        for pool in pools {
            let name = pool.name_any();
            let Some(fact) = facts.get(&name) else {
                continue;
            };
            // A pool not judged yet, stalled for a conflict (another pool, a Service CIDR, a
            // node address) or disabled gets no new blocks; existing pods keep theirs.
            if let Some(why) = &fact.unusable {
                if requested.contains(&name) {
                    problems.push(Problem::new(
                        ProblemKind::PoolUnusable,
                        format!("a pod asked for pool {name}, which hands out no addresses: {why}"),
                    ));
                }
                continue;
            }
            let mine = self.my_blocks(blocks, &name);
            let capacity: u128 = mine.iter().map(Cidr::size).sum();
            let used = held
                .slots
                .iter()
                .filter(|(ip, s)| s.holder.is_some() && mine.iter().any(|b| b.contains(**ip)))
                .count() as u128;
            let free = capacity.saturating_sub(used);
            if !mine.is_empty()
                && free >= u128::from(self.settings.min_free)
                && !requested.contains(&name)
            {
                self.memory.exhausted.remove(&name);
                continue;
            }
            match self
                .claim_one(&name, &fact.cidr, fact.block_size, blocks)
                .await
            {
                Ok(Some(block)) => {
                    self.memory.exhausted.remove(&name);
                    self.metrics.blocks_claimed.fetch_add(1, Ordering::Relaxed);
                    info!(node = %self.settings.node_name, pool = %name, block = %block, free = free as u64, "claimed block")
                }
                Ok(None) => {
                    if self.memory.exhausted.insert(name.clone()) {
                        warn!(node = %self.settings.node_name, pool = %name, free = free as u64, "pool has no unclaimed block left");
                    }
                }
                Err(e) => {
                    warn!(node = %self.settings.node_name, pool = %name, error = %format!("{e:#}"), "claiming a block failed");
                    problems.push(Problem::new(
                        ProblemKind::BlockClaimFailed,
                        format!("pool {name}: {e:#}"),
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// Claims again, under the same name, every block whose addresses pods on this node still
    /// hold but whose `IPBlock` is gone (deleted by hand or by a tool): otherwise another node
    /// could claim the range and hand out the same addresses. A block another node owns by
    /// now is reported (`BlockLost`), with the pods' addresses at stake.
    async fn reassert_blocks(
        &self,
        held: &ipam::IpamState,
        facts: &BTreeMap<String, PoolFacts>,
        blocks: &[BlockInfo],
    ) -> Vec<Problem> {
        let mut in_use: BTreeMap<String, (String, usize)> = BTreeMap::new();
        for a in held.attachments.values() {
            for h in &a.addresses {
                in_use
                    .entry(h.block.clone())
                    .or_insert_with(|| (h.pool.clone(), 0))
                    .1 += 1;
            }
        }
        let api: Api<IPBlock> = Api::all(self.client.clone());
        let mut problems = Vec::new();
        for (block, (pool, count)) in in_use {
            let Ok(cidr) = block.parse::<Cidr>() else {
                continue;
            };
            if blocks.iter().any(|b| b.cidr == cidr) || !facts.contains_key(&pool) {
                continue;
            }
            let name = IPBlock::name_for(&cidr);
            let object = self.block_object(&pool, &cidr);
            let params = PostParams {
                field_manager: Some(field_manager(&self.settings.node_name)),
                ..PostParams::default()
            };
            match api.create(&params, &object).await {
                Ok(_) => {
                    warn!(node = %self.settings.node_name, pool = %pool, block = %cidr, addresses = count, "IPBlock was deleted while pods here hold its addresses: claimed it again")
                }
                Err(kube::Error::Api(e)) if e.code == 409 => match api.get(&name).await {
                    Ok(other) if other.spec.node != self.settings.node_name => problems.push(Problem::new(
                        ProblemKind::BlockLost,
                        format!("{count} addresses of {cidr} are held by pods on this node, but IPBlock {name} now belongs to node {}: delete and recreate those pods", other.spec.node),
                    )),
                    _ => {}
                },
                Err(e) => problems.push(Problem::new(
                    ProblemKind::BlockClaimFailed,
                    format!("re-claiming {cidr} (pool {pool}, {count} addresses in use here): {e}"),
                )),
            }
        }
        problems
    }

    /// The `IPBlock` this node creates to claim `block` of `pool`.
    fn block_object(&self, pool: &str, block: &Cidr) -> IPBlock {
        IPBlock {
            metadata: ObjectMeta {
                name: Some(IPBlock::name_for(block)),
                labels: Some(BTreeMap::from([
                    (NODE_LABEL.to_string(), self.settings.node_name.clone()),
                    (POOL_LABEL.to_string(), pool.to_string()),
                ])),
                ..ObjectMeta::default()
            },
            spec: IPBlockSpec {
                pool: pool.to_string(),
                cidr: block.to_string(),
                node: self.settings.node_name.clone(),
            },
            status: None,
        }
    }

    /// Gives back blocks that stayed empty for the grace period and are not needed: blocks of
    /// pools that no longer select this node (or are gone), and surplus blocks whose pool keeps
    /// at least `min_free` free addresses here without them. The block is first retired in the
    /// IPAM store under its lock (so no ADD can allocate from it any more), then deleted.
    async fn release_blocks(
        &mut self,
        pools: &[Arc<IPPool>],
        facts: &BTreeMap<String, PoolFacts>,
        blocks: &[BlockInfo],
    ) -> anyhow::Result<()> {
        let store = ipam::Store::new(&self.settings.state_dir);
        let snapshot = store.snapshot()?;
        let selected: BTreeSet<String> = pools
            .iter()
            .map(|p| p.name_any())
            .filter(|name| facts.get(name).is_some_and(|f| f.unusable.is_none()))
            .collect();
        let mine: Vec<&BlockInfo> = blocks
            .iter()
            .filter(|b| b.node == self.settings.node_name)
            .collect();
        let held_in = |block: &Cidr| {
            snapshot
                .slots
                .iter()
                .filter(|(ip, s)| s.holder.is_some() && block.contains(**ip))
                .count() as u128
        };
        let now = tokio::time::Instant::now();
        let mut releasable = Vec::new();
        for b in &mine {
            let key = b.cidr.to_string();
            if held_in(&b.cidr) > 0 {
                self.memory.empty_since.remove(&key);
                continue;
            }
            let since = *self.memory.empty_since.entry(key).or_insert(now);
            if now.duration_since(since) < self.settings.block_release_grace {
                continue;
            }
            let surplus = if selected.contains(&b.pool) {
                let others_free: u128 = mine
                    .iter()
                    .filter(|o| {
                        o.pool == b.pool && o.cidr != b.cidr && !releasable.contains(&o.cidr)
                    })
                    .map(|o| o.cidr.size() - held_in(&o.cidr))
                    .sum();
                others_free >= u128::from(self.settings.min_free)
            } else {
                true
            };
            if surplus {
                releasable.push(b.cidr);
            }
        }
        let api: Api<IPBlock> = Api::all(self.client.clone());
        for block in releasable {
            if !store.update(|s| s.retire_if_empty(&block))? {
                continue;
            }
            match api
                .delete(&IPBlock::name_for(&block), &Default::default())
                .await
            {
                Ok(_) => {
                    info!(node = %self.settings.node_name, block = %block, "released empty block")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            self.memory.empty_since.remove(&block.to_string());
        }
        Ok(())
    }

    /// Creates the `IPBlock` of the first unclaimed block, starting at an offset derived from
    /// the node name so that nodes racing for blocks mostly try different ones. A 409 means
    /// another node won that block: try the next.
    async fn claim_one(
        &self,
        pool: &str,
        cidr: &Cidr,
        size: u8,
        blocks: &[BlockInfo],
    ) -> anyhow::Result<Option<Cidr>> {
        // Every object name counts as taken (even one this agent distrusts), and so does
        // every address range a trusted block covers.
        let taken: BTreeSet<String> = self
            .cluster
            .blocks
            .state()
            .iter()
            .map(|b| b.name_any())
            .collect();
        let total = cidr.block_count(size);
        if total == 0 {
            return Ok(None);
        }
        let start = u128::from(name_hash(&self.settings.node_name)) % total;
        let api: Api<IPBlock> = Api::all(self.client.clone());
        let limit = total.min(4096);
        for i in 0..limit {
            let index = (start + i) % total;
            let Some(block) = cidr.block(size, index) else {
                continue;
            };
            let name = IPBlock::name_for(&block);
            if taken.contains(&name) || blocks.iter().any(|b| b.cidr.overlaps(&block)) {
                continue;
            }
            let object = self.block_object(pool, &block);
            let params = PostParams {
                field_manager: Some(field_manager(&self.settings.node_name)),
                ..PostParams::default()
            };
            match api.create(&params, &object).await {
                Ok(_) => {
                    // A block this node gave back earlier may come back to it.
                    ipam::Store::new(&self.settings.state_dir)
                        .update(|s| s.retired.remove(&block.to_string()))?;
                    return Ok(Some(block));
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Ours already (the watch lags behind an earlier claim)? Then it is claimed.
                    if let Ok(existing) = api.get(&IPBlock::name_for(&block)).await
                        && existing.spec.node == self.settings.node_name
                        && existing.spec.cidr == block.to_string()
                    {
                        return Ok(Some(block));
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    fn node_state(
        &self,
        network: &ClusterNetwork,
        local: &Local,
        pools: &[Arc<IPPool>],
        facts: &BTreeMap<String, PoolFacts>,
        blocks: &[BlockInfo],
    ) -> NodeState {
        let underlay_mtu = local.underlay.mtu;
        let family = sinew_crds::Family::of(local.underlay.ip);
        let fixed_mtu = network.spec.fixed_mtu();
        NodeState {
            node: self.settings.node_name.clone(),
            pools: pools
                .iter()
                .map(|p| {
                    let name = p.name_any();
                    PoolState {
                        mode: p.spec.mode,
                        mtu: p.spec.mode.pod_mtu(
                            underlay_mtu,
                            family,
                            facts.get(&name).map_or(family, |f| f.cidr.family()),
                            fixed_mtu,
                        ),
                        // Unjudged, conflicted and disabled pools hand out no new addresses.
                        disabled: facts.get(&name).is_none_or(|f| f.unusable.is_some()),
                        reserved: p.spec.reserved.clone(),
                        blocks: self
                            .my_blocks(blocks, &name)
                            .iter()
                            .map(Cidr::to_string)
                            .collect(),
                        exhausted: self.memory.exhausted.contains(&name),
                        cidr: p.spec.cidr.clone(),
                        name,
                    }
                })
                .collect(),
            ready_boot: None,
        }
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

    /// Installs the plugin binary (once per agent start, or again if it disappeared) and then
    /// the conflist; returns the install report.
    fn install(&mut self, network: &ClusterNetwork) -> anyhow::Result<InstallReport> {
        let bin = self.bin_dir(network).join(PLUGIN_BINARY);
        if self.memory.plugin_sha256.is_none() || !bin.exists() {
            let plugin = std::fs::read(&self.settings.plugin_source).map_err(|e| {
                anyhow::anyhow!(
                    "reading the plugin binary {}: {e}",
                    self.settings.plugin_source.display()
                )
            })?;
            let outcome = install::install_file(&bin, &plugin, 0o755)?;
            info!(node = %self.settings.node_name, path = %bin.display(), ?outcome, "plugin binary");
            self.memory.plugin_sha256 = Some(install::sha256_hex(&plugin));
        }
        let file = conflist::file_name(&network.spec.cni);
        let bytes = conflist::render(
            &network.spec.cni,
            network.spec.log_level,
            &self.settings.state_dir,
            &self.settings.log_file,
        );
        let conf_dir = self.conf_dir(network);
        if install::install_file(&conf_dir.join(&file), &bytes, 0o644)? == Outcome::Written {
            info!(node = %self.settings.node_name, file = %file, "conflist written");
        }
        // A stale conflist of ours under another priority would shadow or linger: remove it.
        for old in std::fs::read_dir(&conf_dir)?.filter_map(Result::ok) {
            let name = old.file_name().to_string_lossy().into_owned();
            if name.ends_with("-sinew.conflist") && name != file {
                install::remove_file(&old.path())?;
            }
        }
        let report = install::conf_report(&conf_dir, &file)?;
        let hash = install::sha256_hex(&bytes);
        self.memory.conflist_hash = Some(hash.clone());
        Ok(InstallReport {
            conflist: Some(file),
            conflist_hash: Some(hash),
            plugin_sha256: self.memory.plugin_sha256.clone(),
            chosen: report.chosen,
            shadowing: report.shadowing,
            others: report.others,
        })
    }

    /// Publishes the VTEP MAC, the install/convergence state and the Node condition.
    async fn publish(
        &mut self,
        local: &Local,
        vtep: Option<[u8; 6]>,
        modes: &BTreeMap<String, PoolMode>,
        install: Option<InstallReport>,
        problems: Vec<Problem>,
        spec_hash: &str,
    ) -> anyhow::Result<()> {
        let ready = install.is_some();
        if let Some(report) = &install {
            self.record_conflist_event(local, report).await;
        }
        let report = NodeReport {
            ready,
            spec_hash: Some(spec_hash.to_string()),
            underlay: Some(local.underlay.subnet.to_string()),
            underlay_mtu: Some(local.underlay.mtu),
            install,
            modes: modes.clone(),
            problems,
            cleaned_up: false,
        };
        let mut annotations =
            BTreeMap::from([(NODE_STATE_ANNOTATION.to_string(), report.to_annotation())]);
        if let Some(mac) = vtep {
            annotations.insert(VTEP_MAC_ANNOTATION.to_string(), mac_string(mac));
        }
        let fingerprint = serde_json::to_string(&annotations)?;
        let current_matches = annotations
            .iter()
            .all(|(k, v)| local.node.annotations().get(k) == Some(v));
        if self.memory.published.as_deref() == Some(fingerprint.as_str()) && current_matches {
            return Ok(());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let params = PatchParams::apply(&field_manager(&self.settings.node_name));
        let patch = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.settings.node_name, "annotations": annotations},
        });
        nodes
            .patch(&self.settings.node_name, &params, &Patch::Apply(&patch))
            .await?;
        if ready {
            let now = k8s_openapi::jiff::Timestamp::now();
            let condition = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.settings.node_name},
                "status": {"conditions": [{
                    "type": "NetworkUnavailable", "status": "False", "reason": "SinewIsUp",
                    "message": "sinew installed the CNI configuration and programmed the routes of this node",
                    "lastTransitionTime": now.to_string(), "lastHeartbeatTime": now.to_string(),
                }]},
            });
            nodes
                .patch_status(
                    &self.settings.node_name,
                    &params,
                    &Patch::Strategic(&condition),
                )
                .await?;
        }
        self.memory.published = Some(fingerprint);
        Ok(())
    }

    /// Records an Event on the Node when the runtime's choice of conflist changes: a Warning
    /// when another file wins over ours (sinew never renames or deletes it), Normal otherwise.
    async fn record_conflist_event(&mut self, local: &Local, report: &InstallReport) {
        let ours = report.conflist.as_deref().unwrap_or_default();
        let chosen = report.chosen.as_deref().unwrap_or_default();
        let situation = format!("{chosen}|{:?}", report.shadowing);
        if self.memory.evented.as_deref() == Some(situation.as_str()) {
            return;
        }
        let event = if chosen == ours {
            Event {
                type_: EventType::Normal,
                reason: "ConflistInstalled".into(),
                note: Some(format!("{ours} installed; the runtime loads it")),
                action: "Install".into(),
                secondary: None,
            }
        } else {
            Event {
                type_: EventType::Warning,
                reason: "ForeignConflistWins".into(),
                note: Some(format!(
                    "the container runtime loads {chosen}, not {ours}: files sorting before it ({}) shadow sinew; sinew never renames or deletes other vendors' files, lower cni.confPriority or remove them",
                    report.shadowing.join(", ")
                )),
                action: "Install".into(),
                secondary: None,
            }
        };
        match self
            .recorder
            .publish(&event, &local.node.object_ref(&()))
            .await
        {
            Ok(()) => self.memory.evented = Some(situation),
            Err(e) => {
                warn!(node = %self.settings.node_name, error = %e, "recording an Event failed")
            }
        }
    }

    /// Carries out the operator's release requests on this node's blocks: under the store
    /// lock, frees an allocation only if it still matches the request exactly (address, slot
    /// generation, pod UID), then removes its host-side veth if one is left.
    fn release_leaks(&mut self, nl: &mut Netlink) -> anyhow::Result<()> {
        let requests: Vec<(String, ReleaseRequest)> = self
            .cluster
            .blocks
            .state()
            .iter()
            .filter(|b| b.spec.node == self.settings.node_name)
            .flat_map(|b| {
                let name = b.name_any();
                b.release_requests()
                    .into_iter()
                    .map(move |r| (name.clone(), r))
            })
            .collect();
        if requests.is_empty() {
            return Ok(());
        }
        let freed = ipam::Store::new(&self.settings.state_dir).update(|st| {
            let mut freed = Vec::new();
            for (block, r) in &requests {
                let key = st
                    .attachments
                    .values()
                    .find(|a| {
                        a.pod_uid.as_deref() == Some(r.pod_uid.as_str())
                            && a.addresses
                                .iter()
                                .any(|h| h.ip.to_string() == r.ip && h.generation == r.generation)
                    })
                    .map(|a| a.key());
                if let Some(attachment) = key.and_then(|k| st.remove_attachment(&k)) {
                    freed.push((block.clone(), r.clone(), attachment.host_veth));
                }
            }
            freed
        })?;
        for (block, r, veth) in freed {
            let veth_removed = nl.delete_link_by_name(&veth).unwrap_or(false);
            info!(node = %self.settings.node_name, block = %block, ip = %r.ip, generation = r.generation, pod = %r.pod, pod_uid = %r.pod_uid, veth_removed, "leaked allocation released");
        }
        Ok(())
    }

    /// Writes each owned block's allocations into its `IPBlock` status when they changed.
    pub async fn sync_block_status(&mut self) -> anyhow::Result<()> {
        let snapshot = ipam::Store::new(&self.settings.state_dir).snapshot()?;
        let api: Api<IPBlock> = Api::all(self.client.clone());
        let params = PatchParams::apply(&field_manager(&self.settings.node_name));
        let mine: Vec<Arc<IPBlock>> = self
            .cluster
            .blocks
            .state()
            .into_iter()
            .filter(|b| b.spec.node == self.settings.node_name)
            .collect();
        let mut per_pool: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for block in mine {
            let Ok(cidr) = block.spec.cidr.parse::<Cidr>() else {
                continue;
            };
            let mut allocations: Vec<Allocation> = snapshot
                .attachments
                .values()
                .flat_map(|a| {
                    a.addresses
                        .iter()
                        .filter(|h| cidr.contains(h.ip))
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
            let status = IPBlockStatus {
                allocated: u32::try_from(allocations.len()).unwrap_or(u32::MAX),
                allocations,
            };
            let entry = per_pool.entry(block.spec.pool.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(status.allocated);
            let name = block.name_any();
            let already = match self.memory.reported_blocks.get(&name) {
                Some(reported) => reported == &status,
                None => block.status.as_ref() == Some(&status),
            };
            if already {
                self.memory.reported_blocks.insert(name, status);
                continue;
            }
            let patch = json!({
                "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
                "metadata": {"name": name},
                "status": status,
            });
            api.patch_status(&name, &params, &Patch::Apply(&patch))
                .await?;
            debug!(block = %name, allocated = status.allocated, "block status synced");
            self.memory.reported_blocks.insert(name, status);
        }
        if let Ok(mut pools) = self.metrics.pools.lock() {
            *pools = per_pool;
        }
        Ok(())
    }

    /// Removes everything sinew put on this node once the `ClusterNetwork` is being deleted,
    /// without stranding a running pod: first no pool hands out new addresses here any more
    /// (`node.json`), then, once no pod on this node holds a sinew address (or no pool is
    /// left), the conflist, the plugin binary, the routes, the VXLAN device and the nftables
    /// table go, in that order. Until then the runtime still finds the conflist and the
    /// plugin, so every pod's DEL runs and its traffic flows until it is torn down (a runtime
    /// cannot tear down a pod whose network configuration is gone). Says which on the Node.
    async fn clean_up(&mut self, network: &ClusterNetwork) -> anyhow::Result<()> {
        if self.memory.cleaned {
            return Ok(());
        }
        if let Some(mut state) = node_state::load(&self.settings.state_dir)?
            && state.pools.iter().any(|p| !p.disabled)
        {
            for pool in &mut state.pools {
                pool.disabled = true;
            }
            node_state::store(&state, &self.settings.state_dir)?;
            self.memory.node_state = None;
        }
        let conf = self
            .conf_dir(network)
            .join(conflist::file_name(&network.spec.cni));
        let attached = ipam::Store::new(&self.settings.state_dir)
            .snapshot()?
            .attachments
            .len();
        let pools_left = !self.cluster.pools.state().is_empty();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let params = PatchParams::apply(&field_manager(&self.settings.node_name));
        if attached > 0 && pools_left {
            let waiting = format!(
                "{attached} pod interfaces still hold sinew addresses on this node: the conflist, plugin, routes and VXLAN stay until they are deleted (no new pod gets a sinew address)"
            );
            if self.memory.published.as_deref() != Some(waiting.as_str()) {
                info!(node = %self.settings.node_name, attached, "waiting for pods to go before cleaning the node");
                let patch = json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.settings.node_name, "annotations": {
                        NODE_STATE_ANNOTATION: NodeReport {
                            problems: vec![Problem::new(ProblemKind::CleanUpWaiting, waiting.clone())],
                            ..NodeReport::default()
                        }.to_annotation(),
                    }},
                });
                nodes
                    .patch(&self.settings.node_name, &params, &Patch::Apply(&patch))
                    .await?;
                self.memory.published = Some(waiting);
            }
            return Ok(());
        }
        install::remove_file(&conf)?;
        install::remove_file(&self.bin_dir(network).join(PLUGIN_BINARY))?;
        program::remove_all(&mut Netlink::new()?)?;
        nat::remove()?;
        info!(node = %self.settings.node_name, "node cleaned up: conflist, plugin, routes, VXLAN device and nftables table removed");
        let patch = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.settings.node_name, "annotations": {
                NODE_STATE_ANNOTATION: NodeReport { cleaned_up: true, ..NodeReport::default() }.to_annotation(),
            }},
        });
        nodes
            .patch(&self.settings.node_name, &params, &Patch::Apply(&patch))
            .await?;
        self.memory = Memory {
            cleaned: true,
            ..Memory::default()
        };
        Ok(())
    }
}

/// FNV-1a of a node name: where its block search starts.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_roundtrip_and_reject_garbage() {
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        assert_eq!(parse_mac(&mac_string(mac)), Some(mac));
        assert_eq!(parse_mac("02:42"), None);
        assert_eq!(parse_mac("zz:42:ac:11:00:02"), None);
    }

    #[test]
    fn block_search_starts_differ_between_nodes() {
        assert_ne!(name_hash("node-a") % 64, name_hash("node-b") % 64);
    }
}
