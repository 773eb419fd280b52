//! The admin endpoints (`/healthz`, `/readyz`, `/metrics`) on plain HTTP/1.1 listeners: fixed
//! documents need no web framework, but a listener every pod can reach needs bounds.
//!
//! Each daemon serves two listeners, each with its own connection slots ([`Limits`]):
//!
//! - the **metrics** listener ([`METRICS`]), on an address Prometheus can reach, which in the
//!   host network namespace every pod can reach too;
//! - the **probe** listener ([`PROBES`]), on loopback, for the kubelet's probes
//!   (`httpGet.host: 127.0.0.1`; both daemons run with `hostNetwork`). Pods cannot reach it,
//!   so idle connections on the metrics listener can never make a liveness probe fail.
//!
//! Each connection gets one request line of at most [`MAX_REQUEST`] bytes, read within the
//! listener's read deadline (the whole request line, not each read, so a client trickling
//! bytes gains nothing), and one response written within its write deadline; at most
//! `connections` are served at once (more wait in the kernel's backlog), so no client can hold
//! a listener for long or grow the daemon's memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::warn;

/// Bytes read of a request: the request line is all that matters.
pub const MAX_REQUEST: usize = 1024;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// Time a client has to send its request line, from its connection's acceptance.
    pub read: Duration,
    /// Time a client has to take the response.
    pub write: Duration,
}

/// The metrics listener: Prometheus sends its request line at once; a client that does not
/// holds a slot for a second at most.
pub const METRICS: Limits = Limits {
    connections: 16,
    read: Duration::from_secs(1),
    write: Duration::from_secs(5),
};

/// The probe listener (loopback, the kubelet only): its own slots, and deadlines well inside
/// the probes' 1 s timeout.
pub const PROBES: Limits = Limits {
    connections: 8,
    read: Duration::from_millis(500),
    write: Duration::from_millis(500),
};

/// A response: status line (`200 OK`), content type and body.
pub type Response = (&'static str, &'static str, String);

/// The content type of plain-text answers.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A plain-text response.
pub fn text(status: &'static str, body: impl Into<String>) -> Response {
    (status, TEXT, body.into())
}

/// The 404 of a path a listener does not serve.
pub fn not_found() -> Response {
    text("404 Not Found", "not found\n")
}

/// Serves `answer(path)` for every request on `listener`, within `limits`, until the process
/// ends.
pub async fn serve<F>(listener: TcpListener, limits: Limits, answer: F)
where
    F: Fn(&str) -> Response + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                warn!(error = %e, "admin listener: accept failed");
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            respond(conn, limits, answer.as_ref()).await;
        });
    }
}

/// Reads one request line within `limits.read` and writes the answer within `limits.write`.
async fn respond<F>(mut conn: TcpStream, limits: Limits, answer: &F)
where
    F: Fn(&str) -> Response,
{
    let mut buf = [0u8; MAX_REQUEST];
    let Ok(n) = tokio::time::timeout(limits.read, read_request_line(&mut conn, &mut buf)).await
    else {
        return;
    };
    if n == 0 {
        return;
    }
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = answer(path);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(limits.write, conn.write_all(response.as_bytes())).await;
}

/// Reads until the request line is complete (a `\n`), the buffer is full or the peer stops
/// sending; returns how many bytes `buf` holds.
async fn read_request_line(conn: &mut TcpStream, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match conn.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let line_done = buf[n..n + read].contains(&b'\n');
                n += read;
                if line_done {
                    break;
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn get(addr: std::net::SocketAddr, path: &str, within: Duration) -> Option<String> {
        let exchange = async {
            let mut conn = TcpStream::connect(addr).await.ok()?;
            conn.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut response = String::new();
            conn.read_to_string(&mut response).await.ok()?;
            Some(response)
        };
        tokio::time::timeout(within, exchange).await.ok().flatten()
    }

    async fn listening(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, limits, |path| {
            text("200 OK", format!("{path}\n"))
        }));
        addr
    }

    /// More idle connections than `addr` has slots, held open until dropped.
    async fn flood(addr: std::net::SocketAddr, limits: Limits) -> Vec<TcpStream> {
        let mut idle = Vec::new();
        for _ in 0..limits.connections + 8 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the listener accept them (and fill its slots).
        tokio::time::sleep(Duration::from_millis(100)).await;
        idle
    }

    #[tokio::test]
    async fn probes_answer_within_a_second_while_the_metrics_listener_is_flooded() {
        let metrics = listening(METRICS).await;
        let probes = listening(PROBES).await;
        let _idle = flood(metrics, METRICS).await;
        // The flood holds every metrics slot: a request there is not answered at once.
        let started = Instant::now();
        assert!(
            get(metrics, "/metrics", Duration::from_millis(300))
                .await
                .is_none(),
            "the flood did not fill the metrics listener's slots"
        );
        // The kubelet's probe, on its own listener, is answered within its 1 s timeout.
        let started_probe = Instant::now();
        let response = get(probes, "/healthz", Duration::from_secs(1))
            .await
            .unwrap_or_else(|| panic!("no probe answer within 1 s ({:?})", started.elapsed()));
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("/healthz\n"), "{response}");
        assert!(started_probe.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn silent_clients_hold_a_slot_for_the_read_deadline_only() {
        let metrics = listening(METRICS).await;
        let _idle = flood(metrics, METRICS).await;
        let started = Instant::now();
        let response = get(metrics, "/metrics", METRICS.read * 4)
            .await
            .expect("answered once the idle connections timed out");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        // Every idle connection is dropped after the read deadline: a second, not 5.
        assert!(
            started.elapsed() < METRICS.read * 3,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_trickled_request_line_gets_no_more_than_the_read_deadline() {
        let probes = listening(PROBES).await;
        let mut conn = TcpStream::connect(probes).await.unwrap();
        let started = Instant::now();
        // One byte every 100 ms: each read is quick, the request line never ends.
        let mut closed = false;
        for _ in 0..30 {
            if conn.write_all(b"G").await.is_err() {
                closed = true;
                break;
            }
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(100), conn.read(&mut byte)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "the listener kept a trickling client for 3 s");
        assert!(
            started.elapsed() < PROBES.read * 3,
            "{:?}",
            started.elapsed()
        );
    }
}
