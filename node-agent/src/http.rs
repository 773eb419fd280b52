//! `/healthz`, `/readyz` and `/metrics` of the agent, on the bounded admin listeners
//! (`sinew_runtime::admin`): the probe listener on loopback (`127.0.0.1:9464`, the kubelet's
//! probes; started before the caches sync, so a slow API server never fails a probe), and the
//! metrics listener on the node's own address (it sits in the node's network namespace, where
//! every pod can reach it; its slots are not the probes').

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sinew_runtime::admin;
use sinew_runtime::metrics::{self, Counter, EncodeLabelSet, Family, Gauge, Registry};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// Counters and gauges the agent updates and `/metrics` renders (every series carries the
/// `node` label).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The node serves pods (also what `/readyz` answers).
    pub ready: AtomicBool,
    /// The watches have had their initial lists: the loop runs (before, `/healthz` says the
    /// agent is starting and `/readyz` that it waits for the API server).
    synced: AtomicBool,
    ready_gauge: Gauge,
    pub passes: Counter,
    /// Failed passes by error kind (`agent::error::Error::label`).
    pub pass_errors: Family<KindLabels, Counter>,
    pub blocks_claimed: Counter,
    pub peer_routes: Gauge,
    pool_blocks: Family<PoolLabels, Gauge>,
    pool_allocated: Family<PoolLabels, Gauge>,
    problems: Family<ProblemLabels, Gauge>,
    /// NetworkPolicy: classes and set elements programmed, interfaces held, tables applied.
    pub policy_classes: Gauge,
    pub policy_elements: Gauge,
    pub policy_held: Gauge,
    pub policy_applied: Counter,
    /// How long the last policy programming took, from the change seen to the table in
    /// (microseconds).
    pub policy_program_us: Gauge,
    /// Packets and bytes the policy table dropped, by direction (`ingress`, `egress`, and
    /// `held`: of pod interfaces not programmed yet), from its named counters.
    policy_dropped_packets: Family<DirectionLabels, Counter>,
    policy_dropped_bytes: Family<DirectionLabels, Counter>,
    /// Objects the agent's watches delivered, by resource: what this node receives of the
    /// cluster's churn.
    watch_events: Family<ResourceLabels, Counter>,
    /// When the agent's loop last came round (milliseconds since the epoch).
    heartbeat_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "sinew_node",
            [("node".into(), node.to_string().into())].into_iter(),
        );
        let m = Metrics {
            registry: Registry::default(),
            ready: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            ready_gauge: Gauge::default(),
            passes: Counter::default(),
            pass_errors: Family::default(),
            blocks_claimed: Counter::default(),
            peer_routes: Gauge::default(),
            pool_blocks: Family::default(),
            pool_allocated: Family::default(),
            problems: Family::default(),
            policy_classes: Gauge::default(),
            policy_elements: Gauge::default(),
            policy_held: Gauge::default(),
            policy_applied: Counter::default(),
            policy_program_us: Gauge::default(),
            policy_dropped_packets: Family::default(),
            policy_dropped_bytes: Family::default(),
            watch_events: Family::default(),
            heartbeat_ms: AtomicU64::new(0),
        };
        registry.register(
            "watch_events",
            "Objects the agent's watches delivered (added, changed, deleted, listed), by resource",
            m.watch_events.clone(),
        );
        registry.register(
            "ready",
            "1 when the node serves pods (conflist installed)",
            m.ready_gauge.clone(),
        );
        registry.register("passes", "Reconcile passes run", m.passes.clone());
        registry.register(
            "pass_errors",
            "Reconcile passes that failed, by kind of error",
            m.pass_errors.clone(),
        );
        registry.register(
            "blocks_claimed",
            "IPBlocks claimed by this node",
            m.blocks_claimed.clone(),
        );
        registry.register(
            "peer_routes",
            "Routes towards peer blocks programmed",
            m.peer_routes.clone(),
        );
        registry.register(
            "pool_blocks",
            "Blocks of the pool owned by this node",
            m.pool_blocks.clone(),
        );
        registry.register(
            "pool_allocated",
            "Addresses of the pool held by pods on this node",
            m.pool_allocated.clone(),
        );
        registry.register(
            "problem",
            "Problems of this node now, by kind (0 for every kind not present)",
            m.problems.clone(),
        );
        registry.register(
            "policy_classes",
            "NetworkPolicy classes (groups of this node's pods treated alike) programmed",
            m.policy_classes.clone(),
        );
        registry.register(
            "policy_elements",
            "NetworkPolicy set elements programmed",
            m.policy_elements.clone(),
        );
        registry.register(
            "policy_held",
            "Pod interfaces held (passing nothing) until their pod is known",
            m.policy_held.clone(),
        );
        registry.register(
            "policy_applied",
            "Times the NetworkPolicy table was brought in line",
            m.policy_applied.clone(),
        );
        registry.register(
            "policy_program_microseconds",
            "How long the last NetworkPolicy programming took, from the change seen to the table in",
            m.policy_program_us.clone(),
        );
        registry.register(
            "policy_dropped_packets",
            "Packets the NetworkPolicy table dropped, by direction (held: of pod interfaces not programmed yet)",
            m.policy_dropped_packets.clone(),
        );
        registry.register(
            "policy_dropped_bytes",
            "Bytes the NetworkPolicy table dropped, by direction",
            m.policy_dropped_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The policy table dropped `packets` more packets and `bytes` more bytes in
    /// `direction`.
    pub fn policy_dropped(&self, direction: &str, packets: u64, bytes: u64) {
        let labels = DirectionLabels {
            direction: direction.to_string(),
        };
        self.policy_dropped_packets
            .get_or_create(&labels)
            .inc_by(packets);
        self.policy_dropped_bytes
            .get_or_create(&labels)
            .inc_by(bytes);
    }

    /// The counter of objects the watch of `resource` delivers.
    pub fn watch_events(&self, resource: &str) -> Counter {
        self.watch_events
            .get_or_create(&ResourceLabels {
                resource: resource.to_string(),
            })
            .clone()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.ready_gauge.set(i64::from(ready));
    }

    pub fn pass_failed(&self, kind: &str) {
        self.pass_errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Per pool: (blocks owned here, addresses allocated here); pools not listed are dropped.
    pub fn set_pools(&self, pools: &std::collections::BTreeMap<String, (u64, u64)>) {
        self.pool_blocks.clear();
        self.pool_allocated.clear();
        for (pool, (blocks, allocated)) in pools {
            let labels = PoolLabels { pool: pool.clone() };
            self.pool_blocks.get_or_create(&labels).set(*blocks as i64);
            self.pool_allocated
                .get_or_create(&labels)
                .set(*allocated as i64);
        }
    }

    /// The node's current problems, counted by kind (every kind reported, 0 when absent).
    pub fn set_problems(&self, problems: &[sinew_crds::node::Problem]) {
        for kind in sinew_crds::node::ProblemKind::ALL {
            let count = problems.iter().filter(|p| p.kind == kind).count();
            self.problems
                .get_or_create(&ProblemLabels {
                    kind: kind.to_string(),
                })
                .set(count as i64);
        }
    }

    /// The agent's loop came round (a pass, successful or not, and a status sync ended).
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The caches synced: from now on the loop's heartbeat is what `/healthz` answers.
    pub fn synced(&self) {
        self.beat();
        self.synced.store(true, Ordering::Relaxed);
    }

    /// `Err` with the reason when the loop has not come round within `stall_after`: a pass
    /// that hangs (as one did on a /48 pool) must get the agent restarted by its liveness
    /// probe, not hide behind a listener that still answers. Before the caches have synced
    /// the agent is healthy: it waits for the API server, and a restart would only make it
    /// list everything again (the DaemonSet's startup probe bounds the start itself).
    pub fn health(&self, stall_after: Duration) -> Result<(), String> {
        if !self.synced.load(Ordering::Relaxed) {
            return Ok(());
        }
        let idle = now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        if idle > stall_after.as_millis() as u64 {
            Err(format!(
                "the agent's reconcile loop has not completed for {} s (limit {} s)",
                idle / 1000,
                stall_after.as_secs()
            ))
        } else {
            Ok(())
        }
    }

    /// `Err` with the reason while the node does not serve pods.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.synced.load(Ordering::Relaxed) {
            Err("waiting for the API server: the agent's caches have not synced yet")
        } else if !self.ready.load(Ordering::Relaxed) {
            Err("node not ready")
        } else {
            Ok(())
        }
    }

    /// The OpenMetrics text of the current values.
    pub fn render(&self) -> String {
        metrics::encode(&self.registry)
    }
}

