//! Whole passes without a kernel or an API server: the agent against the in-memory kernel
//! (`datapath::fake`), an API server that takes every write and records it, temporary
//! directories for the node's files and sysctls, and caches filled by the test as the
//! watches would fill them.

use std::sync::Mutex;
use std::time::Duration;

use ::http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use sinew_crds::CLUSTER_NETWORK_NAME;
use sinew_crds::{ClusterNetwork, IPBlock, IPPool};
use sinew_runtime::node::NodeFacts;

use super::index::StoreChanges;
use super::*;
use crate::datapath::fake::FakeKernel;

/// One write as the API server received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    body: Value,
}

/// Requests the API server refuses (500), each told by a test.
type Refusals = Arc<Mutex<Vec<Box<dyn Fn(&Seen) -> bool + Send>>>>;

/// What the API server lists, by path (the items of each list).
type Lists = Arc<Mutex<BTreeMap<String, Vec<Value>>>>;

/// The lists NetworkPolicy's loop watches, and the kind of each.
const POLICY_LISTS: [(&str, &str, &str); 3] = [
    ("/api/v1/pods", "v1", "PodList"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networking.k8s.io/v1",
        "NetworkPolicyList",
    ),
    (
        "/api/v1/namespaces",
        "meta.k8s.io/v1",
        "PartialObjectMetadataList",
    ),
];

