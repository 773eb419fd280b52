//! `/healthz`, `/readyz` and `/metrics` of the operator, on the bounded admin listeners
//! (`sinew_runtime::admin`): the kubelet's probes on their own loopback listener, with their
//! own connection slots, and `/metrics` on the pod's address. Every replica serves them; only
//! the leader's reconcile metrics move.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sinew_runtime::admin;
use sinew_runtime::metrics::{
    self, Counter, EncodeLabelSet, Family, Gauge, Histogram, Registry, exponential_buckets,
};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// Utilisation of one pool, as last written to its status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub capacity: u64,
    pub allocated: u64,
    pub blocks: u64,
}

/// What `/metrics` renders.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    leader: Gauge,
    /// Caches are filled and the controllers run (leader), or waiting to lead (standby).
    pub ready: AtomicBool,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_seconds: Family<ControllerLabels, Histogram>,
    pool_capacity: Family<PoolLabels, Gauge>,
    pool_allocated: Family<PoolLabels, Gauge>,
    pool_blocks: Family<PoolLabels, Gauge>,
    /// Blocks of departed nodes released.
    pub block_releases: Counter,
    /// Leaked allocations released by the garbage collector.
    pub gc_releases: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            leader: Gauge::default(),
            ready: AtomicBool::new(false),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            // 1 ms to ~16 s.
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            pool_capacity: Family::default(),
            pool_allocated: Family::default(),
            pool_blocks: Family::default(),
            block_releases: Counter::default(),
            gc_releases: Counter::default(),
        };
        let mut r = Registry::with_prefix("sinew_operator");
        r.register(
            "leader",
            "1 when this replica holds the Lease and reconciles",
            m.leader.clone(),
        );
        r.register(
            "reconciles",
            "Reconciles run, per controller",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that failed, per controller and kind of error",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent per reconcile, per controller",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "pool_capacity",
            "Addresses the pool can hand out",
            m.pool_capacity.clone(),
        );
        r.register(
            "pool_allocated",
            "Addresses of the pool held by pods",
            m.pool_allocated.clone(),
        );
        r.register(
            "pool_blocks",
            "Blocks of the pool claimed by nodes",
            m.pool_blocks.clone(),
        );
        r.register(
            "block_releases",
            "Blocks of departed nodes released",
            m.block_releases.clone(),
        );
        r.register(
            "gc_releases",
            "Leaked allocations released by the garbage collector",
            m.gc_releases.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records one reconcile of `controller`; `error` is the failed run's kind.
    pub fn reconciled(&self, controller: &'static str, took: Duration, error: Option<&str>) {
        let labels = ControllerLabels {
            controller: controller.into(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller: controller.into(),
                    kind: kind.into(),
                })
                .inc();
        }
    }

    /// Records a pool's utilisation; `None` forgets a deleted pool.
    pub fn pool(&self, name: &str, usage: Option<PoolUsage>) {
        let labels = PoolLabels { pool: name.into() };
        let families = [
            (&self.pool_capacity, usage.map(|u| u.capacity)),
            (&self.pool_allocated, usage.map(|u| u.allocated)),
            (&self.pool_blocks, usage.map(|u| u.blocks)),
        ];
        for (family, value) in families {
            match value {
                Some(v) => {
                    family
                        .get_or_create(&labels)
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
    }

    /// The OpenMetrics text of the current values.
    pub fn render(&self) -> String {
        metrics::encode(&self.registry)
    }
}

/// The answer of a probe path (`/healthz`, `/readyz`); `None` for any other path.
fn probe(path: &str, metrics: &Metrics) -> Option<admin::Response> {
    Some(match path {
        "/healthz" => admin::text("200 OK", "ok\n"),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => admin::text("200 OK", "ok\n"),
        "/readyz" => admin::text("503 Service Unavailable", "starting\n"),
        _ => return None,
    })
}

/// Serves `/healthz` and `/readyz` on `listener` (loopback: the kubelet's probes) until the
/// process ends.
pub async fn serve_probes(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    admin::serve(listener, admin::PROBES, move |path| {
        probe(path, &metrics).unwrap_or_else(admin::not_found)
    })
    .await
}

/// Serves `/metrics` (and the probe paths, for people who look there) on `listener` until the
/// process ends.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    admin::serve(listener, admin::METRICS, move |path| match path {
        "/metrics" => ("200 OK", metrics::CONTENT_TYPE, metrics.render()),
        _ => probe(path, &metrics).unwrap_or_else(admin::not_found),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reconciles_and_pools() {
        let m = Metrics::default();
        m.reconciled("ippool", Duration::from_millis(20), None);
        m.reconciled("ippool", Duration::from_millis(30), Some("kube"));
        m.pool(
            "p",
            Some(PoolUsage {
                capacity: 100,
                allocated: 7,
                blocks: 2,
            }),
        );
        let text = m.render();
        assert!(
            text.contains("sinew_operator_reconciles_total{controller=\"ippool\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "sinew_operator_reconcile_errors_total{controller=\"ippool\",kind=\"kube\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "sinew_operator_reconcile_duration_seconds_count{controller=\"ippool\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("sinew_operator_pool_allocated{pool=\"p\"} 7"));
        assert!(text.contains("sinew_operator_leader 0"));
        m.pool("p", None);
        assert!(!m.render().contains("pool=\"p\""));
    }
}
