//! The agent's index: the watched objects (reflector stores) and the pruned views one pass
//! works from. Every conversion from a Kubernetes object into what the planners take happens
//! here; a pass keeps a view while the stores it came from have not changed ([`Derived`],
//! decision 100). Nodes are kept pruned (labels, sinew's annotations, addresses), blocks
//! without labels.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport, POOL_ANNOTATION, VTEP_MAC_ANNOTATION};
use sinew_crds::{CLUSTER_NETWORK_NAME, ClusterNetwork, IPBlock, IPPool, ReleaseRequest};
use sinew_runtime::node::{self, NodeFacts};
use sinew_runtime::watch::{
    Changes, Fingerprint, NODE_LIST_PAGE, Wake, fingerprint, prune_meta, reflect,
};
use tokio::sync::Notify;

use crate::nat;
use crate::peers::NodeInfo;

/// The pieces of cluster state the agent watches.
pub struct Cluster {
    pub nodes: Store<NodeFacts>,
    pub pools: Store<IPPool>,
    pub blocks: Store<IPBlock>,
    pub networks: Store<ClusterNetwork>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// How often the stores a pass derives its views from changed (see [`Derived`]).
    pub changes: StoreChanges,
}

/// The change counts of the stores whose views a pass keeps between passes.
#[derive(Debug, Clone, Default)]
pub struct StoreChanges {
    pub nodes: Changes,
    pub pools: Changes,
    pub blocks: Changes,
}

/// A value derived from cluster state, kept while the state it came from (`K`: the stores'
/// change counts, and whatever else it was derived from) is the same: at 5,000 peers,
/// deriving every view again each pass was most of a pass.
#[derive(Debug)]
pub struct Derived<K, V> {
    from: Option<K>,
    value: Option<V>,
}

impl<K, V> Default for Derived<K, V> {
    fn default() -> Self {
        Derived {
            from: None,
            value: None,
        }
    }
}

impl<K: PartialEq, V> Derived<K, V> {
    /// The value derived from `from`: the kept one, or `derive()`'s (then kept).
    pub fn get(&mut self, from: K, derive: impl FnOnce() -> V) -> &V {
        if self.from.as_ref() != Some(&from) {
            self.value = None;
            self.from = Some(from);
        }
        self.value.get_or_insert_with(derive)
    }
}

impl Cluster {
    /// Starts the watches; each change to what a pass reads wakes `notify` (see the
    /// fingerprints below): a status write it does not read, or a Node heartbeat, does not.
    pub fn watch(
        client: &Client,
        notify: &Arc<Notify>,
        peer_selector: Option<&str>,
        metrics: &crate::http::Metrics,
    ) -> Cluster {
        let all = watcher::Config::default;
        let changes = StoreChanges::default();
        let wake = |resource: &str, changes: Option<&Changes>| {
            (
                notify.clone(),
                metrics.watch_events(resource),
                changes.cloned(),
            )
        };
        fn waking<K>(
            (notify, received, changes): (Arc<Notify>, Counter, Option<Changes>),
            fingerprint: impl Fn(&K) -> Option<u64> + Send + Sync + 'static,
        ) -> Option<Wake<K>> {
            let fingerprint: Fingerprint<K> = Arc::new(fingerprint);
            Some(Wake {
                notify,
                fingerprint,
                received: Some(received),
                changes,
            })
        }
        Cluster {
            nodes: reflect(
                Api::all(client.clone()),
                match peer_selector {
                    Some(selector) => all().labels(selector),
                    None => all(),
                }
                .page_size(NODE_LIST_PAGE),
                node::prune,
                waking(wake("nodes", Some(&changes.nodes)), node::fingerprint),
            ),
            pools: reflect(
                Api::all(client.clone()),
                all(),
                prune_meta,
                waking(wake("ippools", Some(&changes.pools)), pool_fingerprint),
            ),
            blocks: reflect(
                Api::all(client.clone()),
                all(),
                prune_block,
                waking(wake("ipblocks", Some(&changes.blocks)), block_fingerprint),
            ),
            networks: reflect(
                Api::all(client.clone()),
                all().fields(&format!("metadata.name={CLUSTER_NETWORK_NAME}")),
                prune_meta,
                waking(wake("clusternetworks", None), network_fingerprint),
            ),
            // Metadata only (names and annotations): `Api<PartialObjectMeta<_>>` asks for no more.
            namespaces: reflect(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                all(),
                prune_meta,
                waking(
                    wake("namespaces", None),
                    |ns: &PartialObjectMeta<Namespace>| fingerprint(&ns.metadata, &()),
                ),
            ),
            changes,
        }
    }

