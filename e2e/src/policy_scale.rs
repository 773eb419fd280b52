//! NetworkPolicy at scale (`bench policy`): 10,000 Pod objects over 500 namespaces and 1,000
//! NetworkPolicies in the real API server, one real `sinew-node` agent on a node simulated as
//! a network namespace, a few pods of its own with real interfaces. Every other pod lives on
//! one of 100 fake Node objects (no agent), with its addresses in its status as a kubelet
//! would publish them. Measured on the real agent: resident memory after the initial sync
//! with policy off (the reference: no pod or policy watch) and on, CPU per change (a policy
//! edit, a pod label change elsewhere), and the time from a policy edit's API write to its
//! rules in the node's kernel table.
//!
//! The objects (per namespace `pb-ns-NNN`, labelled `team` and `env`): pods `app-K-II` labelled
//! `app: app-K` (four apps), with named container ports `http` (8080) and `metrics` (9090);
//! the app-3 pods of every 50th namespace are also `role: monitoring`. Two policies each:
//! `allow-app-0` (app-0 pods: `http` from app-1 pods of the namespace; in every third
//! namespace also TCP 8080 from app-2 pods of another team's namespaces) and
//! `allow-monitoring` (every pod: `metrics` from monitoring pods of any namespace; in every
//! fourth namespace also egress, TCP 443 to 10.0.0.0/8 except the pods' range and DNS to the
//! kube-dns pods in kube-system).
//!
//! `SINEW_NODE_BIN=<path>` measures another build of the agent (the static musl binary the
//! image ships); `SINEW_BENCH_PERF=<dir>` records `perf` profiles of the agent while idle and
//! over the policy edits there; `SINEW_BENCH_HEAPTRACK=<dir>` attaches `heaptrack` to the agent
//! before policy is turned on in it, until that agent is stopped (what it allocated for
//! policy, and where, still held at the end).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod as PodObject};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sinew_crds::{ClusterNetwork, IPPool};

use crate::ControlPlane;
use crate::cluster::{AGENT_METRICS_PORT, CLUSTER_LABEL, LocalCluster, agent_http_at};
use crate::netsim::in_netns;
use crate::scale::rss_kib;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sizes of the run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Pod objects in all (the local ones and two kube-dns pods included).
    pub pods: usize,
    pub namespaces: usize,
    /// Pods of the measured node, with real interfaces.
    pub local_pods: usize,
    /// Changes timed per kind.
    pub samples: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pods: 10_000,
            namespaces: 500,
            local_pods: 6,
            samples: 40,
        }
    }
}

impl Settings {
    /// Two per namespace.
    pub fn policies(&self) -> usize {
        self.namespaces * 2
    }
    /// Pods on fake nodes in the bench namespaces.
    fn remote_pods(&self) -> usize {
        self.pods.saturating_sub(self.local_pods + DNS_PODS)
    }
    fn per_namespace(&self) -> usize {
        self.remote_pods().div_ceil(self.namespaces).max(1)
    }
    /// Fake nodes: 100 pods each (kubelet's default limit is 110).
    pub fn fake_nodes(&self) -> usize {
        (self.remote_pods() + DNS_PODS)
            .div_ceil(PODS_PER_FAKE_NODE)
            .max(1)
    }
}

const PODS_PER_FAKE_NODE: usize = 100;
const DNS_PODS: usize = 2;
const CONCURRENCY: usize = 16;
const PREFIX: &str = "pb";
/// Changes are spaced by this (the agent takes changes elsewhere in the cluster at most every
/// 200 ms, together): each sample is a change of its own, not one of a burst.
const SPACING: Duration = Duration::from_millis(300);

/// CPU use of one kind of change.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub count: usize,
    /// Wall time of the phase.
    pub wall: Duration,
    /// Agent CPU (user + system) over the phase.
    pub cpu: Duration,
    /// API write to the change in the node's table, when the change shows there.
    pub latency: Vec<Duration>,
}

