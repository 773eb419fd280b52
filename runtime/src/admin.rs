//! The admin endpoints (`/healthz`, `/readyz`, `/metrics`) on a plain HTTP/1.1 listener: fixed
//! documents need no web framework, but a listener every pod can reach needs bounds. Each
//! connection gets one request of at most [`MAX_REQUEST`] bytes, read within [`IO_DEADLINE`],
//! and one response written within the same deadline; at most [`MAX_CONNECTIONS`] are served
//! at once (more wait in the kernel's backlog), so no client can hold the listener or grow the
//! daemon's memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request and to take the response.
pub const IO_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes read of a request: the request line is all that matters.
pub const MAX_REQUEST: usize = 1024;

/// A response: status line (`200 OK`), content type and body.
pub type Response = (&'static str, &'static str, String);

/// The content type of plain-text answers.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A plain-text response.
pub fn text(status: &'static str, body: impl Into<String>) -> Response {
    (status, TEXT, body.into())
}

/// Serves `answer(path)` for every request on `listener` until the process ends.
pub async fn serve<F>(listener: TcpListener, answer: F)
where
    F: Fn(&str) -> Response + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                warn!(error = %e, "admin listener: accept failed");
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; MAX_REQUEST];
            let n = match tokio::time::timeout(IO_DEADLINE, conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = answer(path);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(IO_DEADLINE, conn.write_all(response.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn silent_clients_cannot_hold_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |path| text("200 OK", format!("{path}\n"))));
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
        assert!(response.ends_with("/healthz\n"), "{response}");
        assert!(
            started.elapsed() < IO_DEADLINE * 3,
            "{:?}",
            started.elapsed()
        );
    }
}
