//! Real agents among the synthetic peers: a few nodes simulated as network namespaces (the
//! local cluster, each with a real `sinew-node`), peers of every synthetic node (same peer
//! label), in a pool of their own. Measured on them: the time from an agent's start to all
//! synthetic peers' routes in its kernel, its memory, CPU per pass, a new peer block's time
//! to its route, and what it receives from the API server (bytes through its node's API
//! forwarder; events by resource from the API server's metrics) while idle and while pods
//! start and stop elsewhere. The agents start with NetworkPolicy off (what programming
//! peers costs, alone), and it is turned on after (every agent then follows its own node's
//! pods and every other pod that has an address: decision 105).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sinew_crds::IPPool;

use super::apiserver::{self, Scrape, Sent};
use super::churn::{self, Churned};
use super::operator::Operator;
use super::world::{self, SynthNode};
use super::{BoxError, Scale, rss_kib};
use crate::ControlPlane;
use crate::cluster::{AGENT_METRICS_PORT, LocalCluster, agent_http_at};
use crate::policy_scale::{cpu_time, set_policy};

/// The local cluster's name (node `sc-<i>`), the peer label value of every synthetic node.
pub const PREFIX: &str = "sc";
/// How long the agents' readiness is awaited after their routes (the run goes on without).
pub const READY_WITHIN: Duration = Duration::from_secs(90);
/// Quiet time before memory is read, and of the idle window.
const SETTLE: Duration = Duration::from_secs(10);

/// Agents' and API server's figures over one window of time.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub wall: Duration,
    /// Per agent: CPU, passes, bytes received from the API server.
    pub cpu: Vec<Duration>,
    pub passes: Vec<u64>,
    pub received: Vec<u64>,
    /// Per agent: objects its watches delivered (its `sinew_node_watch_events_total`).
    pub events: Vec<u64>,
    /// Watch events and bytes the API server sent, by resource; watches open at the end.
    pub sent: BTreeMap<String, Sent>,
    pub watches: BTreeMap<String, f64>,
    pub apiserver_cpu: Duration,
    pub etcd_cpu: Duration,
    pub operator_cpu: Duration,
    pub churned: Option<Churned>,
    /// Events a watch of every pod received over the window (the reference for the agents').
    pub every_pod_events: Option<u64>,
}

impl Window {
    /// The most one agent spent per pass.
    pub fn max_cpu_per_pass(&self) -> Duration {
        self.cpu
            .iter()
            .zip(&self.passes)
            .map(|(c, p)| c.div_f64((*p).max(1) as f64))
            .max()
            .unwrap_or_default()
    }
    pub fn per_s(&self, x: f64) -> f64 {
        x / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }
    /// The most one agent received, bytes per second.
    pub fn max_received_per_s(&self) -> f64 {
        self.per_s(self.received.iter().copied().max().unwrap_or_default() as f64)
    }
    pub fn max_cpu_per_s(&self) -> f64 {
        self.per_s(
            self.cpu
                .iter()
                .copied()
                .max()
                .unwrap_or_default()
                .as_secs_f64(),
        )
    }
    pub fn max_passes_per_s(&self) -> f64 {
        self.per_s(self.passes.iter().copied().max().unwrap_or_default() as f64)
    }
    pub fn max_events_per_s(&self) -> f64 {
        self.per_s(self.events.iter().copied().max().unwrap_or_default() as f64)
    }
}

/// What was measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub agents: usize,
    /// Per agent: its process start to all synthetic peers' routes programmed.
    pub program_from_nothing: Vec<Duration>,
    /// Per agent: its process start to its node ready (conflist written), if within
    /// [`READY_WITHIN`] of all routes programmed.
    pub ready: Vec<Option<Duration>>,
    /// Peer routes (protocol sinew) in the first agent's kernel then.
    pub kernel_routes: usize,
    /// Per agent (VmRSS, VmHWM) KiB: after the initial sync (NetworkPolicy off), and after
    /// NetworkPolicy was turned on and its table applied.
    pub rss: Vec<(u64, u64)>,
    pub rss_policy_on: Vec<(u64, u64)>,
    /// Per agent: NetworkPolicy turned on to its first table applied, if within
    /// [`READY_WITHIN`].
    pub policy_programmed: Vec<Option<Duration>>,
    pub idle: Window,
    /// A new block of a synthetic peer to its route in the first agent's kernel.
    pub new_block: Vec<Duration>,
    pub new_blocks: Window,
    pub churn_policy_on: Window,
    pub churn_policy_off: Window,
    /// The operator's (VmRSS, VmHWM) after the churn.
    pub operator_rss_end: (u64, u64),
}

/// A numbered metric of an agent (`sinew_node_<name>`), summed over its series.
fn agent_metric(cluster: &LocalCluster, i: usize, name: &str) -> Option<f64> {
    let (_, body) = agent_http_at(
        &cluster.nodes[i],
        AGENT_METRICS_PORT,
        "/metrics",
        Duration::from_secs(5),
    )
    .ok()?;
    let full = format!("sinew_node_{name}");
    let values: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.strip_prefix(&full)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// How long ago process `pid` started.
fn process_age(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // starttime is field 22 of the line, 20 after the name.
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let ticks = cpu_time_ticks_per_s();
    Some(Duration::from_secs_f64(
        (uptime - start_ticks / ticks).max(0.0),
    ))
}

fn cpu_time_ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t: &f64| *t > 0.0)
        .unwrap_or(100.0)
}