/// The answer of a probe path (`/healthz`, `/readyz`); `None` for any other path.
fn probe(path: &str, metrics: &Metrics, stall_after: Duration) -> Option<admin::Response> {
    let verdict = match path {
        "/healthz" => metrics.health(stall_after),
        "/readyz" => metrics.readiness().map_err(String::from),
        _ => return None,
    };
    Some(match verdict {
        Ok(()) => admin::text("200 OK", "ok\n"),
        Err(why) => admin::text("503 Service Unavailable", format!("{why}\n")),
    })
}

/// Serves `/healthz` and `/readyz` on `listener` (loopback: the kubelet's probes) until the
/// process ends.
pub async fn serve_probes(listener: TcpListener, metrics: Arc<Metrics>, stall_after: Duration) {
    admin::serve(listener, admin::PROBES, move |path| {
        probe(path, &metrics, stall_after).unwrap_or_else(admin::not_found)
    })
    .await
}

/// Serves `/metrics` (and the probe paths, for people who look there) on `addr` until the
/// process ends.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stall_after: Duration,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    admin::serve(listener, admin::METRICS, move |path| match path {
        "/metrics" => ("200 OK", metrics::CONTENT_TYPE, metrics.render()),
        _ => probe(path, &metrics, stall_after).unwrap_or_else(admin::not_found),
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_the_node_label() {
        let m = Metrics::new("node-a");
        m.set_ready(true);
        m.set_pools(&[("p".to_string(), (2, 5))].into());
        m.pass_failed("api");
        m.pass_failed("api");
        m.policy_dropped("ingress", 3, 180);
        m.policy_dropped("ingress", 2, 120);
        m.policy_dropped("egress", 0, 0);
        let text = m.render();
        assert!(
            text.contains(
                "sinew_node_policy_dropped_packets_total{node=\"node-a\",direction=\"ingress\"} 5"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "sinew_node_policy_dropped_bytes_total{node=\"node-a\",direction=\"egress\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("sinew_node_ready{node=\"node-a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sinew_node_pool_allocated{node=\"node-a\",pool=\"p\"} 5"),
            "{text}"
        );
        assert!(text.contains("# TYPE sinew_node_passes counter"), "{text}");
        assert!(
            text.contains("sinew_node_pass_errors_total{node=\"node-a\",kind=\"api\"} 2"),
            "{text}"
        );
        m.set_pools(&Default::default());
        assert!(!m.render().contains("pool=\"p\""));
    }

    #[test]
    fn health_fails_once_the_loop_stalls() {
        let m = Metrics::new("n");
        assert_eq!(
            m.health(Duration::from_secs(60)),
            Ok(()),
            "waiting for the caches is not a stall"
        );
        assert!(
            m.readiness()
                .unwrap_err()
                .contains("caches have not synced")
        );
        m.synced();
        assert_eq!(m.readiness(), Err("node not ready"));
        m.set_ready(true);
        assert_eq!(m.readiness(), Ok(()));
        assert_eq!(m.health(Duration::from_secs(60)), Ok(()));
        m.heartbeat_ms.fetch_sub(61_000, Ordering::Relaxed);
        let why = m.health(Duration::from_secs(60)).unwrap_err();
        assert!(why.contains("has not completed for 61 s"), "{why}");
    }
}
