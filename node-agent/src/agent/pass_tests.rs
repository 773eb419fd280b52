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

/// An API server that answers every write with what was written (reads: 404) and keeps
/// what it received.
fn api_server() -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, reply) = match parts.method {
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
                    let mut reply = body.clone();
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
            log.lock().unwrap().push(Seen {
                method: parts.method,
                path: parts.uri.path().to_string(),
                body,
            });
            respond.send_response(
                Response::builder()
                    .status(code)
                    .header(::http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (client_of(service), seen)
}

fn client_of(service: tower_test::mock::Mock<Request<Body>, Response<Body>>) -> kube::Client {
    kube::Client::new(service, "default")
}

/// The caches' writers: what the watches would deliver, the test delivers.
struct Watches {
    nodes: Writer<NodeFacts>,
    blocks: Writer<IPBlock>,
    changes: StoreChanges,
}

impl Watches {
    fn node(&mut self, name: &str, ip: &str, vtep: bool) {
        let mut annotations = serde_json::Map::new();
        if vtep {
            annotations.insert(
                VTEP_MAC_ANNOTATION.into(),
                json!(mac_string(sinew_node_lib::consts::vtep_mac(name))),
            );
        }
        let node: NodeFacts = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
        .unwrap();
        self.nodes.apply_watcher_event(&watcher::Event::Apply(node));
        self.changes.nodes.bump();
    }

    fn block(&mut self, cidr: &str, node: &str) {
        let block: IPBlock = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
            "metadata": {"name": IPBlock::name_for(&cidr.parse().unwrap()),
                         "uid": format!("uid-{cidr}")},
            "spec": {"pool": "p", "cidr": cidr, "node": node},
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
    watches: Watches,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        for (key, value) in [
            ("net/ipv4/ip_forward", "0"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
            ("net/ipv4/conf/eth0/rp_filter", "0"),
            ("net/ipv4/conf/sinew.1/rp_filter", "0"),
        ] {
            let path = sys.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{value}\n")).unwrap();
        }
        std::fs::write(dir.path().join("sinew"), b"the plugin").unwrap();
        let settings = Settings {
            node_name: "n1".into(),
            conf_dir_override: Some(dir.path().join("net.d")),
            bin_dir_override: Some(dir.path().join("bin")),
            state_dir: dir.path().join("state"),
            log_file: dir.path().join("cni.log"),
            plugin_source: dir.path().join("sinew"),
            min_free: 4,
            peer_selector: None,
            block_release_grace: Duration::from_secs(300),
            resync: Duration::from_secs(10),
            metrics_addr: ListenAddr::Off,
            probe_addr: None,
            sysctl_dir: sys,
            stall_after: Duration::from_secs(120),
            dangling_grace: Duration::from_secs(60),
        };
        std::fs::create_dir_all(&settings.state_dir).unwrap();
        let (client, api) = api_server();
        let (nodes, node_writer) = reflector::store();
        let (pools, mut pool_writer) = reflector::store();
        let (blocks, block_writer) = reflector::store();
        let (networks, mut network_writer) = reflector::store();
        let (namespaces, _) = reflector::store();
        let network: ClusterNetwork = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork",
            "metadata": {"name": CLUSTER_NETWORK_NAME, "generation": 1},
            "spec": {"networkPolicy": "Disabled"},
        }))
        .unwrap();
        network_writer.apply_watcher_event(&watcher::Event::Apply(network));
        let pool: IPPool = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "p", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"cidr": "10.244.0.0/16", "mode": "VXLAN"},
            "status": {"observedGeneration": 1},
        }))
        .unwrap();
        pool_writer.apply_watcher_event(&watcher::Event::Apply(pool));
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
            api: ApiWriter::new(client, &settings.node_name),
            settings,
            memory: PassMemory::default(),
            notify: Arc::new(Notify::new()),
            metrics,
            mesh: None,
            node_watch: None,
            policy: Policy::without_loop(),
            local: Arc::new(Notify::new()),
            kernel: Arc::new(move || Ok(Box::new(opened.clone()) as Box<dyn Kernel>)),
        };
        let mut watches = Watches {
            nodes: node_writer,
            blocks: block_writer,
            changes,
        };
        watches.node("n1", "10.99.0.10", false);
        Node {
            agent,
            kernel,
            api,
            watches,
            dir,
        }
    }

    /// One pass, and the writes it made.
    async fn pass(&mut self) -> Vec<Seen> {
        self.api.lock().unwrap().clear();
        tokio::time::timeout(Duration::from_secs(10), self.agent.pass(false))
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