/// Processes whose CPU a window counts.
struct Pids {
    agents: Vec<i32>,
    apiserver: Option<i32>,
    etcd: i32,
    operator: i32,
}

impl Pids {
    fn of(cluster: &LocalCluster, cp: &ControlPlane, operator: i32) -> Result<Pids, BoxError> {
        let agents = cluster
            .nodes
            .iter()
            .map(|n| n.agent_pid().ok_or("an agent is not running"))
            .collect::<Result<_, _>>()?;
        let (apiserver, etcd) = cp.pids();
        Ok(Pids {
            agents,
            apiserver,
            etcd,
            operator,
        })
    }
}

struct Snapshot {
    at: Instant,
    cpu: Vec<Duration>,
    passes: Vec<u64>,
    received: Vec<u64>,
    events: Vec<u64>,
    api: Scrape,
    apiserver_cpu: Duration,
    etcd_cpu: Duration,
    operator_cpu: Duration,
}

async fn snapshot(
    client: &kube::Client,
    cluster: &LocalCluster,
    pids: &Pids,
) -> Result<Snapshot, BoxError> {
    let api = apiserver::scrape(client).await?;
    Ok(Snapshot {
        at: Instant::now(),
        cpu: pids.agents.iter().map(|p| cpu_time(*p)).collect(),
        passes: (0..cluster.nodes.len())
            .map(|i| agent_metric(cluster, i, "passes_total").unwrap_or(0.0) as u64)
            .collect(),
        received: cluster
            .nodes
            .iter()
            .map(|n| n.api_bytes_received())
            .collect(),
        events: (0..cluster.nodes.len())
            .map(|i| agent_metric(cluster, i, "watch_events_total").unwrap_or(0.0) as u64)
            .collect(),
        api,
        apiserver_cpu: pids.apiserver.map(cpu_time).unwrap_or_default(),
        etcd_cpu: cpu_time(pids.etcd),
        operator_cpu: cpu_time(pids.operator),
    })
}

fn window(a: &Snapshot, b: &Snapshot, churned: Option<Churned>) -> Window {
    let diff = |x: &[u64], y: &[u64]| -> Vec<u64> {
        x.iter().zip(y).map(|(x, y)| y.saturating_sub(*x)).collect()
    };
    Window {
        wall: b.at - a.at,
        cpu: a.cpu.iter().zip(&b.cpu).map(|(x, y)| *y - *x).collect(),
        passes: diff(&a.passes, &b.passes),
        received: diff(&a.received, &b.received),
        events: diff(&a.events, &b.events),
        sent: b.api.since(&a.api),
        watches: b.api.watches.clone(),
        apiserver_cpu: b.apiserver_cpu.saturating_sub(a.apiserver_cpu),
        etcd_cpu: b.etcd_cpu.saturating_sub(a.etcd_cpu),
        operator_cpu: b.operator_cpu.saturating_sub(a.operator_cpu),
        churned,
        every_pod_events: None,
    }
}

/// Whether `cidr` is routed in the kernel of the cluster's first node.
fn routed(nl: &mut sinew_node_lib::netlink::Netlink, cidr: &str) -> bool {
    nl.routes(false, 254).is_ok_and(|routes| {
        routes
            .iter()
            .any(|r| r.protocol == 116 && format!("{}/{}", r.dst, r.prefix) == cidr)
    })
}