/// An API server that answers every write with the object as written (a status write: the
/// object last written with that status), but those a refusal matches, and keeps what it
/// received. Reads: NetworkPolicy's lists as the test set them (a watch of them stays open
/// and quiet), else 404.
fn api_server() -> (kube::Client, Arc<Mutex<Vec<Seen>>>, Refusals, Lists) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let refusals: Refusals = Arc::default();
    let lists: Lists = Arc::default();
    let (log, refuse, listed) = (seen.clone(), refusals.clone(), lists.clone());
    tokio::spawn(async move {
        let mut watching = Vec::new();
        // Objects by path, as last written.
        let mut written: BTreeMap<String, Value> = BTreeMap::new();
        while let Some((request, respond)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            let list = POLICY_LISTS.iter().find(|(p, ..)| *p == path);
            if let (Some((_, api_version, kind)), &Method::GET) = (list, request.method()) {
                if request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .contains("watch=true")
                {
                    watching.push(respond);
                    continue;
                }
                let items = listed
                    .lock()
                    .unwrap()
                    .get(&path)
                    .cloned()
                    .unwrap_or_default();
                let reply = json!({"apiVersion": api_version, "kind": kind,
                                   "metadata": {"resourceVersion": "1"}, "items": items});
                respond.send_response(
                    Response::builder()
                        .header(::http::header::CONTENT_TYPE, "application/json")
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
                continue;
            }
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let request = Seen {
                method: parts.method.clone(),
                path: parts.uri.path().to_string(),
                body: body.clone(),
            };
            let refused = refuse.lock().unwrap().iter().any(|r| r(&request));
            log.lock().unwrap().push(request);
            let (code, reply) = match parts.method {
                _ if refused => (
                    500,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "InternalError", "message": "refused by the test",
                           "code": 500}),
                ),
                Method::GET => (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404}),
                ),
                Method::DELETE => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                _ => {
                    // A status write answers with the object it changed, as last written.
                    let mut reply = match parts.uri.path().strip_suffix("/status") {
                        Some(object) => {
                            let mut whole = written.get(object).cloned().unwrap_or(json!({}));
                            whole["status"] = body["status"].clone();
                            whole
                        }
                        None => body.clone(),
                    };
                    if parts.method == Method::PATCH {
                        written.insert(parts.uri.path().to_string(), reply.clone());
                    }
                    reply["metadata"]["uid"] = json!("uid-1");
                    reply["metadata"]["resourceVersion"] = json!("1");
                    (
                        if parts.method == Method::POST {
                            201
                        } else {
                            200
                        },
                        reply,
                    )
                }
            };
            respond.send_response(
                Response::builder()
                    .status(code)
                    .header(::http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (client_of(service), seen, refusals, lists)
}

fn client_of(service: tower_test::mock::Mock<Request<Body>, Response<Body>>) -> kube::Client {
    kube::Client::new(service, "default")
}

/// `metadata` with the fields of `more` added.
fn with_meta(mut metadata: Value, more: Value) -> Value {
    if let (Some(into), Some(more)) = (metadata.as_object_mut(), more.as_object()) {
        into.extend(more.clone());
    }
    metadata
}

/// The caches' writers: what the watches would deliver, the test delivers.
struct Watches {
    networks: Writer<ClusterNetwork>,
    nodes: Writer<NodeFacts>,
    pools: Writer<IPPool>,
    blocks: Writer<IPBlock>,
    changes: StoreChanges,
}

impl Watches {
    /// The `ClusterNetwork`, with NetworkPolicy `policy` ("Enabled" or "Disabled").
    fn network(&mut self, policy: &str) {
        self.network_with(policy, json!({}));
    }

    /// The `ClusterNetwork` deleted: its finalizer holds it while the nodes clean up.
    fn delete_network(&mut self) {
        let deleted = json!({"deletionTimestamp": "2026-01-01T00:00:00Z",
                             "finalizers": ["sinew.dev/nodes-clean"]});
        self.network_with("Disabled", deleted);
    }

    fn network_with(&mut self, policy: &str, meta: Value) {
        let network: ClusterNetwork = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork",
            "metadata": with_meta(json!({"name": CLUSTER_NETWORK_NAME, "generation": 1}), meta),
            "spec": {"networkPolicy": policy},
        }))
        .unwrap();
        self.networks
            .apply_watcher_event(&watcher::Event::Apply(network));
    }

    fn node(&mut self, name: &str, ip: &str, vtep: bool) {
        self.node_reporting(name, ip, vtep, None);
    }

    /// Node `name`, with its agent's `report` (what its peers read of it) where given.
    fn node_reporting(&mut self, name: &str, ip: &str, vtep: bool, report: Option<Value>) {
        let mut annotations = serde_json::Map::new();
        if let Some(report) = report {
            annotations.insert(NODE_STATE_ANNOTATION.into(), json!(report.to_string()));
        }
        if vtep {
            annotations.insert(
                VTEP_MAC_ANNOTATION.into(),
                json!(mac_string(sinew_node_lib::consts::vtep_mac(name))),
            );
        }
        let node: NodeFacts = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations,
                         "resourceVersion": self.changes.nodes.count().to_string()},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
        .unwrap();
        self.nodes.apply_watcher_event(&watcher::Event::Apply(node));
        self.changes.nodes.bump();
    }

    /// Pool `name` of `cidr` in `mode`, judged by the operator at `generation`.
    fn pool(&mut self, name: &str, cidr: &str, mode: &str, generation: i64) {
        self.pool_with(name, cidr, mode, generation, json!({}));
    }

    /// Pool `name` deleted: its finalizer holds it while its nodes drain it.
    fn delete_pool(&mut self, name: &str, cidr: &str) {
        let deleted = json!({"deletionTimestamp": "2026-01-02T00:00:00Z",
                             "finalizers": ["sinew.dev/blocks-drained"]});
        self.pool_with(name, cidr, "VXLAN", 1, deleted);
    }

    fn pool_with(&mut self, name: &str, cidr: &str, mode: &str, generation: i64, meta: Value) {
        let metadata = with_meta(
            json!({"name": name, "generation": generation,
                   "creationTimestamp": "2026-01-01T00:00:00Z"}),
            meta,
        );
        let pool: IPPool = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
            "metadata": metadata,
            "spec": {"cidr": cidr, "mode": mode},
            "status": {"observedGeneration": generation},
        }))
        .unwrap();
        self.pools.apply_watcher_event(&watcher::Event::Apply(pool));
        self.changes.pools.bump();
    }

    fn block(&mut self, cidr: &str, node: &str) {
        self.block_of("p", cidr, node);
    }

    fn block_of(&mut self, pool: &str, cidr: &str, node: &str) {
        self.block_with(pool, cidr, node, json!({}));
    }

    /// A block with `annotations` (the operator's release requests).
    fn block_with(&mut self, pool: &str, cidr: &str, node: &str, annotations: Value) {
        let block: IPBlock = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
            "metadata": {"name": IPBlock::name_for(&cidr.parse().unwrap()),
                         "uid": format!("uid-{cidr}"), "annotations": annotations},
            "spec": {"pool": pool, "cidr": cidr, "node": node},
        }))
        .unwrap();
        self.blocks
            .apply_watcher_event(&watcher::Event::Apply(block));
        self.changes.blocks.bump();
    }
}

