//! The local cluster: nodes as network namespaces on a private underlay, each with a real
//! `sinew-node` agent talking to the real control plane, and pods as network namespaces
//! attached through a [`PodNetworker`] (upstream `cnitool` by default).
//!
//! Underlay: one "fabric" namespace holds two bridges, `br0` (10.99.0.0/24) and `br1`
//! (10.99.1.0/24), and routes between them (it has .254 on each), so nodes on different
//! subnets are a real L3 hop apart (`Auto` and cross-subnet cases). Each node gets `eth0` with
//! its address and a default route via its subnet's .254. All addresses live only inside
//! these namespaces.
//!
//! The agents reach the API server through a loopback forwarder inside each node namespace
//! (127.0.0.1:<port> there -> 127.0.0.1:<port> on the host), so the product code runs
//! unchanged with an ordinary kubeconfig.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sinew_node_lib::netlink::Netlink;
use sinew_node_lib::netns::NetNs;

use crate::ControlPlane;
use crate::netsim::{self, in_netns};
use crate::plugin::{Cnitool, REFERENCE_PLUGIN_DIR, Run};
use crate::process::Supervised;

/// Forwards TCP connections from 127.0.0.1:`port` inside a namespace to 127.0.0.1:`port` on
/// the host, counting the bytes that go in (what the namespace's clients receive). Stops on
/// drop.
pub struct LoopbackForwarder {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl LoopbackForwarder {
    pub fn start(ns: &NetNs, port: u16) -> std::io::Result<LoopbackForwarder> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let listener = ns
            .run_in(|| TcpListener::bind(addr))
            .map_err(std::io::Error::other)??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), received.clone());
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        if let Ok(outside) = TcpStream::connect(addr) {
                            splice(inside, outside, &count);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(LoopbackForwarder {
            stop,
            received,
            handle: Some(handle),
        })
    }

    /// Bytes forwarded into the namespace so far (TLS records: responses and watch events).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Copies `inside` <-> `outside` until either side closes; what comes from `outside` is
/// added to `received`.
fn splice(inside: TcpStream, outside: TcpStream, received: &Arc<AtomicU64>) {
    let (Ok(inside2), Ok(outside2)) = (inside.try_clone(), outside.try_clone()) else {
        return;
    };
    let pipe = |mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>| {
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if let Some(c) = &count {
                            c.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    pipe(inside, outside2, None);
    pipe(outside, inside2, Some(received.clone()));
}

impl Drop for LoopbackForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Port of each agent's `/metrics`, `/healthz`, `/readyz` inside its node namespace.
pub const AGENT_METRICS_PORT: u16 = 9465;

/// Port of each agent's probe listener (`/healthz`, `/readyz`; its default) inside its node
/// namespace.
pub const AGENT_PROBE_PORT: u16 = 9464;

/// `GET path` on the agent of `node` (from inside its namespace); (status line, body).
pub fn agent_http(node: &SimNode, path: &str) -> Result<(String, String), String> {
    agent_http_at(node, AGENT_METRICS_PORT, path, Duration::from_secs(2))
}

/// `GET path` on `port` of the agent of `node`, answered within `within`; (status line, body).
pub fn agent_http_at(
    node: &SimNode,
    port: u16,
    path: &str,
    within: Duration,
) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    node.ns
        .run_in(|| -> Result<(String, String), String> {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let mut s = TcpStream::connect_timeout(&addr, within).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(within))
                .map_err(|e| e.to_string())?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .map_err(|e| e.to_string())?;
            let mut text = String::new();
            s.read_to_string(&mut text).map_err(|e| e.to_string())?;
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            Ok((
                head.lines().next().unwrap_or_default().to_string(),
                body.to_string(),
            ))
        })
        .map_err(|e| e.to_string())?
}

/// One simulated node.
pub struct SimNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ns: NetNs,
    pub dir: PathBuf,
    agent: Option<Supervised>,
    forwarder: LoopbackForwarder,
}

impl SimNode {
    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<i32> {
        self.agent.as_ref().map(|a| a.pid())
    }
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// Bytes the node's clients (its agent) received from the API server so far.
    pub fn api_bytes_received(&self) -> u64 {
        self.forwarder.received()
    }
    pub fn agent_log(&self) -> String {
        self.agent
            .as_ref()
            .map(|a| a.log_tail(40))
            .unwrap_or_default()
    }
    pub fn netlink(&self) -> Netlink {
        Netlink::in_netns(&self.ns).expect("netlink in node namespace")
    }
}