impl Changes {
    /// CPU per change, less what the agent spends idle over the same time.
    pub fn cpu_per_change(&self, idle_per_s: f64) -> Duration {
        let idle = idle_per_s * self.wall.as_secs_f64();
        Duration::from_secs_f64(
            ((self.cpu.as_secs_f64() - idle) / self.count.max(1) as f64).max(0.0),
        )
    }
    pub fn raw_cpu_per_change(&self) -> Duration {
        self.cpu / self.count.max(1) as u32
    }
}

/// What was measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub load: Duration,
    /// (VmRSS, VmHWM) KiB: policy off (reference), on after being turned on in the running
    /// agent, on from the start of a fresh agent, and at the end of the run.
    pub rss_off: (u64, u64),
    pub rss_turned_on: (u64, u64),
    pub rss_on: (u64, u64),
    pub rss_end: (u64, u64),
    /// A fresh agent's start to its policy table programmed.
    pub sync: Duration,
    /// Agent CPU per second while nothing changes, policy on (and off, over the reference's
    /// quiet time).
    pub idle_cpu_per_s: f64,
    pub idle_cpu_per_s_off: f64,
    pub policy_edits: Changes,
    pub label_changes: Changes,
    pub unrelated_label_changes: Changes,
    /// The agent's metrics after the run: classes, elements, last programming (us).
    pub classes: i64,
    pub elements: i64,
    pub program_us: i64,
    /// Mean time of one `nft list table` in the node, and of one look at the agent's metrics
    /// (the latency polls' resolution).
    pub nft_list: Duration,
    pub metrics_poll: Duration,
}

fn ns_name(n: usize) -> String {
    format!("pb-ns-{n:03}")
}

fn team(n: usize) -> String {
    format!("team-{}", n % 10)
}

fn env(n: usize) -> &'static str {
    if n.is_multiple_of(2) {
        "prod"
    } else {
        "staging"
    }
}

/// Remote pod `i` of namespace `n`: its name, app, node and address.
struct Remote {
    namespace: usize,
    name: String,
    app: usize,
    node: usize,
    ip: String,
}

fn remote(settings: &Settings, j: usize) -> Remote {
    let per = settings.per_namespace();
    let (n, i) = (j / per, j % per);
    let nodes = settings.fake_nodes();
    let (node, slot) = (j % nodes, j / nodes);
    Remote {
        namespace: n,
        name: format!("app-{}-{i:02}", i % 4),
        app: i % 4,
        node,
        ip: format!("10.{}.{}.{}", 200 + node / 256, node % 256, slot + 1),
    }
}

fn fake_node(k: usize) -> String {
    format!("pb-fake-{k:03}")
}

fn containers() -> Value {
    json!([{"name": "app", "image": "registry.k8s.io/pause:3.10",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                      {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]}])
}

/// Policy `allow-app-0` of namespace `n`'s ingress rules.
fn app_rules(n: usize) -> Vec<Value> {
    let mut rules = vec![
        json!({"from": [{"podSelector": {"matchLabels": {"app": "app-1"}}}],
                                "ports": [{"port": "http"}]}),
    ];
    if n.is_multiple_of(3) {
        rules.push(
            json!({"from": [{"namespaceSelector": {"matchLabels": {"team": team(n + 1)}},
                                    "podSelector": {"matchLabels": {"app": "app-2"}}}],
                          "ports": [{"protocol": "TCP", "port": 8080}]}),
        );
    }
    rules
}