/// A node `n1` (10.99.0.10 on `eth0`) under a `ClusterNetwork` without NetworkPolicy, with
/// one judged VXLAN pool `p` (10.244.0.0/16) selecting every node.
struct Node {
    agent: Agent,
    kernel: FakeKernel,
    api: Arc<Mutex<Vec<Seen>>>,
    refusals: Refusals,
    lists: Lists,
    client: kube::Client,
    watches: Watches,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let vxlan_rp_filter = format!("net/ipv4/conf/{VXLAN_DEVICE}/rp_filter");
        for (key, value) in [
            // As RHEL sets a node up: forwarding off, strict reverse-path filtering (the
            // VXLAN device's setting comes with the device, from `default`).
            ("net/ipv4/ip_forward", "0"),
            ("net/ipv4/conf/all/rp_filter", "1"),
            ("net/ipv4/conf/default/rp_filter", "1"),
            ("net/ipv4/conf/eth0/rp_filter", "1"),
            (vxlan_rp_filter.as_str(), "1"),
        ] {
            let path = sys.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{value}\n")).unwrap();
        }
        std::fs::write(dir.path().join("sinew"), b"the plugin").unwrap();
        let settings = Settings {
            conf_dir_override: Some(dir.path().join("net.d")),
            bin_dir_override: Some(dir.path().join("bin")),
            state_dir: dir.path().join("state"),
            sysctl_dir: sys,
            ..Settings::for_tests("n1", dir.path())
        };
        std::fs::create_dir_all(&settings.state_dir).unwrap();
        let (client, api, refusals, lists) = api_server();
        let (nodes, node_writer) = reflector::store();
        let (pools, pool_writer) = reflector::store();
        let (blocks, block_writer) = reflector::store();
        let (networks, network_writer) = reflector::store();
        let (namespaces, _) = reflector::store();
        let changes = StoreChanges::default();
        let metrics = Arc::new(http::Metrics::new(&settings.node_name));
        let kernel = FakeKernel::with_underlay("10.99.0.10".parse().unwrap(), 24, 1500);
        let opened = kernel.clone();
        let agent = Agent {
            cluster: Cluster {
                nodes,
                pools,
                blocks,
                networks,
                namespaces,
                changes: changes.clone(),
            },
            api: ApiWriter::new(client.clone(), &settings.node_name),
            settings,
            memory: PassMemory::default(),
            notify: Arc::new(Notify::new()),
            metrics,
            mesh: Some(probe::Mesh::by_hand()),
            node_watch: Some(NodeWatch::by_hand()),
            policy: Policy::without_loop(),
            local: Arc::new(Notify::new()),
            kernel: Arc::new(move || Ok(Box::new(opened.clone()) as Box<dyn Kernel>)),
        };
        let mut watches = Watches {
            networks: network_writer,
            nodes: node_writer,
            pools: pool_writer,
            blocks: block_writer,
            changes,
        };
        watches.network("Disabled");
        watches.node("n1", "10.99.0.10", false);
        watches.pool("p", "10.244.0.0/16", "VXLAN", 1);
        Node {
            agent,
            kernel,
            api,
            refusals,
            lists,
            client,
            watches,
            dir,
        }
    }

    /// NetworkPolicy's own loop, against the API server's lists and this node's kernel.
    fn with_policy_loop(mut self) -> Node {
        self.agent.policy = Policy::start_without_drops(crate::policy::engine::Loop {
            client: self.client.clone(),
            kernel: Box::new(self.kernel.clone()),
            node: "n1".into(),
            state_dir: self.agent.settings.state_dir.clone(),
            local: Arc::new(Notify::new()),
            local_watched: false,
            pass: self.agent.notify.clone(),
            metrics: self.agent.metrics.clone(),
        });
        self
    }

    /// One pass, and the writes it made.
    async fn pass(&mut self) -> Vec<Seen> {
        self.pass_of(false).await
    }

    /// One pass (a resync, which compares the whole kernel, if `resync`), and the writes it
    /// made.
    async fn pass_of(&mut self, resync: bool) -> Vec<Seen> {
        self.api.lock().unwrap().clear();
        tokio::time::timeout(Duration::from_secs(10), self.agent.pass(resync))
            .await
            .expect("the pass ended")
            .expect("the pass went through");
        // The Events the pass recorded are sent in the background: let them arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.api.lock().unwrap().clone()
    }
}

/// The report in the last write of this node's annotations.
fn report(writes: &[Seen]) -> NodeReport {
    let annotation = writes
        .iter()
        .rev()
        .filter(|w| w.method == Method::PATCH && w.path == "/api/v1/nodes/n1")
        .find_map(|w| w.body["metadata"]["annotations"][NODE_STATE_ANNOTATION].as_str())
        .expect("a report was published");
    NodeReport::parse(annotation).expect("a readable report")
}

fn of_kind(report: &NodeReport, kind: ProblemKind) -> Vec<&Problem> {
    report.problems.iter().filter(|p| p.kind == kind).collect()
}

fn kinds(report: &NodeReport) -> Vec<ProblemKind> {
    report.problems.iter().map(|p| p.kind).collect()
}