/// A pod: a network namespace attached to a node's network.
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// UID of its `Pod` object (what the runtime passes the plugin).
    pub uid: String,
    pub node: String,
    pub ns: NetNs,
    pub result: Value,
}

impl Pod {
    /// The pod's addresses from its CNI result.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect()
    }

    pub fn ipv4(&self) -> IpAddr {
        self.ips()
            .into_iter()
            .find(IpAddr::is_ipv4)
            .expect("the pod has an IPv4 address")
    }
}

/// How pods get their network: another caller (containerd's CRI plugin, kubelet) can be added
/// beside `cnitool` by implementing this.
pub trait PodNetworker {
    fn add(&self, node: &SimNode, pod: &PodRef, pod_netns: &Path) -> Run;
    fn del(&self, node: &SimNode, pod: &PodRef, pod_netns: &Path) -> Run;
}

/// Namespace and name of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Attaches pods through upstream `cnitool` with the conflist and plugin the node's agent
/// installed (reference plugins from Debian on the path for chains).
pub struct CnitoolNetworker {
    pub bin: PathBuf,
}

impl CnitoolNetworker {
    fn tool(&self, node: &SimNode) -> Cnitool {
        Cnitool {
            bin: self.bin.clone(),
            conf_dir: node.conf_dir(),
            plugin_dirs: vec![node.bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
        }
    }
}

impl PodNetworker for CnitoolNetworker {
    fn add(&self, node: &SimNode, pod: &PodRef, pod_netns: &Path) -> Run {
        self.tool(node).run_for_pod(
            &node.ns,
            "add",
            "sinew",
            pod_netns,
            None,
            (&pod.namespace, &pod.name, &pod.uid),
        )
    }
    fn del(&self, node: &SimNode, pod: &PodRef, pod_netns: &Path) -> Run {
        self.tool(node).run_for_pod(
            &node.ns,
            "del",
            "sinew",
            pod_netns,
            None,
            (&pod.namespace, &pod.name, &pod.uid),
        )
    }
}

/// The whole local cluster. Dropping it stops the agents and removes every namespace.
pub struct LocalCluster {
    pub nodes: Vec<SimNode>,
    pub fabric: NetNs,
    pub networker: Box<dyn PodNetworker + Send + Sync>,
    pub client: kube::Client,
    api_port: u16,
    kubeconfig: PathBuf,
    /// Set when the agents run with the chart's identity (a node-bound `sinew-node` token).
    agent_identity: Option<crate::helm::Endpoint>,
    node_binary: PathBuf,
    plugin_binary: PathBuf,
    dir: tempfile::TempDir,
    prefix: String,
    /// The agents' `SINEW_RESYNC_SECONDS`.
    resync_seconds: u64,
    /// Nodes boot with strict reverse-path filtering (RHEL's default).
    strict_nodes: bool,
}

/// How the simulated nodes and their underlay are set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Every node starts with `rp_filter=1` (`all` and `default`), as RHEL boots them.
    pub strict_nodes: bool,
    /// The fabric drops every IPv4 packet whose source or destination is not a node address
    /// (10.99.0.0/16), bridged or routed, as a cloud VPC's source/destination check does.
    pub cloud_underlay: bool,
}

/// The cloud underlay's filter in the fabric namespace (test setup: the `nft` program).
const CLOUD_UNDERLAY: &str = "
table bridge sinew_test_vpc {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ether type ip ip saddr != 10.99.0.0/16 counter drop
    ether type ip ip daddr != 10.99.0.0/16 counter drop
  }
}
table ip sinew_test_vpc {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ip saddr != 10.99.0.0/16 counter drop
    ip daddr != 10.99.0.0/16 counter drop
  }
}
";

/// Label on every Node of one local cluster (`sinew.test/cluster=<prefix>`), for pools that
/// should serve only that cluster.
pub const CLUSTER_LABEL: &str = "sinew.test/cluster";