/// Runs the agents' part; `operator` is the running operator's pid.
pub async fn measure(
    cp: &ControlPlane,
    client: &kube::Client,
    scale: &Scale,
    nodes: &mut [SynthNode],
    operator: &mut Operator<'_>,
) -> Result<Measured, BoxError> {
    let mut m = Measured {
        agents: scale.agents,
        ..Measured::default()
    };
    let names: Vec<String> = (0..scale.agents).map(|i| format!("{PREFIX}-{i}")).collect();
    let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "pool-real"},
        "spec": {"cidr": "10.200.0.0/16", "blockSize": 26, "mode": "Auto",
                 "nodeSelector": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": names}]}}});
    Api::<IPPool>::all(client.clone())
        .patch(
            "pool-real",
            &PatchParams::apply("sinew-bench"),
            &Patch::Apply(&pool),
        )
        .await?;
    set_policy(client, "Disabled").await?;
    eprintln!(
        "[scale] starting {} real agents among {} synthetic peers (NetworkPolicy off)",
        scale.agents, scale.nodes
    );
    let cluster = LocalCluster::start_default_resync(cp, PREFIX, &vec![0; scale.agents]).await;
    let mut pids = Pids::of(&cluster, cp, operator.pid())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut done: Vec<Option<Duration>> = vec![None; scale.agents];
    while done.iter().any(Option::is_none) {
        for (i, slot) in done.iter_mut().enumerate() {
            if slot.is_none()
                && agent_metric(&cluster, i, "peer_routes").unwrap_or(0.0) >= scale.nodes as f64
            {
                *slot = process_age(pids.agents[i]);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "agents without {} peer routes after 600 s: {:?}\n--- agent 0 ---\n{}",
                scale.nodes,
                done,
                cluster.nodes[0].agent_log()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.program_from_nothing = done.into_iter().flatten().collect();
    m.kernel_routes = cluster.peer_routes(&cluster.name(0)).len();
    eprintln!(
        "[scale] peers programmed {:?} after each agent's start ({} routes in the first one's kernel)",
        m.program_from_nothing, m.kernel_routes
    );
    // Ready: its conflist written.
    let ready_by = Instant::now() + READY_WITHIN;
    m.ready = vec![None; scale.agents];
    while m.ready.iter().any(Option::is_none) && Instant::now() < ready_by {
        for (i, slot) in m.ready.iter_mut().enumerate() {
            if slot.is_none()
                && cluster.nodes[i]
                    .conf_dir()
                    .join("10-sinew.conflist")
                    .exists()
            {
                *slot = process_age(pids.agents[i]);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tokio::time::sleep(SETTLE).await;
    m.rss = pids.agents.iter().map(|p| rss_kib(*p)).collect();
    operator.keep_running()?;
    pids.operator = operator.pid();
    let before = snapshot(client, &cluster, &pids).await?;
    tokio::time::sleep(SETTLE).await;
    m.idle = window(&before, &snapshot(client, &cluster, &pids).await?, None);

    eprintln!(
        "[scale] {} new peer blocks, each to its route",
        scale.samples
    );
    let mut nl = cluster.nodes[0].netlink();
    let before = snapshot(client, &cluster, &pids).await?;
    for s in 0..scale.samples {
        let node = &nodes[(s * 211 + 17) % nodes.len()];
        // Blocks from the top of the pool: far from the loaded ones.
        let cidr = world::block_cidr(world::rack(node.index, scale), 1023 - s);
        world::create_block(client, &node.name, &node.pool, &cidr).await?;
        let written = Instant::now();
        while !routed(&mut nl, &cidr) {
            if written.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "no route to {cidr} after 30 s\n--- agent 0 ---\n{}",
                    cluster.nodes[0].agent_log()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        m.new_block.push(written.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    m.new_blocks = window(&before, &snapshot(client, &cluster, &pids).await?, None);

    operator.keep_running()?;
    pids.operator = operator.pid();
    m.churn_policy_off = churn_window(client, &cluster, &pids, nodes, scale, "off").await?;

    eprintln!("[scale] NetworkPolicy on: every agent follows every pod");
    let applied: Vec<f64> = (0..scale.agents)
        .map(|i| agent_metric(&cluster, i, "policy_applied_total").unwrap_or(0.0))
        .collect();
    set_policy(client, "Enabled").await?;
    let turned_on = Instant::now();
    m.policy_programmed = vec![None; scale.agents];
    while m.policy_programmed.iter().any(Option::is_none) && turned_on.elapsed() < READY_WITHIN {
        for (i, slot) in m.policy_programmed.iter_mut().enumerate() {
            if slot.is_none()
                && agent_metric(&cluster, i, "policy_applied_total").unwrap_or(0.0) > applied[i]
            {
                *slot = Some(turned_on.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(SETTLE).await;
    m.rss_policy_on = pids.agents.iter().map(|p| rss_kib(*p)).collect();
    operator.keep_running()?;
    pids.operator = operator.pid();
    m.churn_policy_on = churn_window(client, &cluster, &pids, nodes, scale, "on").await?;
    operator.keep_running()?;
    m.operator_rss_end = rss_kib(operator.pid());
    for (i, pid) in pids.agents.iter().enumerate() {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!("agent {i} exited\n{}", cluster.nodes[i].agent_log()).into());
        }
    }
    Ok(m)
}

/// Pods start and stop on the synthetic nodes for the run's churn time: what the agents and
/// the API server did meanwhile.
async fn churn_window(
    client: &kube::Client,
    cluster: &LocalCluster,
    pids: &Pids,
    nodes: &mut [SynthNode],
    scale: &Scale,
    policy: &str,
) -> Result<Window, BoxError> {
    eprintln!(
        "[scale] churn, NetworkPolicy {policy}: {} pod starts and stops per second for {} s",
        scale.churn_per_s, scale.churn_seconds
    );
    let every_pod = churn::EveryPod::watch(client).await?;
    let before = snapshot(client, cluster, pids).await?;
    let reference_before = every_pod.events();
    let churned = churn::churn(
        client,
        nodes,
        scale.churn_per_s,
        Duration::from_secs(scale.churn_seconds),
    )
    .await?;
    let mut w = window(
        &before,
        &snapshot(client, cluster, pids).await?,
        Some(churned),
    );
    w.every_pod_events = Some(every_pod.events() - reference_before);
    eprintln!(
        "[scale] {:.0} pod starts per s; busiest agent received {:.0} B/s",
        churned.rate(),
        w.max_received_per_s()
    );
    Ok(w)
}
