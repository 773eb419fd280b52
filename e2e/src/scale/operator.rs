//! The operator at scale: started as the chart runs it (the only replica, it takes the Lease),
//! timed until every pool shows its usage; its memory; and how long a change takes to show in
//! `IPPool` status (a spec edit, and an agent's allocation report).

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sinew_crds::{IPPool, IPPoolStatus};

use super::world::{self, SynthNode};
use super::{BoxError, Scale, rss_kib};
use crate::ControlPlane;
use crate::process::Supervised;

/// What was measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Includes the restarts before it (see [`Operator::keep_running`]).
    pub initial_convergence: Duration,
    pub rss_kib_steady: u64,
    pub rss_kib_peak: u64,
    pub spec_edit: Vec<Duration>,
    pub allocation_change: Vec<Duration>,
    /// Changes not in status within [`CHANGE_WITHIN`].
    pub spec_edit_missed: usize,
    pub allocation_change_missed: usize,
}

/// The operator process, restarted when it exits as its Deployment's kubelet would restart
/// it (it exits when it loses its Lease).
pub struct Operator<'a> {
    cp: &'a ControlPlane,
    process: Supervised,
    /// Why each restart was needed: the last lines of the log of the process that exited.
    pub restarts: Vec<String>,
}

/// The operator's lease settings and the chart's values of them.
pub const LEASE_TIMING: [(&str, &str); 2] =
    [("SINEW_LEASE_SECONDS", "15"), ("SINEW_RENEW_SECONDS", "5")];

/// Restarts allowed before the run fails.
const MAX_RESTARTS: usize = 20;

