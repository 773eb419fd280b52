//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format) of the agent, on a plain
//! HTTP/1.1 listener: three fixed documents need no web framework. The listener sits in the
//! node's network namespace, reachable by every pod: it binds the node's own address by
//! default, reads at most one small request per connection within a deadline, and serves a
//! bounded number of connections at once, so no peer can hold it or its memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request line and to take the response.
const IO_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes read of a request: the request line is all that matters.
const MAX_REQUEST: usize = 1024;

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
pub async fn serve(
    addr: SocketAddr,
    node: String,
    metrics: Arc<Metrics>,
    stall_after: Duration,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics listener accept failed");
                continue;
            }
        };
        let (node, metrics) = (node.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; MAX_REQUEST];
            let n = match tokio::time::timeout(IO_DEADLINE, conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => match metrics.health(stall_after) {
                    Ok(()) => ("200 OK", "ok\n".to_string()),
                    Err(why) => ("503 Service Unavailable", format!("{why}\n")),
                },
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
            let _ = tokio::time::timeout(IO_DEADLINE, conn.write_all(response.as_bytes())).await;
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

    #[tokio::test]
    async fn silent_clients_cannot_hold_the_listener() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let m = Arc::new(Metrics::default());
        m.beat();
        tokio::spawn(serve(addr, "n".into(), m, Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // More idle connections than the cap: they tie up every slot until their deadline.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 8 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let started = std::time::Instant::now();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(15), conn.read_to_string(&mut response))
            .await
            .expect("answered once the idle connections timed out")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            started.elapsed() < IO_DEADLINE * 3,
            "{:?}",
            started.elapsed()
        );
    }
}