#[tokio::test]
async fn a_new_node_routes_its_peers_claims_a_block_and_serves_once_it_holds_one() {
    let mut node = Node::new();
    node.watches.node("n2", "10.99.0.11", true);
    node.watches.block("10.244.0.64/26", "n2");

    let writes = node.pass().await;
    // The peer's block over VXLAN, before anything is claimed.
    assert_eq!(node.kernel.dsts(), ["10.244.0.64/26"]);
    let vxlan = node.kernel.link(VXLAN_DEVICE).expect("the VXLAN device");
    assert!(vxlan.up);
    assert_eq!(node.kernel.state().fdb.len(), 1);
    let claim = writes
        .iter()
        .find(|w| w.method == Method::POST && w.path.ends_with("/ipblocks"))
        .expect("a block claimed");
    assert_eq!(claim.body["spec"]["node"], "n1");
    assert_eq!(claim.body["spec"]["pool"], "p");
    assert_eq!(
        std::fs::read_to_string(node.agent.settings.sysctl_dir.join("net/ipv4/ip_forward"))
            .unwrap()
            .trim(),
        "1",
        "forwarding turned on"
    );
    let rp_filter = |device: &str| {
        let key = format!("net/ipv4/conf/{device}/rp_filter");
        std::fs::read_to_string(node.agent.settings.sysctl_dir.join(key)).unwrap()
    };
    assert_eq!(
        rp_filter(VXLAN_DEVICE).trim(),
        "2",
        "strict filtering loosened on the tunnel"
    );
    assert_eq!(rp_filter("all").trim(), "1", "conf/all is never touched");
    let first = report(&writes);
    assert!(!first.ready, "no block of its own yet: no pod could start");
    assert!(
        !node.dir.path().join("net.d").exists(),
        "no conflist before the node can serve"
    );

    // The claim comes back through the watch: the node serves.
    let cidr = claim.body["spec"]["cidr"].as_str().unwrap().to_string();
    node.watches.block(&cidr, "n1");
    let writes = node.pass().await;
    let served = report(&writes);
    assert!(served.ready, "{served:?}");
    assert!(served.problems.is_empty(), "{:?}", served.problems);
    let state = std::fs::read_to_string(node.dir.path().join("state/node.json")).unwrap();
    assert!(state.contains(&cidr), "{state}");
    assert!(node.dir.path().join("net.d").read_dir().unwrap().count() > 0);
    assert!(
        writes
            .iter()
            .any(|w| w.path == "/api/v1/nodes/n1/status" && w.method == Method::PATCH),
        "NetworkUnavailable cleared: {writes:#?}"
    );
    // Its tunnel address comes from its own block.
    let own: Cidr = cidr.parse().unwrap();
    assert!(
        node.kernel
            .addresses_of(VXLAN_DEVICE)
            .iter()
            .any(|(ip, _)| own.contains(*ip)),
        "{:?}",
        node.kernel.addresses_of(VXLAN_DEVICE)
    );
}

#[tokio::test]
async fn a_peer_route_the_kernel_refuses_is_reported_and_the_node_serves_all_the_same() {
    let mut node = Node::new();
    node.watches.node("n2", "10.99.0.11", true);
    node.watches.node("n3", "10.99.0.12", true);
    node.watches.block("10.244.0.64/26", "n2");
    node.watches.block("10.244.0.128/26", "n3");
    node.watches.block("10.244.0.0/26", "n1");
    node.kernel
        .state()
        .refuse
        .insert("10.244.0.64".parse().unwrap());

    let writes = node.pass().await;
    assert_eq!(node.kernel.dsts(), ["10.244.0.128/26"], "n3 is routed");
    let first = report(&writes);
    assert!(first.ready, "{first:?}");
    assert_eq!(kinds(&first), [ProblemKind::PeersIncomplete]);
    assert!(
        first.problems[0].message.contains("10.244.0.64/26"),
        "{:?}",
        first.problems
    );

    // The kernel takes it at the next pass (a resync compares the whole kernel).
    node.kernel.state().refuse.clear();
    let writes = node.pass().await;
    assert_eq!(node.kernel.dsts(), ["10.244.0.128/26", "10.244.0.64/26"]);
    assert!(kinds(&report(&writes)).is_empty());
}

#[tokio::test]
async fn a_pool_that_cannot_be_claimed_from_or_used_leaves_the_others_alone() {
    let mut node = Node::new();
    node.watches.pool("q", "10.245.0.0/16", "VXLAN", 1);
    // Not judged by the operator yet: hands out nothing.
    let unjudged: IPPool = serde_json::from_value(json!({
        "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "r", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"cidr": "10.246.0.0/16", "mode": "VXLAN"},
    }))
    .unwrap();
    node.watches
        .pools
        .apply_watcher_event(&watcher::Event::Apply(unjudged));
    node.watches.changes.pools.bump();
    node.refusals.lock().unwrap().push(Box::new(|w| {
        w.method == Method::POST && w.body["spec"]["pool"] == "q"
    }));

    let writes = node.pass().await;
    let claimed: Vec<&str> = writes
        .iter()
        .filter(|w| w.method == Method::POST && w.path.ends_with("/ipblocks"))
        .filter_map(|w| w.body["spec"]["pool"].as_str())
        .collect();
    assert!(
        claimed.contains(&"p") && claimed.contains(&"q"),
        "{claimed:?}"
    );
    assert!(
        !claimed.contains(&"r"),
        "an unjudged pool is not claimed from"
    );
    let report = report(&writes);
    let failed = of_kind(&report, ProblemKind::BlockClaimFailed);
    assert_eq!(failed.len(), 1, "{:?}", report.problems);
    assert!(failed[0].message.starts_with("pool q:"), "{failed:?}");
    let state: NodeState = serde_json::from_str(
        &std::fs::read_to_string(node.dir.path().join("state/node.json")).unwrap(),
    )
    .unwrap();
    let disabled: Vec<(&str, bool)> = state
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.disabled))
        .collect();
    assert_eq!(disabled, [("p", false), ("q", false), ("r", true)]);
}