/// Address of node `i` on subnet `subnet` (0 or 1).
fn node_ip(subnet: u8, i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, subnet, 10 + i)
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("running a setup command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip` inside a namespace (setup only; the product itself never shells out).
fn ip_in(ns: &NetNs, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    in_netns(&mut cmd, ns);
    run_ok(&mut cmd);
}

impl LocalCluster {
    /// Builds the fabric and `subnets[i]`-placed nodes (`<prefix>-0`, `<prefix>-1`, …), creates their
    /// Node objects and starts one agent per node.
    pub async fn start(cp: &ControlPlane, prefix: &str, subnets: &[u8]) -> LocalCluster {
        LocalCluster::start_with(cp, prefix, subnets, false).await
    }

    /// [`LocalCluster::start`]; with `chart_identity` each agent runs with the identity the
    /// chart gives it (installed beforehand with `helm install`): a `sinew-node` token bound
    /// to an agent Pod object on its node, instead of the admin kubeconfig.
    pub async fn start_with(
        cp: &ControlPlane,
        prefix: &str,
        subnets: &[u8],
        chart_identity: bool,
    ) -> LocalCluster {
        LocalCluster::start_inner(cp, prefix, subnets, chart_identity, 2, Shape::default()).await
    }

    /// [`LocalCluster::start`] with nodes and an underlay shaped as `shape` says, from the
    /// moment each node boots (before its agent starts).
    pub async fn start_shaped(
        cp: &ControlPlane,
        prefix: &str,
        subnets: &[u8],
        shape: Shape,
    ) -> LocalCluster {
        LocalCluster::start_inner(cp, prefix, subnets, false, 2, shape).await
    }

    /// [`LocalCluster::start`] with agents at the product's default resync (10 s) instead of
    /// the tests' 2 s: whatever must happen sooner has to wake the agent itself.
    pub async fn start_default_resync(
        cp: &ControlPlane,
        prefix: &str,
        subnets: &[u8],
    ) -> LocalCluster {
        LocalCluster::start_inner(cp, prefix, subnets, false, 10, Shape::default()).await
    }

    async fn start_inner(
        cp: &ControlPlane,
        prefix: &str,
        subnets: &[u8],
        chart_identity: bool,
        resync_seconds: u64,
        shape: Shape,
    ) -> LocalCluster {
        let client = cp.client().await.expect("admin client");
        let dir = tempfile::Builder::new()
            .prefix("sinew-cluster-")
            .tempdir()
            .expect("cluster directory");
        let fabric = netsim::netns("fabric");
        netsim::sysctl(&fabric, "net.ipv4.ip_forward", "1");
        for (br, subnet) in [("br0", 0u8), ("br1", 1u8)] {
            ip_in(&fabric, &["link", "add", br, "type", "bridge"]);
            ip_in(
                &fabric,
                &["addr", "add", &format!("10.99.{subnet}.254/24"), "dev", br],
            );
            ip_in(&fabric, &["link", "set", br, "up"]);
        }
        if shape.cloud_underlay {
            let mut nft = Command::new("nft");
            nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
            in_netns(&mut nft, &fabric);
            let mut child = nft.spawn().expect("running nft");
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write as _;
                stdin
                    .write_all(CLOUD_UNDERLAY.as_bytes())
                    .expect("writing the cloud underlay's rules");
            }
            assert!(
                child.wait().expect("nft").success(),
                "the cloud underlay's rules were refused"
            );
        }
        let api_port = cp
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("API server port");
        // SINEW_NODE_BIN runs another build of the agent (e.g. the static musl binary the
        // image ships, for benchmarks).
        let node_binary = std::env::var_os("SINEW_NODE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::plugin::workspace_binary("sinew-node-agent", "sinew-node"));
        let plugin_binary = crate::plugin::sinew_binary();
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            fabric,
            networker: Box::new(CnitoolNetworker {
                bin: cp.tools().path("cnitool").expect("cnitool"),
            }),
            client,
            api_port,
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            agent_identity: None,
            node_binary,
            plugin_binary,
            dir,
            prefix: prefix.to_string(),
            resync_seconds,
            strict_nodes: shape.strict_nodes,
        };
        if chart_identity {
            cluster.agent_identity = Some(crate::helm::Endpoint::of(cp));
        }
        for (i, subnet) in subnets.iter().enumerate() {
            cluster.add_node(i as u8, *subnet).await;
        }
        cluster
    }

    /// Connects `ns` to the fabric bridge of `subnet` with a veth (`eth0` inside), addressed
    /// `ip`/24.
    fn attach(&self, ns: &NetNs, host_end: &str, subnet: u8, ip: Ipv4Addr) {
        let mut cmd = Command::new("ip");
        cmd.args([
            "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns",
        ])
        .arg(ns.path());
        in_netns(&mut cmd, &self.fabric);
        run_ok(&mut cmd);
        let bridge = if subnet == 0 { "br0" } else { "br1" };
        ip_in(
            &self.fabric,
            &["link", "set", host_end, "master", bridge, "up"],
        );
        ip_in(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ip_in(ns, &["link", "set", "eth0", "up"]);
    }

    /// Adds node `<prefix>-<i>` on `subnet` and starts its agent.
    pub async fn add_node(&mut self, i: u8, subnet: u8) {
        let name = format!("{}-{i}", self.prefix);
        let ip = node_ip(subnet, i);
        let ns = netsim::node_netns("node");
        let host_end = format!("u{}-{i}", std::process::id() % 100_000);
        self.attach(&ns, &host_end, subnet, ip);
        ip_in(
            &ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &format!("10.99.{subnet}.254"),
            ],
        );
        if self.strict_nodes {
            for key in [
                "net.ipv4.conf.all.rp_filter",
                "net.ipv4.conf.default.rp_filter",
            ] {
                netsim::sysctl(&ns, key, "1");
            }
        }
        let forwarder = LoopbackForwarder::start(&ns, self.api_port).expect("API forwarder");

        let nodes: Api<Node> = Api::all(self.client.clone());
        let params = PatchParams::apply("sinew-e2e").force();
        let object = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "topology.sinew.dev/subnet": subnet.to_string(),
                CLUSTER_LABEL: self.prefix,
            }},
        });
        nodes
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .expect("creating the Node");
        let status = json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}]},
        });
        nodes
            .patch_status(&name, &params, &Patch::Apply(&status))
            .await
            .expect("setting the Node address");

        let dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&dir).expect("node directory");
        if let Some(api) = &self.agent_identity {
            crate::helm::agent_kubeconfig(api, &self.client, &name, &dir.join("agent.kubeconfig"))
                .await
                .expect("the agent's service-account identity");
        }
        let mut node = SimNode {
            name,
            ip,
            ns,
            dir,
            agent: None,
            forwarder,
        };
        self.start_agent(&mut node);
        self.nodes.push(node);
    }

    fn start_agent(&self, node: &mut SimNode) {
        let mut cmd = Command::new(&self.node_binary);
        cmd.arg("run")
            .env("NODE_NAME", &node.name)
            .env(
                "KUBECONFIG",
                if self.agent_identity.is_some() {
                    node.dir.join("agent.kubeconfig")
                } else {
                    self.kubeconfig.clone()
                },
            )
            .env("SINEW_CNI_CONF_DIR", node.conf_dir())
            .env("SINEW_CNI_BIN_DIR", node.bin_dir())
            .env("SINEW_STATE_DIR", node.state_dir())
            .env("SINEW_CNI_LOG_FILE", node.dir.join("cni.log"))
            .env("SINEW_PLUGIN", &self.plugin_binary)
            .env("SINEW_MIN_FREE", "4")
            // Several simulated clusters share the API server: each is its own network.
            .env(
                "SINEW_PEER_SELECTOR",
                format!("{CLUSTER_LABEL}={}", self.prefix),
            )
            .env("SINEW_BLOCK_RELEASE_SECONDS", "2")
            .env("SINEW_RESYNC_SECONDS", self.resync_seconds.to_string())
            .env(
                "SINEW_METRICS_ADDR",
                format!("127.0.0.1:{AGENT_METRICS_PORT}"),
            )
            .env("SINEW_LOG", "info");
        in_netns(&mut cmd, &node.ns);
        node.agent = Some(
            Supervised::spawn(
                &format!("agent {}", node.name),
                cmd,
                &node.dir.join("agent.log"),
            )
            .expect("starting sinew-node"),
        );
    }

    /// A host outside the cluster on `subnet` of the underlay (address 10.99.<subnet>.200),
    /// for `natOutgoing`: it knows no route to any pod.
    pub fn outside_host(&self, subnet: u8) -> (NetNs, IpAddr) {
        let ns = netsim::netns("outside");
        let host_end = format!("o{}-{subnet}", std::process::id() % 100_000);
        let ip = Ipv4Addr::new(10, 99, subnet, 200);
        self.attach(&ns, &host_end, subnet, ip);
        (ns, IpAddr::V4(ip))
    }

    /// Stops a node's agent (its kernel state stays, as after a crash or an upgrade).
    pub fn stop_agent(&mut self, i: usize) {
        self.nodes[i].agent = None;
    }

    /// Restarts a node's agent.
    pub fn restart_agent(&mut self, i: usize) {
        let mut node = self.nodes.remove(i);
        self.start_agent(&mut node);
        self.nodes.insert(i, node);
    }

    /// Name of node `i`.
    pub fn name(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    pub fn node(&self, name: &str) -> &SimNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Waits until every node's agent has written its conflist (the node serves pods).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing: Vec<&str> = self
                .nodes
                .iter()
                .filter(|n| !n.conf_dir().join("10-sinew.conflist").exists())
                .map(|n| n.name.as_str())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: String = missing
                    .iter()
                    .map(|m| format!("\n--- agent {m} ---\n{}", self.node(m).agent_log()))
                    .collect();
                return Err(format!(
                    "nodes not ready after {timeout:?}: {missing:?}{logs}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts pod `default/<name>` on `node`; panics with the plugin's words if it fails.
    /// Creates the `Pod` object (scheduled to `node`, as the scheduler would) and returns its UID.
    pub async fn create_pod_object(&self, node: &str, namespace: &str, name: &str) -> String {
        self.create_pod_object_as(node, namespace, name, None).await
    }

    /// [`LocalCluster::create_pod_object`]; with `static_uid`, the object is the mirror pod of
    /// a static pod that kubelet runs under that UID (its config hash), as kubelet writes it,
    /// and the static pod's UID is returned: the one the runtime passes to the plugin.
    async fn create_pod_object_as(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        static_uid: Option<&str>,
    ) -> String {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), namespace);
        let annotations = match static_uid {
            Some(hash) => {
                json!({"kubernetes.io/config.mirror": hash, "kubernetes.io/config.hash": hash, "kubernetes.io/config.source": "file"})
            }
            None => json!({}),
        };
        let object = json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}});
        let pod = pods
            .patch(
                name,
                &PatchParams::apply("sinew-e2e").force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| panic!("creating Pod {namespace}/{name}: {e}"));
        match static_uid {
            Some(hash) => hash.to_string(),
            None => pod.metadata.uid.expect("a Pod's UID"),
        }
    }

    /// Deletes the `Pod` object only (the runtime never runs DEL: a leak, as after a crash).
    pub async fn delete_pod_object(&self, namespace: &str, name: &str) {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), namespace);
        let _ = pods
            .delete(name, &kube::api::DeleteParams::default().grace_period(0))
            .await;
    }

    pub async fn start_pod(&self, node: &str, name: &str) -> Pod {
        self.start_pod_in(node, "default", name).await
    }

    /// Starts pod `<namespace>/<name>` on `node` through the networker.
    pub async fn start_pod_in(&self, node: &str, namespace: &str, name: &str) -> Pod {
        self.start_pod_as(node, namespace, name, None).await
    }

    /// Starts static pod `default/<name>` on `node`: the runtime passes kubelet's UID for it
    /// (a config hash), and the API server has only its mirror pod, with another UID.
    pub async fn start_static_pod(&self, node: &str, name: &str) -> Pod {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let hash = format!("{nanos:032x}");
        self.start_pod_as(node, "default", name, Some(&hash)).await
    }

    async fn start_pod_as(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        static_uid: Option<&str>,
    ) -> Pod {
        let uid = self
            .create_pod_object_as(node, namespace, name, static_uid)
            .await;
        let ns = netsim::netns("pod");
        let n = self.node(node);
        let pod = PodRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.clone(),
        };
        let run = self.networker.add(n, &pod, ns.path());
        assert!(
            run.success,
            "pod {name} on {node}: {} {}\n--- agent ---\n{}",
            run.stdout,
            run.stderr,
            n.agent_log()
        );
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            node: node.into(),
            result: serde_json::from_str(&run.stdout).expect("CNI result"),
            ns,
        }
    }

    /// Removes a pod's network.
    pub async fn stop_pod(&self, pod: Pod) {
        let r = PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        };
        let run = self.networker.del(self.node(&pod.node), &r, pod.ns.path());
        assert!(
            run.success,
            "DEL of {}: {} {}",
            pod.name, run.stdout, run.stderr
        );
        self.delete_pod_object(&pod.namespace, &pod.name).await;
    }

    /// What sinew left on node `name`: its conflist, plugin binary, peer routes, VXLAN device
    /// or nftables table. Empty when the node is clean.
    pub fn leftovers(&self, name: &str) -> Vec<String> {
        let node = self.node(name);
        let mut left = Vec::new();
        let conflists: Vec<String> = std::fs::read_dir(node.conf_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f.contains("sinew"))
                    .collect()
            })
            .unwrap_or_default();
        left.extend(conflists.into_iter().map(|f| format!("conflist {f}")));
        if node.bin_dir().join("sinew").exists() {
            left.push("plugin binary".into());
        }
        left.extend(
            self.peer_routes(name)
                .into_iter()
                .map(|(dst, via)| format!("route {dst} {via}")),
        );
        if node
            .netlink()
            .link_by_name("sinew.vxlan")
            .ok()
            .flatten()
            .is_some()
        {
            left.push("device sinew.vxlan".into());
        }
        let mut cmd = Command::new("nft");
        cmd.args(["list", "tables"]);
        in_netns(&mut cmd, &node.ns);
        if let Ok(out) = cmd.output()
            && String::from_utf8_lossy(&out.stdout).contains("inet sinew")
        {
            left.push("nftables table inet sinew".into());
        }
        left
    }

    /// Peer routes (protocol 116) on a node, as `dst/prefix via gw dev <index>` strings.
    pub fn peer_routes(&self, node: &str) -> BTreeMap<String, String> {
        let mut nl = self.node(node).netlink();
        let links: BTreeMap<u32, String> = nl
            .links()
            .expect("links")
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        [false, true]
            .into_iter()
            .flat_map(|v6| nl.routes(v6, 254).expect("routes"))
            .filter(|r| r.protocol == 116)
            .map(|r| {
                let dev = r
                    .oif
                    .and_then(|i| links.get(&i).cloned())
                    .unwrap_or_default();
                (
                    format!("{}/{}", r.dst, r.prefix),
                    format!(
                        "via {} dev {dev}{}",
                        r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        if r.onlink { " onlink" } else { "" }
                    ),
                )
            })
            .collect()
    }
}

