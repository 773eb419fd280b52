//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format) of the agent, on a plain
//! HTTP/1.1 listener (`sinew_runtime::admin`, bounded in time, size and connections). It binds
//! the node's own address by default: it sits in the node's network namespace, where every pod
//! can reach it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;

/// Counters and gauges the agent updates and `/metrics` renders.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    pub passes: AtomicU64,
    /// Failed passes by error kind (`agent::error::Error::label`).
    pub pass_errors: Mutex<BTreeMap<&'static str, u64>>,
    pub blocks_claimed: AtomicU64,
    pub peer_routes: AtomicU64,
    /// Per pool: (blocks owned here, addresses allocated here).
    pub pools: Mutex<BTreeMap<String, (u64, u64)>>,
    /// When the agent's loop last came round (milliseconds since the epoch).
    pub heartbeat_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Metrics {
    /// The agent's loop came round (a pass, successful or not, and a status sync ended).
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// `Err` with the reason when the loop has not come round within `stall_after`: a pass
    /// that hangs (as one did on a /48 pool) must get the agent restarted by its liveness
    /// probe, not hide behind a listener that still answers.
    pub fn health(&self, stall_after: Duration) -> Result<(), String> {
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

    /// The Prometheus exposition of the current values.
    pub fn render(&self, node: &str) -> String {
        let mut s = String::new();
        let node = node.replace(['"', '\\', '\n'], "_");
        let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}"
            );
        };
        gauge(
            "sinew_node_ready",
            "1 when the node serves pods (conflist installed).",
            "gauge",
            u64::from(self.ready.load(Ordering::Relaxed)),
        );
        gauge(
            "sinew_node_passes_total",
            "Reconcile passes run.",
            "counter",
            self.passes.load(Ordering::Relaxed),
        );
        gauge(
            "sinew_node_blocks_claimed_total",
            "IPBlocks claimed by this node.",
            "counter",
            self.blocks_claimed.load(Ordering::Relaxed),
        );
        gauge(
            "sinew_node_peer_routes",
            "Routes towards peer blocks programmed.",
            "gauge",
            self.peer_routes.load(Ordering::Relaxed),
        );
        let errors = self
            .pass_errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        s.push_str("# HELP sinew_node_pass_errors_total Reconcile passes that failed, by kind of error.\n# TYPE sinew_node_pass_errors_total counter\n");
        for (kind, count) in &errors {
            let _ = writeln!(
                s,
                "sinew_node_pass_errors_total{{node=\"{node}\",kind=\"{kind}\"}} {count}"
            );
        }
        let pools = self.pools.lock().map(|p| p.clone()).unwrap_or_default();
        s.push_str("# HELP sinew_node_pool_blocks Blocks of the pool owned by this node.\n# TYPE sinew_node_pool_blocks gauge\n");
        for (pool, (blocks, _)) in &pools {
            let _ = writeln!(
                s,
                "sinew_node_pool_blocks{{node=\"{node}\",pool=\"{pool}\"}} {blocks}"
            );
        }
        s.push_str("# HELP sinew_node_pool_allocated Addresses of the pool held by pods on this node.\n# TYPE sinew_node_pool_allocated gauge\n");
        for (pool, (_, allocated)) in &pools {
            let _ = writeln!(
                s,
                "sinew_node_pool_allocated{{node=\"{node}\",pool=\"{pool}\"}} {allocated}"
            );
        }
        s
    }
}

/// Serves the three endpoints on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    node: String,
    metrics: Arc<Metrics>,
    stall_after: Duration,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    sinew_runtime::admin::serve(listener, move |path| match path {
        "/healthz" => match metrics.health(stall_after) {
            Ok(()) => ("200 OK", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", format!("{why}\n")),
        },
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => ("200 OK", "ok\n".to_string()),
        "/readyz" => ("503 Service Unavailable", "node not ready\n".to_string()),
        "/metrics" => ("200 OK", metrics.render(&node)),
        _ => ("404 Not Found", "not found\n".to_string()),
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.ready.store(true, Ordering::Relaxed);
        m.pools.lock().unwrap().insert("p".into(), (2, 5));
        m.pass_errors.lock().unwrap().insert("api", 3);
        let text = m.render("node-a");
        assert!(text.contains("sinew_node_ready{node=\"node-a\"} 1"));
        assert!(text.contains("sinew_node_pool_allocated{node=\"node-a\",pool=\"p\"} 5"));
        assert!(text.contains("# TYPE sinew_node_passes_total counter"));
        assert!(text.contains("sinew_node_pass_errors_total{node=\"node-a\",kind=\"api\"} 3"));
    }

    #[test]
    fn health_fails_once_the_loop_stalls() {
        let m = Metrics::default();
        assert!(
            m.health(Duration::from_secs(60)).is_err(),
            "never came round"
        );
        m.beat();
        assert_eq!(m.health(Duration::from_secs(60)), Ok(()));
        m.heartbeat_ms.fetch_sub(61_000, Ordering::Relaxed);
        let why = m.health(Duration::from_secs(60)).unwrap_err();
        assert!(why.contains("has not completed for 61 s"), "{why}");
    }
}