    /// Waits until every store has its initial list.
    pub async fn synced(&self) -> Result<(), String> {
        for (what, ready) in [
            ("nodes", self.nodes.wait_until_ready().await),
            ("pools", self.pools.wait_until_ready().await),
            ("blocks", self.blocks.wait_until_ready().await),
            ("clusternetworks", self.networks.wait_until_ready().await),
        ] {
            ready.map_err(|e| format!("watch of {what} ended: {e}"))?;
        }
        Ok(())
    }

    pub fn network(&self) -> Option<Arc<ClusterNetwork>> {
        self.networks.get(&ObjectRef::new(CLUSTER_NETWORK_NAME))
    }

    pub fn node(&self, name: &str) -> Option<Arc<NodeFacts>> {
        self.nodes.get(&ObjectRef::new(name))
    }

    /// Pools (not being deleted) whose node selector matches `labels`, by name.
    pub fn selected_pools(
        pools: &[Arc<IPPool>],
        labels: &BTreeMap<String, String>,
    ) -> Vec<Arc<IPPool>> {
        let mut pools: Vec<Arc<IPPool>> = pools
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| sinew_crds::selector::matches(p.spec.node_selector.as_ref(), labels))
            .cloned()
            .collect();
        pools.sort_by_key(|p| p.name_any());
        pools
    }

    /// The pools being deleted.
    pub fn deleting_pools(&self) -> BTreeSet<String> {
        self.pools
            .state()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .map(|p| p.name_any())
            .collect()
    }

    /// Every node with an address, and its VTEP MAC once published.
    pub fn peers(&self) -> Vec<NodeInfo> {
        self.nodes
            .state()
            .iter()
            .filter_map(|n| {
                Some(NodeInfo {
                    name: n.name_any(),
                    ip: n.addresses.primary?,
                    vtep_mac: n
                        .annotations()
                        .get(VTEP_MAC_ANNOTATION)
                        .and_then(|m| parse_mac(m)),
                })
            })
            .collect()
    }

    /// Every pool's CIDR and `natOutgoing`, for the NAT table.
    pub fn nat_pools(pools: &[Arc<IPPool>]) -> Vec<nat::NatPool> {
        pools
            .iter()
            .filter_map(|p| {
                Some(nat::NatPool {
                    cidr: p.spec.parsed_cidr().ok()?,
                    nat_outgoing: p.spec.nat_outgoing,
                })
            })
            .collect()
    }

    /// Namespace -> the pools its `sinew.dev/ippool` annotation asks for.
    pub fn namespace_pools(&self) -> BTreeMap<String, String> {
        self.namespaces
            .state()
            .iter()
            .filter_map(|ns| {
                let pools = ns.annotations().get(POOL_ANNOTATION)?;
                Some((ns.name_any(), pools.clone()))
            })
            .collect()
    }

    /// The operator's release requests on the blocks of node `me`: (block, request).
    pub fn release_requests(&self, me: &str) -> Vec<(String, ReleaseRequest)> {
        self.blocks
            .state()
            .iter()
            .filter(|b| b.spec.node == me)
            .flat_map(|b| {
                let name = b.name_any();
                b.release_requests()
                    .into_iter()
                    .map(move |r| (name.clone(), r))
            })
            .collect()
    }

    /// The `IPBlock` objects of node `me`.
    pub fn blocks_of(&self, me: &str) -> Vec<Arc<IPBlock>> {
        self.blocks
            .state()
            .into_iter()
            .filter(|b| b.spec.node == me)
            .collect()
    }

    /// Every `IPBlock` name in the cluster (taken, even when this agent distrusts it).
    pub fn block_names(&self) -> std::collections::BTreeSet<String> {
        self.blocks.state().iter().map(|b| b.name_any()).collect()
    }
}