fn policies(n: usize) -> [Value; 2] {
    let ns = ns_name(n);
    let app = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-app-0", "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": "app-0"}}, "policyTypes": ["Ingress"],
                 "ingress": app_rules(n)}});
    let mut spec = json!({"podSelector": {}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "monitoring"}}}],
                     "ports": [{"port": "metrics"}]}]});
    if n.is_multiple_of(4) {
        spec["policyTypes"] = json!(["Ingress", "Egress"]);
        spec["egress"] = json!([
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.200.0.0/16"]}}],
             "ports": [{"protocol": "TCP", "port": 443}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                     "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
             "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]);
    }
    let monitoring = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-monitoring", "namespace": ns}, "spec": spec});
    [app, monitoring]
}

/// Creates a Pod object and publishes its addresses in its status, as kubelet would.
async fn pod(
    pods: &Api<PodObject>,
    name: &str,
    labels: Value,
    node: &str,
    ip: Option<&str>,
) -> Result<(), BoxError> {
    let object = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": containers()}});
    pods.create(&PostParams::default(), &serde_json::from_value(object)?)
        .await?;
    if let Some(ip) = ip {
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(())
}

/// Fills the API server: namespaces, fake nodes, pods, policies.
async fn load(client: &kube::Client, settings: &Settings) -> Result<(), BoxError> {
    let params = PatchParams::apply("sinew-bench").force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    stream::iter(0..settings.namespaces)
        .map(|n| {
            let (namespaces, params) = (namespaces.clone(), params.clone());
            async move {
                let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_name(n),
                    "labels": {"team": team(n), "env": env(n)}}});
                namespaces
                    .patch(&ns_name(n), &params, &Patch::Apply(&ns))
                    .await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    stream::iter(0..settings.fake_nodes())
        .map(|k| {
            let (nodes, params) = (nodes.clone(), params.clone());
            async move {
                let name = fake_node(k);
                let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}});
                nodes.patch(&name, &params, &Patch::Apply(&node)).await?;
                let status = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                    "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", 100 + k / 250, k % 250 + 1)}]}});
                nodes
                    .patch_status(&name, &params, &Patch::Apply(&status))
                    .await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let dns: Api<PodObject> = Api::namespaced(client.clone(), "kube-system");
    for d in 0..DNS_PODS {
        pod(
            &dns,
            &format!("coredns-{d}"),
            json!({"k8s-app": "kube-dns"}),
            &fake_node(d),
            Some(&format!("10.250.0.{}", d + 1)),
        )
        .await?;
    }
    stream::iter(0..settings.remote_pods())
        .map(|j| {
            let client = client.clone();
            async move {
                let r = remote(settings, j);
                let pods: Api<PodObject> = Api::namespaced(client, &ns_name(r.namespace));
                let mut labels =
                    json!({"app": format!("app-{}", r.app), "pod-template-hash": "5d8f7c9b6"});
                if r.namespace.is_multiple_of(50) && r.app == 3 {
                    labels["role"] = json!("monitoring");
                }
                pod(&pods, &r.name, labels, &fake_node(r.node), Some(&r.ip)).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    stream::iter(0..settings.namespaces)
        .map(|n| {
            let client = client.clone();
            async move {
                let api: Api<NetworkPolicy> = Api::namespaced(client, &ns_name(n));
                for p in policies(n) {
                    api.create(&PostParams::default(), &serde_json::from_value(p)?)
                        .await?;
                }
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// User + system CPU time of `pid` so far.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// The node's policy table as `nft list` prints it (empty when it is missing).
fn table(cluster: &LocalCluster, node: &str) -> String {
    let mut cmd = Command::new("nft");
    cmd.args(["list", "table", "inet", "sinew-policy"]);
    in_netns(&mut cmd, &cluster.node(node).ns);
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether `text` holds `needle` not followed by another digit (an address, not a prefix of
/// a longer one).
fn holds(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(i, _)| {
        !text[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Time spent polling: (polls, total) of `nft list table` and of the agent's metrics.
#[derive(Debug, Default)]
struct Polls {
    nft: (u32, Duration),
    metrics: (u32, Duration),
}

/// The kinds of change measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `allow-app-0` of a local pod's namespace gains an ipBlock peer of its own.
    PolicyEdit,
    /// A pod elsewhere becomes a monitoring pod: local pods' `metrics` rules take its address.
    LabelFollowed,
    /// A pod elsewhere gets a label no rule reads.
    LabelUnread,
}

/// What the changes are made in.
struct Bench<'a> {
    client: &'a kube::Client,
    cluster: &'a LocalCluster,
    node: &'a str,
    settings: &'a Settings,
    /// Pods that may become monitoring pods.
    targets: &'a [usize],
}

impl Bench<'_> {
    /// Makes change `s` of `kind`; what shows it in the node's table (nothing for a label no
    /// rule reads).
    async fn write(&self, kind: Kind, s: usize) -> Result<Option<String>, BoxError> {
        match kind {
            Kind::PolicyEdit => {
                let n = s % self.settings.local_pods.min(self.settings.namespaces);
                let mut rules = app_rules(n);
                let cidr = format!("172.{}.{}.0/24", 20 + s / 256, s % 256);
                rules.push(json!({"from": [{"ipBlock": {"cidr": cidr}}]}));
                Api::<NetworkPolicy>::namespaced(self.client.clone(), &ns_name(n))
                    .patch(
                        "allow-app-0",
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"spec": {"ingress": rules}})),
                    )
                    .await?;
                Ok(Some(cidr))
            }
            Kind::LabelFollowed => {
                let j = *self.targets.get(s).ok_or("not enough pods to relabel")?;
                let r = remote(self.settings, j);
                self.label(&r, "role", "monitoring").await?;
                Ok(Some(format!("{} ", r.ip)))
            }
            Kind::LabelUnread => {
                let r = remote(self.settings, (s * 37) % self.settings.remote_pods());
                self.label(&r, "version", &format!("v{s}")).await?;
                Ok(None)
            }
        }
    }

    async fn label(&self, r: &Remote, key: &str, value: &str) -> Result<(), BoxError> {
        Api::<PodObject>::namespaced(self.client.clone(), &ns_name(r.namespace))
            .patch(
                &r.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {key: value}}})),
            )
            .await?;
        Ok(())
    }

    /// The agent's count of table programmings.
    fn applied(&self, polls: &mut Polls) -> i64 {
        let start = Instant::now();
        let applied = metrics(self.cluster, self.node)
            .get("applied")
            .copied()
            .unwrap_or(0);
        polls.metrics.0 += 1;
        polls.metrics.1 += start.elapsed();
        applied
    }

    /// Whether the node's table holds `needle`.
    fn in_table(&self, needle: &str, polls: &mut Polls) -> bool {
        let start = Instant::now();
        let text = table(self.cluster, self.node);
        polls.nft.0 += 1;
        polls.nft.1 += start.elapsed();
        holds(&text, needle)
    }

    /// Makes change `s` of `kind` and times it from the API write returning to the first
    /// look at the agent's metrics (every 2 ms; cheaper for the node than listing its table)
    /// after which the table holds it.
    async fn timed(&self, kind: Kind, s: usize, polls: &mut Polls) -> Result<Duration, BoxError> {
        let mut before = self.applied(polls);
        let marker = self
            .write(kind, s)
            .await?
            .ok_or("a change the table does not show")?;
        let written = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let applied = self.applied(polls);
            let seen = written.elapsed();
            if applied != before {
                if self.in_table(&marker, polls) {
                    return Ok(seen);
                }
                before = applied;
            }
            if seen > Duration::from_secs(30) {
                return Err(self.missing(&marker));
            }
        }
    }

    /// Polls the node's table until it holds `needle`; the time since `since`.
    async fn until_in_table(
        &self,
        needle: &str,
        since: Instant,
        polls: &mut Polls,
    ) -> Result<Duration, BoxError> {
        loop {
            if self.in_table(needle, polls) {
                return Ok(since.elapsed());
            }
            if since.elapsed() > Duration::from_secs(30) {
                return Err(self.missing(needle));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn missing(&self, needle: &str) -> BoxError {
        format!(
            "{needle} not in the table of {} after 30 s\n--- agent ---\n{}",
            self.node,
            self.cluster.node(self.node).agent_log()
        )
        .into()
    }
}

/// The agent's policy metrics (name without prefix -> value).
fn metrics(cluster: &LocalCluster, node: &str) -> BTreeMap<String, i64> {
    let body = agent_http_at(
        cluster.node(node),
        AGENT_METRICS_PORT,
        "/metrics",
        Duration::from_secs(2),
    )
    .map(|(_, body)| body)
    .unwrap_or_default();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            let short = name.split("policy_").nth(1)?;
            let short = short.split('{').next()?.trim_end_matches("_total");
            Some((short.to_string(), value.trim().parse::<f64>().ok()? as i64))
        })
        .collect()
}

/// Sets the `ClusterNetwork`'s `networkPolicy` (`Enabled` or `Disabled`).
pub(crate) async fn set_policy(client: &kube::Client, mode: &str) -> Result<(), BoxError> {
    Api::<ClusterNetwork>::all(client.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"networkPolicy": mode}})),
        )
        .await?;
    Ok(())
}