#[tokio::test]
async fn empty_blocks_go_back_each_on_its_own() {
    let mut node = Node::new();
    node.agent.settings.block_release_grace = Duration::ZERO;
    for cidr in ["10.244.0.0/26", "10.244.0.64/26", "10.244.0.128/26"] {
        node.watches.block(cidr, "n1");
    }
    let first = IPBlock::name_for(&"10.244.0.0/26".parse().unwrap());
    let refused = first.clone();
    node.refusals.lock().unwrap().push(Box::new(move |w| {
        w.method == Method::DELETE && w.path.ends_with(&format!("/ipblocks/{refused}"))
    }));

    let writes = node.pass().await;
    let deleted: Vec<String> = writes
        .iter()
        .filter(|w| w.method == Method::DELETE)
        .filter_map(|w| w.path.rsplit('/').next().map(String::from))
        .collect();
    assert_eq!(
        deleted.len(),
        2,
        "one kept for the pool's free addresses: {deleted:?}"
    );
    assert_eq!(
        deleted[0], first,
        "the refused one, and the next one all the same"
    );
    let report = report(&writes);
    let failed = of_kind(&report, ProblemKind::BlockReleaseFailed);
    assert_eq!(failed.len(), 1, "{:?}", report.problems);
    assert!(
        failed[0].message.starts_with("block 10.244.0.0/26:"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn editing_a_pools_mode_moves_its_peers_routes_over() {
    let mut node = Node::new();
    node.watches.pool("p", "10.244.0.0/16", "Routed", 1);
    node.watches.node("n2", "10.99.0.11", true);
    node.watches.block("10.244.0.64/26", "n2");
    node.watches.block("10.244.0.0/26", "n1");
    let route = |kernel: &FakeKernel| {
        let st = kernel.state();
        let r = st.routes.iter().find(|r| r.prefix == 26).cloned();
        r.map(|r| (r.gateway, r.oif, r.onlink))
    };

    node.pass().await;
    let eth0: IpAddr = "10.99.0.11".parse().unwrap();
    assert_eq!(route(&node.kernel), Some((Some(eth0), Some(2), false)));
    assert!(node.kernel.state().fdb.is_empty());

    node.watches.pool("p", "10.244.0.0/16", "VXLAN", 2);
    let writes = node.pass().await;
    let vxlan = node.kernel.link(VXLAN_DEVICE).unwrap().index;
    assert_eq!(
        route(&node.kernel),
        Some((Some(eth0), Some(vxlan), true)),
        "through the tunnel, to the peer's VTEP"
    );
    let st = node.kernel.state();
    assert_eq!(st.fdb.values().collect::<Vec<_>>(), [&eth0]);
    assert_eq!(
        st.neighbors.get(&eth0),
        Some(&sinew_node_lib::consts::vtep_mac("n2"))
    );
    drop(st);
    assert_eq!(
        report(&writes).modes.get("p"),
        Some(&PoolMode::Vxlan),
        "the report says which mode runs"
    );
}

#[tokio::test]
async fn between_resyncs_a_pass_writes_what_changed_and_a_route_someone_removed_comes_back() {
    let mut node = Node::new();
    node.watches.node("n2", "10.99.0.11", true);
    node.watches.block("10.244.0.64/26", "n2");
    node.watches.block("10.244.0.0/26", "n1");
    node.pass().await;
    assert_eq!(node.kernel.dsts(), ["10.244.0.64/26"]);
    let watched = node.agent.node_watch.as_ref().unwrap().watched();
    assert_eq!(
        watched.conf_dir.as_deref(),
        Some(node.dir.path().join("net.d").as_path()),
        "the conflist's directory is watched for foreign files"
    );
    assert!(
        watched
            .settings
            .iter()
            .any(|(path, value)| path.ends_with("net/ipv4/ip_forward") && value == "1"),
        "forwarding is watched: {watched:?}"
    );
    let cost = |kernel: &FakeKernel| {
        let mut st = kernel.state();
        let cost = (st.route_dumps, st.route_writes);
        (st.route_dumps, st.route_writes) = (0, 0);
        cost
    };
    cost(&node.kernel);

    // Nothing changed: the kernel is neither read nor written.
    node.pass().await;
    assert_eq!(cost(&node.kernel), (0, 0));

    // A peer's new block: one route written, none read.
    node.watches.node("n3", "10.99.0.12", true);
    node.watches.block("10.244.0.128/26", "n3");
    node.pass().await;
    assert_eq!(node.kernel.dsts(), ["10.244.0.128/26", "10.244.0.64/26"]);
    assert_eq!(cost(&node.kernel), (0, 1));

    // Someone else deletes a route: once the node watch says so, the pass compares the
    // whole kernel and puts it back.
    node.kernel
        .state()
        .routes
        .retain(|r| r.dst.to_string() != "10.244.0.64");
    node.agent
        .node_watch
        .as_ref()
        .unwrap()
        .kernel_changed_by_others();
    node.pass().await;
    assert_eq!(node.kernel.dsts(), ["10.244.0.128/26", "10.244.0.64/26"]);
    let (dumps, writes) = cost(&node.kernel);
    assert!(dumps > 0, "the whole kernel read");
    assert_eq!(writes, 1, "only the missing route written");

    // And at each resync, whatever the watch says (a change it could not see).
    node.kernel.state().routes.clear();
    node.pass_of(true).await;
    assert_eq!(node.kernel.dsts(), ["10.244.0.128/26", "10.244.0.64/26"]);
}

/// The node state the plugin reads.
fn node_json(node: &Node) -> NodeState {
    serde_json::from_str(&std::fs::read_to_string(node.dir.path().join("state/node.json")).unwrap())
        .unwrap()
}

/// Gives pod `uid` an address of pool `p` as the plugin's ADD does (from `node.json`), on
/// host veth `veth`; returns the address and its slot generation.
fn add_pod(node: &Node, uid: &str, veth: &str) -> (IpAddr, u64) {
    add_pod_of(node, "p", uid, veth)
}

/// [`add_pod`], from pool `pool`.
fn add_pod_of(node: &Node, pool: &str, uid: &str, veth: &str) -> (IpAddr, u64) {
    let state = node_json(node);
    let pool = state.pools.iter().find(|p| p.name == pool).unwrap();
    let key = sinew_node_lib::ipam::AttachmentKey::new(&format!("ctr-{uid}"), "eth0");
    node.agent
        .store()
        .update(|st| {
            let held = st.allocate(pool, &key).unwrap();
            let at = (held.ip, held.generation);
            st.insert_attachment(sinew_node_lib::ipam::Attachment {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                netns: None,
                host_veth: veth.into(),
                mtu: 1450,
                addresses: vec![held],
                pod_namespace: Some("default".into()),
                pod_name: Some(uid.into()),
                pod_uid: Some(uid.into()),
                network: None,
                port_mappings: Vec::new(),
            });
            at
        })
        .unwrap()
}

#[tokio::test]
async fn a_release_request_frees_only_an_address_whose_pod_is_gone_from_this_node() {
    let mut node = Node::new();
    node.watches.block("10.244.0.0/26", "n1");
    node.pass().await;
    let (gone, gone_at) = add_pod(&node, "gone", "vethgone");
    let (alive, alive_at) = add_pod(&node, "alive", "vethalive");
    let (moved, moved_at) = add_pod(&node, "moved", "vethmoved");
    // The alive pod's sandbox still runs here: its host veth is in the kernel.
    node.kernel.state().links.push(Link {
        index: 40,
        name: "vethalive".into(),
        mac: None,
        mtu: 1450,
        up: true,
        kind: Some("veth".into()),
        vxlan: None,
    });
    let request = |ip: IpAddr, generation: u64, uid: &str| {
        json!({"ip": ip.to_string(), "generation": generation, "podUid": uid,
               "pod": format!("default/{uid}"), "missingSince": "2026-01-01T00:00:00Z"})
    };
    // The operator asks for all three; the third names an older use of its address.
    let requests = json!([
        request(gone, gone_at, "gone"),
        request(alive, alive_at, "alive"),
        request(moved, moved_at - 1, "moved"),
    ]);
    node.watches.block_with(
        "p",
        "10.244.0.0/26",
        "n1",
        json!({sinew_crds::RELEASE_ANNOTATION: requests.to_string()}),
    );

    let writes = node.pass().await;
    let held: Vec<IpAddr> = node
        .agent
        .store()
        .snapshot()
        .unwrap()
        .attachments
        .values()
        .flat_map(|a| a.addresses.iter().map(|h| h.ip))
        .collect();
    assert!(
        !held.contains(&gone),
        "the pod is gone: its address is freed"
    );
    assert!(held.contains(&alive), "its sandbox runs here: kept");
    assert!(held.contains(&moved), "another use of the address: kept");
    let kept_events: Vec<&Seen> = writes
        .iter()
        .filter(|w| w.method == Method::POST && w.path.ends_with("/events"))
        .filter(|w| w.body["reason"] == "LeakedAddressKept")
        .collect();
    assert_eq!(
        kept_events.len(),
        1,
        "said once, of the alive pod: {writes:#?}"
    );
    assert!(
        kept_events[0].body["note"]
            .as_str()
            .unwrap()
            .contains(&alive.to_string())
    );
}

#[tokio::test]
async fn a_node_whose_forwarding_cannot_be_turned_on_serves_no_pod() {
    let mut node = Node::new();
    node.watches.block("10.244.0.0/26", "n1");
    // A kernel setting the agent cannot write (here: not a file at all).
    let forward = node.agent.settings.sysctl_dir.join("net/ipv4/ip_forward");
    std::fs::remove_file(&forward).unwrap();
    std::fs::create_dir(&forward).unwrap();

    let writes = node.pass().await;
    let blocked = report(&writes);
    assert!(!blocked.ready, "{blocked:?}");
    assert_eq!(of_kind(&blocked, ProblemKind::ForwardingOff).len(), 1);
    assert!(
        !node.dir.path().join("net.d").exists(),
        "no conflist: the runtime starts no pod on this network"
    );

    // Writable again (say, a hardening agent stopped): the next pass serves.
    std::fs::remove_dir(&forward).unwrap();
    std::fs::write(&forward, "0\n").unwrap();
    let served = report(&node.pass().await);
    assert!(served.ready, "{served:?}");
    assert_eq!(std::fs::read_to_string(&forward).unwrap().trim(), "1");
}

#[tokio::test]
async fn a_deleted_network_is_cleaned_off_the_node_once_its_pods_are_gone() {
    let mut node = Node::new();
    node.watches.node("n2", "10.99.0.11", true);
    node.watches.block("10.244.0.64/26", "n2");
    node.watches.block("10.244.0.0/26", "n1");
    assert!(report(&node.pass().await).ready);
    let conflist = node.dir.path().join("net.d/10-sinew.conflist");
    let plugin = node.dir.path().join("bin/sinew");
    assert!(conflist.exists() && plugin.exists());
    assert!(node.kernel.state().nat.is_some());
    // NetworkPolicy's table, as its loop left it.
    let policy = node.kernel.state().nat.clone();
    node.kernel.state().policy = policy;
    add_pod(&node, "web", "vethweb");

    node.watches.delete_network();
    let writes = node.pass().await;
    let waiting = report(&writes);
    assert_eq!(
        of_kind(&waiting, ProblemKind::CleanUpWaiting).len(),
        1,
        "{waiting:?}"
    );
    assert!(!waiting.cleaned_up);
    let state: NodeState = serde_json::from_str(
        &std::fs::read_to_string(node.dir.path().join("state/node.json")).unwrap(),
    )
    .unwrap();
    assert!(
        state.pools.iter().all(|p| p.disabled),
        "no new pod gets an address"
    );
    assert!(
        conflist.exists() && plugin.exists(),
        "the running pod's DEL still finds the plugin"
    );
    assert_eq!(
        node.kernel.dsts(),
        ["10.244.0.64/26"],
        "its traffic still flows"
    );
    assert!(node.kernel.link(VXLAN_DEVICE).is_some());

    // Said once while nothing changes.
    let again = node.pass().await;
    assert!(
        !again.iter().any(|w| w.path == "/api/v1/nodes/n1"),
        "{again:#?}"
    );

    // The pod's DEL frees its address: everything sinew put on the node goes.
    let key = sinew_node_lib::ipam::AttachmentKey::new("ctr-web", "eth0");
    node.agent
        .store()
        .update(|st| st.remove_attachment(&key))
        .unwrap();
    let writes = node.pass().await;
    assert!(report(&writes).cleaned_up);
    assert!(!conflist.exists() && !plugin.exists());
    assert!(node.kernel.dsts().is_empty());
    assert!(node.kernel.link(VXLAN_DEVICE).is_none());
    let st = node.kernel.state();
    assert!(st.nat.is_none() && st.policy.is_none(), "both tables gone");
}

/// Waits (up to 10 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "waited 10 s for {what}");
}

#[tokio::test]
async fn with_network_policy_a_node_serves_only_once_its_policy_table_is_in() {
    let mut node = Node::new().with_policy_loop();
    {
        let mut lists = node.lists.lock().unwrap();
        lists.insert(
            "/api/v1/namespaces".into(),
            vec![
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": {"name": "default"}}),
            ],
        );
        lists.insert(
            "/api/v1/pods".into(),
            vec![json!({"metadata": {"name": "web", "namespace": "default",
                                     "labels": {"app": "web"}},
                        "spec": {"nodeName": "n1", "containers": []},
                        "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.9"}]}})],
        );
        lists.insert(
            "/apis/networking.k8s.io/v1/networkpolicies".into(),
            vec![json!({"metadata": {"name": "deny", "namespace": "default"},
                        "spec": {"podSelector": {"matchLabels": {"app": "web"}}}})],
        );
    }
    node.kernel.state().refuse_policy = true;
    node.watches.network("Enabled");
    node.watches.block("10.244.0.0/26", "n1");
    let conflist = node.dir.path().join("net.d/10-sinew.conflist");

    let first = report(&node.pass().await);
    assert!(!first.ready, "{first:?}");
    assert!(!conflist.exists(), "no pod starts unpoliced");
    add_pod(&node, "web", "vethweb");
    let policy = &node.agent.policy;
    until("the loop to report its failure", || {
        policy
            .report()
            .1
            .iter()
            .any(|p| p.kind == ProblemKind::PolicyFailed)
    })
    .await;
    let refused = report(&node.pass().await);
    assert!(!refused.ready);
    assert_eq!(of_kind(&refused, ProblemKind::PolicyFailed).len(), 1);
    assert!(!conflist.exists());

    // The kernel takes the table: the pod's interface is policed, the node serves.
    node.kernel.state().refuse_policy = false;
    let kernel = node.kernel.clone();
    until("the table with the pod's interface", || {
        kernel
            .state()
            .policy
            .as_ref()
            .is_some_and(|t| sinew_node_lib::nft::text::table(t).contains("\"vethweb\""))
    })
    .await;
    let serving = report(&node.pass().await);
    assert!(serving.ready, "{serving:?}");
    assert!(conflist.exists());
    let policed = serving
        .policy
        .clone()
        .expect("the report says what policy does");
    assert!(policed.programmed);
    assert_eq!(policed.classes, 1);
    assert!(of_kind(&serving, ProblemKind::PolicyFailed).is_empty());

    // Policy turned off: the table goes.
    node.watches.network("Disabled");
    let off = report(&node.pass().await);
    assert_eq!(off.policy, None);
    until("the table removed", || kernel.state().policy.is_none()).await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_or_drops_full_size_packets_is_reported_until_it_recovers() {
    let mut node = Node::new();
    node.watches.pool("p", "10.244.0.0/16", "Routed", 1);
    node.watches.block("10.244.0.0/26", "n1");
    // The peer reports its underlay MTU and its tunnel address (from its block).
    node.watches.node_reporting(
        "n2",
        "10.99.0.11",
        true,
        Some(json!({"underlayMtu": 1500, "tunnel": ["10.244.0.65"]})),
    );
    node.watches.block("10.244.0.64/26", "n2");
    let first = report(&node.pass().await);
    assert!(first.ready, "{first:?}");
    let mesh = node.agent.mesh.clone().unwrap();
    let targets = mesh.targets();
    assert_eq!(targets.len(), 1, "{targets:?}");
    let own = first.tunnel[0];
    assert!(
        "10.244.0.0/26".parse::<Cidr>().unwrap().contains(own),
        "{own}"
    );
    assert_eq!(
        targets[0].pod_addresses,
        Some((own, "10.244.0.65".parse().unwrap())),
        "a routed path is probed with pods' addresses, as an underlay sees pods' packets"
    );
    assert_eq!(targets[0].mtu, 1500, "at the pod MTU of a routed pool");

    let unreachable = |node: &Node| {
        let r = report(&node.api.lock().unwrap());
        of_kind(&r, ProblemKind::PeerUnreachable).len()
    };
    // One lost round is not a problem; two are.
    assert!(!mesh.round_answered(|_, _| false));
    node.pass().await;
    assert_eq!(unreachable(&node), 0);
    assert!(mesh.round_answered(|_, _| false));
    node.pass().await;
    assert_eq!(unreachable(&node), 1);

    // It answers, but not at full size: an MTU problem, not an unreachable peer.
    mesh.round_answered(|_, size| size < 1500);
    mesh.round_answered(|_, size| size < 1500);
    let mtu = report(&node.pass().await);
    assert_eq!(of_kind(&mtu, ProblemKind::PeerUnreachable).len(), 0);
    assert_eq!(of_kind(&mtu, ProblemKind::MtuMismatch).len(), 1, "{mtu:?}");

    mesh.round_answered(|_, _| true);
    let fine = report(&node.pass().await);
    assert!(
        !kinds(&fine)
            .iter()
            .any(|k| matches!(k, ProblemKind::PeerUnreachable | ProblemKind::MtuMismatch)),
        "{fine:?}"
    );
}