/// Reads a node's conflist in a tight loop while something rewrites it: every read must be
/// a whole JSON document (the old one or the new one), never missing or half-written.
pub struct ConflistWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<(String, Vec<String>)>>,
    thread: Option<JoinHandle<()>>,
}

/// What a [`ConflistWatch`] saw.
#[derive(Debug)]
pub struct ConflistSeen {
    /// The awaited content appeared.
    pub rewritten: bool,
    /// Reads that were not a whole document (or found no file).
    pub torn: Vec<String>,
}

impl ConflistWatch {
    pub fn start(path: PathBuf) -> ConflistWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new((String::new(), Vec::new())));
        let (s, out) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let read = std::fs::read_to_string(&path);
                let Ok(mut seen) = out.lock() else { return };
                match read {
                    Ok(text) if serde_json::from_str::<serde_json::Value>(&text).is_ok() => {
                        seen.0 = text;
                    }
                    Ok(text) => seen.1.push(format!("partial: {text:?}")),
                    Err(e) => seen.1.push(format!("unreadable: {e}")),
                }
                drop(seen);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        ConflistWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Waits up to `within` for the conflist to contain `needle`, then stops watching.
    pub fn until_contains(mut self, needle: &str, within: Duration) -> ConflistSeen {
        let deadline = std::time::Instant::now() + within;
        let rewritten = loop {
            let found = self
                .seen
                .lock()
                .map(|s| s.0.contains(needle))
                .unwrap_or(false);
            if found || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let torn = self.seen.lock().map(|s| s.1.clone()).unwrap_or_default();
        ConflistSeen { rewritten, torn }
    }
}

impl Drop for ConflistWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The node report (`sinew.dev/node-state`) of Node `node`; an empty one while there is none.
pub async fn node_report(
    client: &kube::Client,
    node: &str,
) -> Result<sinew_crds::node::NodeReport, kube::Error> {
    let n = Api::<Node>::all(client.clone()).get(node).await?;
    Ok(n.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(sinew_crds::node::NODE_STATE_ANNOTATION))
        .and_then(|s| sinew_crds::node::NodeReport::parse(s))
        .unwrap_or_default())
}