/// What the probes read of peers' reports (their `NodeReport`s): each node's underlay MTU
/// and tunnel addresses. A report is parsed again only when its Node's version changed (at
/// 5,000 peers, parsing every report twice a pass was a sixth of the pass).
#[derive(Debug, Default)]
pub struct PeerReports {
    versions: HashMap<String, Option<String>>,
    pub underlay_mtus: BTreeMap<String, u32>,
    /// Nodes that report tunnel addresses, with them.
    pub tunnels: BTreeMap<String, Vec<IpAddr>>,
}

impl PeerReports {
    /// Brings the maps in line with `nodes`.
    pub fn refresh(&mut self, nodes: &[Arc<NodeFacts>]) {
        let present: HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        self.versions
            .retain(|name, _| present.contains(name.as_str()));
        self.underlay_mtus
            .retain(|name, _| present.contains(name.as_str()));
        self.tunnels
            .retain(|name, _| present.contains(name.as_str()));
        for node in nodes {
            let Some(name) = node.metadata.name.as_deref() else {
                continue;
            };
            let version = &node.metadata.resource_version;
            if self.versions.get(name) == Some(version) {
                continue;
            }
            self.versions.insert(name.to_string(), version.clone());
            let report = node
                .annotations()
                .get(NODE_STATE_ANNOTATION)
                .and_then(|a| NodeReport::parse(a));
            match report.as_ref().and_then(|r| r.underlay_mtu) {
                Some(mtu) => self.underlay_mtus.insert(name.to_string(), mtu),
                None => self.underlay_mtus.remove(name),
            };
            match report.map(|r| r.tunnel).filter(|t| !t.is_empty()) {
                Some(tunnel) => self.tunnels.insert(name.to_string(), tunnel),
                None => self.tunnels.remove(name),
            };
        }
    }
}

/// Keeps of an `IPBlock` what a pass reads: not its labels (its node and pool again, for
/// users' selectors) nor its managed fields. At 5,000 blocks the labels alone were 3 MiB of
/// every agent's memory.
fn prune_block(block: &mut IPBlock) {
    prune_meta(block);
    block.metadata.labels = None;
}

/// What a pass reads of a pool: metadata, spec, and of the status only whether the operator
/// judged it and whether it stalled it for a conflict (`vetting::pools`); not the counts the
/// operator rewrites after every allocation.
pub fn pool_fingerprint(pool: &IPPool) -> Option<u64> {
    let status = pool.status.as_ref().map(|s| s.observed_generation);
    fingerprint(&pool.metadata, &(&pool.spec, status, pool.is_conflicted()))
}

/// What a pass reads of a block: metadata (release requests are annotations) and spec.
/// (Allocations are not in the block: its node writes them into its `IPBlockUsage`, which no
/// agent watches; a pass follows each such write instead.)
pub fn block_fingerprint(block: &IPBlock) -> Option<u64> {
    fingerprint(&block.metadata, &block.spec)
}