/// Waits `settle`, then reads the agent's memory; and its CPU per second meanwhile.
async fn settled_rss(
    cluster: &LocalCluster,
    settle: Duration,
) -> Result<((u64, u64), f64), BoxError> {
    let pid = cluster.nodes[0]
        .agent_pid()
        .ok_or("the agent is not running")?;
    let (start, cpu) = (Instant::now(), cpu_time(pid));
    tokio::time::sleep(settle).await;
    let per_s = (cpu_time(pid) - cpu).as_secs_f64() / start.elapsed().as_secs_f64();
    Ok((rss_kib(pid), per_s))
}

/// With `SINEW_BENCH_PERF=<dir>`, `perf record -g` of the agent into `<dir>/<name>.data`
/// until dropped (diagnosis: where the agent's CPU goes; perf's own cost shows in the
/// numbers of such a run).
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(pid: i32, name: &str) -> Profile {
        let Some(dir) = std::env::var_os("SINEW_BENCH_PERF") else {
            return Profile(None);
        };
        let out = std::path::Path::new(&dir).join(format!("{name}.data"));
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-g",
                "-F",
                "499",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("[policy] perf record: {e}"))
            .ok();
        Profile(child)
    }
}

/// With `SINEW_BENCH_HEAPTRACK=<dir>`, `heaptrack` attached to the agent, recording into
/// `<dir>` until the agent exits (waited for on drop).
struct HeapTrack(Option<std::process::Child>);

