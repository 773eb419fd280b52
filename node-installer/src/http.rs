//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format) of the agent, on a plain
//! HTTP/1.1 listener: three fixed documents need no web framework.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::warn;

/// Counters and gauges the agent updates and `/metrics` renders.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    pub passes: AtomicU64,
    pub pass_errors: AtomicU64,
    pub blocks_claimed: AtomicU64,
    pub peer_routes: AtomicU64,
    /// Per pool: (blocks owned here, addresses allocated here).
    pub pools: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Metrics {
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
            "sinew_node_pass_errors_total",
            "Reconcile passes that failed.",
            "counter",
            self.pass_errors.load(Ordering::Relaxed),
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
pub async fn serve(addr: SocketAddr, node: String, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics listener accept failed");
                continue;
            }
        };
        let (node, metrics) = (node.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                    ("200 OK", "ok\n".to_string())
                }
                "/readyz" => ("503 Service Unavailable", "node not ready\n".to_string()),
                "/metrics" => ("200 OK", metrics.render(&node)),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.ready.store(true, Ordering::Relaxed);
        m.pools.lock().unwrap().insert("p".into(), (2, 5));
        let text = m.render("node-a");
        assert!(text.contains("sinew_node_ready{node=\"node-a\"} 1"));
        assert!(text.contains("sinew_node_pool_allocated{node=\"node-a\",pool=\"p\"} 5"));
        assert!(text.contains("# TYPE sinew_node_passes_total counter"));
    }
}