#[tokio::test]
async fn a_deleted_pool_is_reported_drained_once_no_pod_can_get_its_addresses() {
    let mut node = Node::new();
    node.watches.pool("q", "10.245.0.0/16", "VXLAN", 1);
    node.watches.block("10.244.0.0/26", "n1");
    node.watches.block_of("q", "10.245.0.0/26", "n1");
    assert!(report(&node.pass().await).ready);
    assert!(
        node_json(&node)
            .pools
            .iter()
            .any(|p| p.name == "q" && !p.disabled)
    );
    let (held, _) = add_pod_of(&node, "q", "web", "vethweb");

    node.watches.delete_pool("q", "10.245.0.0/16");
    let writes = node.pass().await;
    let drained = report(&writes);
    assert_eq!(drained.drained, ["q"], "{drained:?}");
    assert!(
        !node_json(&node)
            .pools
            .iter()
            .any(|p| p.name == "q" && !p.disabled),
        "no ADD is offered the pool any more"
    );
    let store = node.agent.store().snapshot().unwrap();
    assert!(
        store.retired.contains("10.245.0.0/26"),
        "no ADD in flight can allocate from it: {:?}",
        store.retired
    );
    // The block's usage, with the pod still holding its address, is written before the
    // report that lets the operator delete the block.
    let usage = writes
        .iter()
        .position(|w| {
            w.path.contains("/ipblockusages/")
                && w.path.ends_with("/status")
                && w.body.to_string().contains(&held.to_string())
        })
        .expect("the block's usage written");
    let reported = writes
        .iter()
        .rposition(|w| w.path == "/api/v1/nodes/n1")
        .unwrap();
    assert!(usage < reported);
    assert!(drained.ready, "pool p still serves");
}