impl HeapTrack {
    async fn attach(pid: i32) -> HeapTrack {
        let Some(dir) = std::env::var_os("SINEW_BENCH_HEAPTRACK") else {
            return HeapTrack(None);
        };
        // heaptrack names its file itself (`heaptrack.sinew-node.PID.zst`) in its working
        // directory: `-o` is not taken when attaching.
        let child = Command::new("heaptrack")
            .args(["-p", &pid.to_string()])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("[policy] heaptrack: {e}"))
            .ok();
        // Attaching goes through gdb.
        tokio::time::sleep(Duration::from_secs(10)).await;
        HeapTrack(child)
    }
}

impl Drop for HeapTrack {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.wait();
        }
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // perf writes its file on SIGINT.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// Runs the benchmark against a fresh control plane.
pub async fn run(settings: Settings) -> Result<Measured, BoxError> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    crate::install::install_crds(&client).await?;
    let cn = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork",
                    "metadata": {"name": "default"}, "spec": {"networkPolicy": "Disabled"}});
    crate::install::apply_manifest(&client, &cn.to_string()).await?;
    let operator = crate::operator::start(&cp, "op", &[]).await?;
    let result = measure(&cp, &client, settings).await;
    drop(operator);
    result
}

async fn measure(
    cp: &ControlPlane,
    client: &kube::Client,
    settings: Settings,
) -> Result<Measured, BoxError> {
    let mut m = Measured::default();
    eprintln!(
        "[policy] loading {} namespaces, {} fake nodes, {} pods, {} NetworkPolicies into the API server",
        settings.namespaces,
        settings.fake_nodes(),
        settings.pods,
        settings.policies()
    );
    let start = Instant::now();
    load(client, &settings).await?;
    m.load = start.elapsed();
    eprintln!("[policy] loaded in {:.1} s", m.load.as_secs_f64());

    // One node with a real agent (policy off for now), its pool, and its pods.
    let mut cluster = LocalCluster::start_default_resync(cp, PREFIX, &[0]).await;
    let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "pb-pool"},
        "spec": {"cidr": "10.126.0.0/24", "blockSize": 27, "mode": "VXLAN",
                 "nodeSelector": {"matchLabels": {CLUSTER_LABEL: PREFIX}}}});
    Api::<IPPool>::all(client.clone())
        .patch(
            "pb-pool",
            &PatchParams::apply("sinew-bench"),
            &Patch::Apply(&pool),
        )
        .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let node = cluster.name(0);
    let mut local = Vec::new();
    for k in 0..settings.local_pods {
        let ns = ns_name(k % settings.namespaces);
        let name = format!("local-{k}");
        let pods: Api<PodObject> = Api::namespaced(client.clone(), &ns);
        // The object (labels, ports) exists before the network, as a controller makes it.
        pod(&pods, &name, json!({"app": "app-0"}), &node, None).await?;
        let p = cluster.start_pod_in(&node, &ns, &name).await;
        let ip = p.ipv4().to_string();
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        local.push(p);
    }

    eprintln!("[policy] reference: the agent with NetworkPolicy Disabled");
    (m.rss_off, m.idle_cpu_per_s_off) = settled_rss(&cluster, Duration::from_secs(20)).await?;

    eprintln!("[policy] NetworkPolicy Enabled in the running agent");
    let heap = match cluster.nodes[0].agent_pid() {
        Some(pid) => HeapTrack::attach(pid).await,
        None => HeapTrack(None),
    };
    set_policy(client, "Enabled").await?;
    let turned_on = Instant::now();
    while !holds(&table(&cluster, &node), "policies pb-ns-000/allow-app-0") {
        if turned_on.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "no policy table 120 s after NetworkPolicy was enabled\n{}",
                cluster.nodes[0].agent_log()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.rss_turned_on = settled_rss(&cluster, Duration::from_secs(5)).await?.0;

    eprintln!("[policy] a fresh agent with NetworkPolicy Enabled");
    cluster.stop_agent(0);
    drop(heap);
    cluster.restart_agent(0);
    let started = Instant::now();
    loop {
        let applied = metrics(&cluster, &node)
            .get("applied")
            .copied()
            .unwrap_or(0);
        if applied > 0 {
            m.sync = started.elapsed();
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "the restarted agent did not program its table in 120 s\n{}",
                cluster.nodes[0].agent_log()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.rss_on = settled_rss(&cluster, Duration::from_secs(10)).await?.0;
    let pid = cluster.nodes[0]
        .agent_pid()
        .ok_or("the agent is not running")?;

    let profile = Profile::start(pid, "idle");
    m.idle_cpu_per_s = settled_rss(&cluster, Duration::from_secs(20)).await?.1;
    drop(profile);

    // Pods of namespaces 25, 75, ... become monitoring pods: each one's address joins the
    // local pods' `metrics` rules (no two of them are neighbours, so none merges into a range).
    let targets: Vec<usize> = (0..settings.remote_pods())
        .filter(|j| remote(&settings, *j).namespace % 50 == 25)
        .take(2 * settings.samples)
        .collect();
    let bench = Bench {
        client,
        cluster: &cluster,
        node: &node,
        settings: &settings,
        targets: &targets,
    };
    let kinds = [
        (
            Kind::PolicyEdit,
            "policy edits, each changing what a local pod allows",
        ),
        (
            Kind::LabelFollowed,
            "pod label changes elsewhere that local pods' rules follow",
        ),
        (
            Kind::LabelUnread,
            "pod label changes elsewhere that no rule of this node reads",
        ),
    ];
    let mut polls = Polls::default();
    for (kind, what) in kinds {
        let n = match kind {
            Kind::LabelFollowed => settings.samples.min(targets.len() / 2),
            _ => settings.samples,
        };
        let mut changes = Changes::default();
        if kind != Kind::LabelUnread {
            eprintln!("[policy] {n} {what}: API write to the node's table");
            for s in 0..n {
                changes
                    .latency
                    .push(bench.timed(kind, s, &mut polls).await?);
                tokio::time::sleep(SPACING).await;
            }
        }
        eprintln!("[policy] {n} {what}: the agent's CPU (unobserved)");
        let profile = Profile::start(pid, &format!("{kind:?}"));
        let phase = (Instant::now(), cpu_time(pid));
        let mut last = None;
        for s in n..2 * n {
            last = bench.write(kind, s).await?;
            tokio::time::sleep(SPACING).await;
        }
        (changes.count, changes.wall, changes.cpu) =
            (n, phase.0.elapsed(), cpu_time(pid) - phase.1);
        drop(profile);
        if let Some(marker) = last {
            // Each change was taken: the last one is in the table.
            bench
                .until_in_table(&marker, Instant::now(), &mut polls)
                .await?;
        }
        match kind {
            Kind::PolicyEdit => m.policy_edits = changes,
            Kind::LabelFollowed => m.label_changes = changes,
            Kind::LabelUnread => m.unrelated_label_changes = changes,
        }
    }

    let metrics = metrics(&cluster, &node);
    m.classes = metrics.get("classes").copied().unwrap_or(-1);
    m.elements = metrics.get("elements").copied().unwrap_or(-1);
    m.program_us = metrics.get("program_microseconds").copied().unwrap_or(-1);
    m.rss_end = rss_kib(pid);
    m.nft_list = polls.nft.1 / polls.nft.0.max(1);
    m.metrics_poll = polls.metrics.1 / polls.metrics.0.max(1);
    // The same agent from the fresh start to the end (a restart would reset what is measured).
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("the agent exited\n{}", cluster.nodes[0].agent_log()).into());
    }
    for p in local {
        cluster.stop_pod(p).await;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn an_address_is_not_found_as_the_start_of_a_longer_one() {
        assert!(holds("{ 10.200.5.1 . tcp . 9090 }", "10.200.5.1"));
        assert!(holds("elements = { 172.20.3.0/24 }", "172.20.3.0/24"));
        assert!(!holds("{ 10.200.5.12 . tcp . 9090 }", "10.200.5.1"));
    }

    #[test]
    fn the_default_run_is_the_issue_s_size_with_a_unique_address_per_pod() {
        let s = Settings::default();
        assert_eq!((s.pods, s.namespaces, s.policies()), (10_000, 500, 1_000));
        assert_eq!(s.remote_pods() + s.local_pods + DNS_PODS, s.pods);
        let ips: BTreeSet<String> = (0..s.remote_pods()).map(|j| remote(&s, j).ip).collect();
        assert_eq!(ips.len(), s.remote_pods());
        let names: BTreeSet<(usize, String)> = (0..s.remote_pods())
            .map(|j| {
                let r = remote(&s, j);
                (r.namespace, r.name)
            })
            .collect();
        assert_eq!(names.len(), s.remote_pods());
        assert!((0..s.remote_pods()).all(|j| remote(&s, j).node < s.fake_nodes()));
    }

    /// A relabelled pod's address shows on its own in the table: no monitoring pod, and no
    /// other pod that may be relabelled, is its neighbour (neighbours would merge into a range).
    #[test]
    fn pods_that_become_monitoring_pods_have_no_monitoring_neighbours() {
        let s = Settings::default();
        let ip = |j: usize| -> u32 { remote(&s, j).ip.parse::<Ipv4Addr>().unwrap().into() };
        let candidates: BTreeSet<u32> = (0..s.remote_pods())
            .filter(|j| {
                let r = remote(&s, *j);
                r.namespace % 50 == 25 || (r.namespace.is_multiple_of(50) && r.app == 3)
            })
            .map(ip)
            .collect();
        let targets: Vec<usize> = (0..s.remote_pods())
            .filter(|j| remote(&s, *j).namespace % 50 == 25)
            .collect();
        assert!(targets.len() >= 2 * s.samples);
        for t in targets {
            let a = ip(t);
            assert!(!candidates.contains(&(a + 1)) && !candidates.contains(&(a - 1)));
        }
    }
}