/// What a pass reads of the `ClusterNetwork`: metadata (its deletion) and spec, not the
/// status the operator aggregates from every node's report.
pub fn network_fingerprint(network: &ClusterNetwork) -> Option<u64> {
    fingerprint(&network.metadata, &network.spec)
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_derived_again_only_when_what_it_came_from_changed() {
        let mut view: Derived<(u64, u64), String> = Derived::default();
        let mut derived = 0;
        let mut get = |from, value: &str| {
            view.get(from, || {
                derived += 1;
                value.to_string()
            })
            .clone()
        };
        assert_eq!(get((0, 0), "first"), "first");
        assert_eq!(get((0, 0), "second"), "first", "the same sources: kept");
        assert_eq!(get((1, 0), "third"), "third", "a source changed");
        assert_eq!(get((1, 0), "fourth"), "third");
        assert_eq!(
            get((0, 0), "fifth"),
            "fifth",
            "not a cache of every past state"
        );
        assert_eq!(derived, 3);
    }

    #[test]
    fn a_blocks_claim_and_release_requests_wake_an_agent_and_nothing_else() {
        let block = |rv: &str, annotations: serde_json::Value| -> IPBlock {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
                "metadata": {"name": "10-0-0-0-26", "resourceVersion": rv, "annotations": annotations},
                "spec": {"pool": "p", "cidr": "10.0.0.0/26", "node": "n"},
            }))
            .unwrap()
        };
        let none = serde_json::json!({});
        assert_eq!(
            block_fingerprint(&block("1", none.clone())),
            block_fingerprint(&block("2", none.clone())),
            "a new resourceVersion alone"
        );
        assert_ne!(
            block_fingerprint(&block("1", none)),
            block_fingerprint(&block(
                "2",
                serde_json::json!({sinew_crds::RELEASE_ANNOTATION: "[]"})
            )),
            "the operator's release requests"
        );
    }

    #[test]
    fn pool_counts_do_not_wake_an_agent_but_its_judgement_does() {
        let pool = |rv: &str, status: serde_json::Value| -> IPPool {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
                "metadata": {"name": "p", "resourceVersion": rv},
                "spec": {"cidr": "10.0.0.0/24"},
                "status": status,
            }))
            .unwrap()
        };
        let unjudged = pool_fingerprint(&pool("1", serde_json::json!({})));
        let judged = pool_fingerprint(&pool(
            "2",
            serde_json::json!({"observedGeneration": 1, "allocated": 1}),
        ));
        let counted = pool_fingerprint(&pool(
            "3",
            serde_json::json!({"observedGeneration": 1, "allocated": 7, "usage": "7/254"}),
        ));
        let stalled = pool_fingerprint(&pool(
            "4",
            serde_json::json!({"observedGeneration": 1, "conditions": [{
            "type": "Stalled", "status": "True", "reason": "OverlappingPools", "message": "m",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        ));
        assert_ne!(unjudged, judged);
        assert_eq!(judged, counted);
        assert_ne!(judged, stalled);
    }

    #[test]
    fn peer_reports_follow_each_nodes_version_and_departure() {
        let node = |name: &str, rv: &str, report: serde_json::Value| -> Arc<NodeFacts> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "resourceVersion": rv,
                                 "annotations": {NODE_STATE_ANNOTATION: report.to_string()}},
                }))
                .unwrap(),
            )
        };
        let mut reports = PeerReports::default();
        reports.refresh(&[
            node(
                "a",
                "1",
                serde_json::json!({"underlayMtu": 1500, "tunnel": ["10.244.0.1"]}),
            ),
            node("b", "1", serde_json::json!({"underlayMtu": 9000})),
        ]);
        assert_eq!(
            reports.underlay_mtus,
            BTreeMap::from([("a".to_string(), 1500), ("b".to_string(), 9000)])
        );
        assert_eq!(reports.tunnels.keys().collect::<Vec<_>>(), ["a"]);
        reports.refresh(&[node(
            "b",
            "2",
            serde_json::json!({"underlayMtu": 1400, "tunnel": ["10.244.1.1"]}),
        )]);
        assert_eq!(
            reports.underlay_mtus,
            BTreeMap::from([("b".to_string(), 1400)])
        );
        assert_eq!(
            reports.tunnels,
            BTreeMap::from([(
                "b".to_string(),
                vec!["10.244.1.1".parse::<IpAddr>().unwrap()]
            )])
        );
    }

    #[test]
    fn macs_roundtrip_and_reject_garbage() {
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        assert_eq!(parse_mac(&mac_string(mac)), Some(mac));
        assert_eq!(parse_mac("02:42"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:02:07"), None);
        assert_eq!(parse_mac("zz:42:ac:11:00:02"), None);
    }
}
