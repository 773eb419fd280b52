//! Scale to Kubernetes' own limits (`bench scale`): by default 5,000 Node objects with agent
//! reports, 50 pools, one block per node and 150,000 Pod objects whose allocations the blocks'
//! owners report, all in the real API server ([`load`]); then the operator (release build,
//! the only replica) reconciles them ([`operator`]), and a few real agents on nodes simulated
//! as network namespaces program their routes to every synthetic peer while pods start and
//! stop elsewhere ([`agents`], [`churn`]); the API server's own metrics say what the watches
//! cost cluster-wide ([`apiserver`]). `--nodes 1000 --pods-per-node 10` is the quick run.

pub mod agents;
pub mod apiserver;
pub mod churn;
pub mod load;
pub mod operator;
pub mod world;

use std::time::{Duration, Instant};

use serde_json::json;

use crate::ControlPlane;

/// Sizes of the run.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Synthetic nodes (Node objects with a block and pods, no agent).
    pub nodes: usize,
    pub pools: usize,
    pub pods_per_node: usize,
    /// Changes timed per kind.
    pub samples: usize,
    /// Real agents (nodes as network namespaces; needs root). 0: the operator only.
    pub agents: usize,
    /// Pod starts (and as many stops) per second elsewhere, while agents are watched.
    pub churn_per_s: usize,
    pub churn_seconds: u64,
}

impl Default for Scale {
    /// Kubernetes' limits: 5,000 nodes, 150,000 pods (30 per node).
    fn default() -> Self {
        Scale {
            nodes: 5000,
            pools: 50,
            pods_per_node: 30,
            samples: 20,
            agents: 3,
            churn_per_s: 100,
            churn_seconds: 20,
        }
    }
}

impl Scale {
    pub fn pods(&self) -> usize {
        self.nodes * self.pods_per_node
    }
}

/// What was measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub load: Duration,
    pub operator: operator::Measured,
    pub agents: Option<agents::Measured>,
    /// The API server's and etcd's (VmRSS, VmHWM) KiB at the end.
    pub apiserver_rss: (u64, u64),
    pub etcd_rss: (u64, u64),
    /// Why the operator had to be started again, each time (it exits when it loses its Lease).
    pub operator_restarts: Vec<String>,
    /// The whole run, control plane start to the end.
    pub total: Duration,
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resident and peak resident memory of `pid`, KiB.
pub fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs the benchmark against a fresh control plane.
pub async fn run(scale: Scale) -> Result<Measured, BoxError> {
    let start = Instant::now();
    let cp = ControlPlane::start().await?;
    let log = cp.dir().join("operator.log");
    let result = measure(&cp, scale).await;
    let mut m = result.map_err(|e| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{e}\n--- operator ---\n{}", tail.join("\n"))
    })?;
    m.total = start.elapsed();
    Ok(m)
}

async fn measure(cp: &ControlPlane, scale: Scale) -> Result<Measured, BoxError> {
    // Built before anything is timed: a build is no part of a start, and takes the CPU.
    if std::env::var_os("SINEW_OPERATOR_BIN").is_none() {
        crate::plugin::workspace_binary("sinew-operator", "sinew-operator");
    }
    if scale.agents > 0 {
        if std::env::var_os("SINEW_NODE_BIN").is_none() {
            crate::plugin::workspace_binary("sinew-node-agent", "sinew-node");
        }
        crate::plugin::sinew_binary();
    }
    let client = cp.client().await?;
    crate::install::install_crds(&client).await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": crate::helm::NAMESPACE}});
    crate::install::apply_manifest(&client, &ns.to_string()).await?;
    let cn = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork", "metadata": {"name": "default"}, "spec": {}});
    crate::install::apply_manifest(&client, &cn.to_string()).await?;
    let mut m = Measured::default();
    eprintln!(
        "[scale] loading {} nodes, {} pools, {} pods and their allocations into the API server",
        scale.nodes,
        scale.pools,
        scale.pods()
    );
    let start = Instant::now();
    let mut nodes = load::load(&client, &scale, agents::PREFIX).await?;
    m.load = start.elapsed();
    eprintln!("[scale] loaded in {:.1} s", m.load.as_secs_f64());

    let started = Instant::now();
    let mut operator = operator::Operator::start(cp)?;
    m.operator = operator::converge(&client, &scale, &mut operator, started).await?;
    // The agents before the operator's changes: they need the pools judged (spec edits
    // wait for the operator's judgement again).
    if scale.agents > 0 {
        m.agents = Some(agents::measure(cp, &client, &scale, &mut nodes, &mut operator).await?);
        // The churn's counts go out paced, up to 5 s behind (decision 101): a change is timed
        // once they are out, in a quiet cluster.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    operator::changes(&client, &scale, &mut nodes, &mut operator, &mut m.operator).await?;
    // The most seen: a restarted operator's VmHWM starts again.
    let after_churn = m.agents.as_ref().map_or(0, |a| a.operator_rss_end.1);
    m.operator.rss_kib_peak = [
        m.operator.rss_kib_peak,
        m.operator.rss_kib_steady,
        after_churn,
        rss_kib(operator.pid()).1,
    ]
    .into_iter()
    .max()
    .unwrap_or_default();
    let (apiserver, etcd) = cp.pids();
    m.apiserver_rss = apiserver.map(rss_kib).unwrap_or_default();
    m.etcd_rss = rss_kib(etcd);
    operator.keep_running()?;
    m.operator_restarts = operator.restarts;
    Ok(m)
}