impl<'a> Operator<'a> {
    pub fn start(cp: &'a ControlPlane) -> Result<Operator<'a>, BoxError> {
        Ok(Operator {
            cp,
            process: spawn(cp, "operator.log")?,
            restarts: Vec::new(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Starts the operator again if it exited (up to [`MAX_RESTARTS`] times).
    pub fn keep_running(&mut self) -> Result<(), BoxError> {
        let Some(status) = self.process.try_exit() else {
            return Ok(());
        };
        let why = format!("{status}: {}", self.process.log_tail(3));
        eprintln!("[scale] the operator exited ({why}); starting it again");
        self.restarts.push(why);
        if self.restarts.len() > MAX_RESTARTS {
            return Err(format!(
                "the operator exited {} times; the last time:\n{}",
                self.restarts.len(),
                self.process.log_tail(20)
            )
            .into());
        }
        self.process = spawn(self.cp, &format!("operator-{}.log", self.restarts.len()))?;
        Ok(())
    }
}

/// Starts the operator (release build, or `SINEW_OPERATOR_BIN`) with the chart's settings.
fn spawn(cp: &ControlPlane, log: &str) -> Result<Supervised, BoxError> {
    // SINEW_OPERATOR_BIN measures another build (e.g. the static musl binary the image ships).
    let bin = std::env::var_os("SINEW_OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::plugin::workspace_binary("sinew-operator", "sinew-operator"));
    eprintln!("[scale] starting the operator: {}", bin.display());
    let mut cmd = std::process::Command::new(bin);
    // The chart's lease timing, unless the environment sets another (it is inherited).
    for (key, chart) in LEASE_TIMING {
        if std::env::var_os(key).is_none() {
            cmd.env(key, chart);
        }
    }
    cmd.env("KUBECONFIG", cp.kubeconfig_path())
        .env("POD_NAMESPACE", crate::helm::NAMESPACE)
        .env("POD_NAME", "sinew-operator-bench")
        .env("SINEW_NODE_IMAGE", "sinew-node:bench")
        .env("SINEW_METRICS_ADDR", "127.0.0.1:0")
        .env("SINEW_PROBE_ADDR", "127.0.0.1:0")
        .env(
            "SINEW_LOG",
            std::env::var("SINEW_LOG").unwrap_or_else(|_| "info".into()),
        );
    Ok(Supervised::spawn(
        "sinew-operator",
        cmd,
        &cp.dir().join(log),
    )?)
}

async fn pools_converged(client: &kube::Client, expected: &[u64]) -> Result<bool, BoxError> {
    let pools: Api<IPPool> = Api::all(client.clone());
    for (p, want) in expected.iter().enumerate() {
        let pool = pools.get(&format!("pool-{p}")).await?;
        if pool.status.as_ref().and_then(|s| s.allocated) != Some(*want) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How long until `field` of pool `name`'s status moves away from `before`; `None` when it
/// did not within 10 s (the operator is restarted meanwhile if it exits).
async fn status_change(
    pools: &Api<IPPool>,
    operator: &mut Operator<'_>,
    name: &str,
    field: fn(&IPPoolStatus) -> Option<u64>,
    before: Option<u64>,
) -> Result<Option<Duration>, BoxError> {
    let start = Instant::now();
    while start.elapsed() < CHANGE_WITHIN {
        let p = pools.get(name).await?;
        if p.status.as_ref().and_then(field) != before {
            let took = start.elapsed();
            eprintln!(
                "[scale] {name}: status changed in {} ms (at {})",
                took.as_millis(),
                k8s_openapi::jiff::Timestamp::now()
            );
            return Ok(Some(took));
        }
        operator.keep_running()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(None)
}

/// How long a change may take to show before it counts as missed.
pub const CHANGE_WITHIN: Duration = Duration::from_secs(10);

/// Times the operator from its start (`started`) to every pool's usage; its memory then.
pub async fn converge(
    client: &kube::Client,
    scale: &Scale,
    operator: &mut Operator<'_>,
    started: Instant,
) -> Result<Measured, BoxError> {
    let mut m = Measured::default();
    let expected = world::expected_allocated(scale);
    while !pools_converged(client, &expected).await? {
        operator.keep_running()?;
        if started.elapsed() > Duration::from_secs(900) {
            return Err("the pools' usage not in status after 900 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.initial_convergence = started.elapsed();
    eprintln!(
        "[scale] every pool's usage in status {:.1} s after the operator started",
        m.initial_convergence.as_secs_f64()
    );
    // Let the start-up churn settle, then read memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    (m.rss_kib_steady, m.rss_kib_peak) = rss_kib(operator.pid());
    Ok(m)
}

/// Times spec edits and allocation changes to `IPPool` status, one at a time.
pub async fn changes(
    client: &kube::Client,
    scale: &Scale,
    nodes: &mut [SynthNode],
    operator: &mut Operator<'_>,
    m: &mut Measured,
) -> Result<(), BoxError> {
    eprintln!(
        "[scale] timing {} spec edits and {} allocation changes",
        scale.samples, scale.samples
    );
    let pools: Api<IPPool> = Api::all(client.clone());
    for i in 0..scale.samples {
        let name = format!("pool-{}", i % scale.pools);
        // Reserving one more address changes the capacity the status shows.
        let reserved: Vec<String> = (0..=i / scale.pools)
            .map(|r| format!("10.{}.255.{}", i % scale.pools + 1, r + 1))
            .collect();
        operator.keep_running()?;
        let before = pools.get(&name).await?.status.and_then(|s| s.capacity);
        pools
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"reserved": reserved}})),
            )
            .await?;
        match status_change(&pools, operator, &name, |s| s.capacity, before).await? {
            Some(took) => m.spec_edit.push(took),
            None => m.spec_edit_missed += 1,
        }
    }
    for i in 0..scale.samples {
        // Node k's agent reports one allocation fewer (a pod went away; its object stays:
        // the operator counts what agents report).
        operator.keep_running()?;
        let k = i * 7 % scale.nodes;
        let node = &mut nodes[k];
        node.allocations.pop_back();
        let before = pools
            .get(&node.pool)
            .await?
            .status
            .and_then(|s| s.allocated);
        world::write_allocations(client, node).await?;
        match status_change(&pools, operator, &node.pool, |s| s.allocated, before).await? {
            Some(took) => m.allocation_change.push(took),
            None => m.allocation_change_missed += 1,
        }
    }
    operator.keep_running()?;
    Ok(())
}
