//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format) of the operator, on a plain
//! HTTP/1.1 listener (`sinew_runtime::admin`, bounded in time, size and connections). Every
//! replica serves them; only the leader's reconcile metrics move.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

/// Reconcile counters of one controller.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReconcileStats {
    pub total: u64,
    pub errors: u64,
    pub seconds_sum: f64,
}

/// Utilisation of one pool, as last written to its status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub capacity: u64,
    pub allocated: u64,
    pub blocks: u64,
}

/// What `/metrics` renders.
#[derive(Debug, Default)]
pub struct Metrics {
    /// This replica holds the Lease.
    pub leader: AtomicBool,
    /// Caches are filled and the controllers run (leader), or waiting to lead (standby).
    pub ready: AtomicBool,
    pub reconciles: Mutex<BTreeMap<&'static str, ReconcileStats>>,
    pub pools: Mutex<BTreeMap<String, PoolUsage>>,
    /// Blocks of departed nodes released.
    pub block_releases: AtomicU64,
    /// Leaked allocations released by the garbage collector.
    pub gc_releases: AtomicU64,
}

impl Metrics {
    /// Records one reconcile of `controller`.
    pub fn reconciled(&self, controller: &'static str, took: Duration, failed: bool) {
        if let Ok(mut r) = self.reconciles.lock() {
            let s = r.entry(controller).or_default();
            s.total += 1;
            s.errors += u64::from(failed);
            s.seconds_sum += took.as_secs_f64();
        }
    }

    /// Records a pool's utilisation; `None` forgets a deleted pool.
    pub fn pool(&self, name: &str, usage: Option<PoolUsage>) {
        if let Ok(mut p) = self.pools.lock() {
            match usage {
                Some(u) => p.insert(name.to_string(), u),
                None => p.remove(name),
            };
        }
    }

    /// The Prometheus exposition of the current values.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let reconciles = self
            .reconciles
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let pools = self.pools.lock().map(|p| p.clone()).unwrap_or_default();
        let mut section = |name: &str, help: &str, kind: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(s, "{name}{labels} {value}");
            }
        };
        let per = |f: &dyn Fn(&ReconcileStats) -> String| {
            reconciles
                .iter()
                .map(|(c, st)| (format!("{{controller=\"{c}\"}}"), f(st)))
                .collect::<Vec<_>>()
        };
        section(
            "sinew_operator_leader",
            "1 when this replica holds the Lease and reconciles.",
            "gauge",
            vec![(
                String::new(),
                u8::from(self.leader.load(Ordering::Relaxed)).to_string(),
            )],
        );
        section(
            "sinew_operator_reconciles_total",
            "Reconciles run, per controller.",
            "counter",
            per(&|st| st.total.to_string()),
        );
        section(
            "sinew_operator_reconcile_errors_total",
            "Reconciles that failed, per controller.",
            "counter",
            per(&|st| st.errors.to_string()),
        );
        section(
            "sinew_operator_reconcile_duration_seconds_sum",
            "Time spent reconciling, per controller.",
            "counter",
            per(&|st| format!("{:.6}", st.seconds_sum)),
        );
        let per_pool = |f: &dyn Fn(&PoolUsage) -> u64| {
            pools
                .iter()
                .map(|(p, u)| {
                    (
                        format!("{{pool=\"{}\"}}", p.replace(['"', '\\', '\n'], "_")),
                        f(u).to_string(),
                    )
                })
                .collect::<Vec<_>>()
        };
        section(
            "sinew_operator_pool_capacity",
            "Addresses the pool can hand out.",
            "gauge",
            per_pool(&|u| u.capacity),
        );
        section(
            "sinew_operator_pool_allocated",
            "Addresses of the pool held by pods.",
            "gauge",
            per_pool(&|u| u.allocated),
        );
        section(
            "sinew_operator_pool_blocks",
            "Blocks of the pool claimed by nodes.",
            "gauge",
            per_pool(&|u| u.blocks),
        );
        section(
            "sinew_operator_block_releases_total",
            "Blocks of departed nodes released.",
            "counter",
            vec![(
                String::new(),
                self.block_releases.load(Ordering::Relaxed).to_string(),
            )],
        );
        section(
            "sinew_operator_gc_releases_total",
            "Leaked allocations released by the garbage collector.",
            "counter",
            vec![(
                String::new(),
                self.gc_releases.load(Ordering::Relaxed).to_string(),
            )],
        );
        s
    }
}

/// Serves the three endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    sinew_runtime::admin::serve(listener, move |path| match path {
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => ("200 OK", "ok\n".to_string()),
        "/readyz" => ("503 Service Unavailable", "starting\n".to_string()),
        "/metrics" => ("200 OK", metrics.render()),
        _ => ("404 Not Found", "not found\n".to_string()),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reconciles_and_pools() {
        let m = Metrics::default();
        m.reconciled("ippool", Duration::from_millis(20), false);
        m.reconciled("ippool", Duration::from_millis(30), true);
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
        assert!(text.contains("sinew_operator_reconcile_errors_total{controller=\"ippool\"} 1"));
        assert!(text.contains("sinew_operator_pool_allocated{pool=\"p\"} 7"));
        assert!(text.contains("sinew_operator_leader 0"));
        m.pool("p", None);
        assert!(!m.render().contains("pool=\"p\""));
    }
}
