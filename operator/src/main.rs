//! `sinew-operator`: reconciles `ClusterNetwork` and `IPPool`.
//!
//! Settings: `--namespace`/`POD_NAMESPACE` (where the node agent DaemonSet lives, default
//! `sinew-system`), `--node-image`/`SINEW_NODE_IMAGE` (agent image when the `ClusterNetwork`
//! names none), `--identity`/`POD_NAME` (leader election identity),
//! `--lease-seconds`/`SINEW_LEASE_SECONDS` (15) and `--renew-seconds`/`SINEW_RENEW_SECONDS` (5),
//! `--metrics-addr`/`SINEW_METRICS_ADDR` (`pod:9466`: `POD_IP`, else every address; or
//! `address:port`) for `/healthz`, `/readyz`, `/metrics`.
//! Replicas elect a leader on the Lease `sinew-operator` in that namespace; only it reconciles.
//! On SIGTERM the leader finishes its running reconciles and gives the Lease up, so a standby
//! takes over at once.
//!
//! `sinew-operator uninstall [--timeout-seconds N]`: deletes every `IPPool` and the
//! `ClusterNetwork` and waits until their finalizers ran (Helm's pre-delete hook).

use std::process::ExitCode;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use sinew_operator::context::Settings;
use sinew_operator::daemonset;
use sinew_operator::http::Metrics;

/// The Lease the replicas elect a leader on.
const LEASE: &str = "sinew-operator";

fn flag(args: &[String], name: &str, env: &str) -> Option<String> {
    args.windows(2)
        .find(|w| w[0] == format!("--{name}"))
        .map(|w| w[1].clone())
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(args: Vec<String>) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (in-cluster config or KUBECONFIG)")?;
    let seconds = |name: &str, env: &str, default: u64| -> anyhow::Result<Duration> {
        let v = flag(&args, name, env).map_or(Ok(default), |v| {
            v.parse()
                .with_context(|| format!("--{name} must be a number of seconds"))
        })?;
        Ok(Duration::from_secs(v))
    };
    if args.first().map(String::as_str) == Some("uninstall") {
        let timeout = seconds("timeout-seconds", "SINEW_UNINSTALL_TIMEOUT", 600)?;
        return sinew_operator::uninstall::uninstall(client, timeout)
            .await
            .context("uninstalling sinew");
    }
    let namespace =
        flag(&args, "namespace", "POD_NAMESPACE").unwrap_or_else(|| "sinew-system".into());
    let image = flag(&args, "node-image", "SINEW_NODE_IMAGE")
        .unwrap_or_else(|| format!("ghcr.io/sinew-dev/sinew-node:{}", env!("CARGO_PKG_VERSION")));
    // Without POD_NAME: the host name plus the process and a time stamp, since a PID alone is
    // the same (1) in every container.
    let identity = flag(&args, "identity", "POD_NAME").unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!(
            "sinew-operator-{}-{}-{nanos:08x}",
            host.trim(),
            std::process::id()
        )
    });
    let timing = sinew_operator::leader::Timing {
        duration: seconds("lease-seconds", "SINEW_LEASE_SECONDS", 15)?,
        renew: seconds("renew-seconds", "SINEW_RENEW_SECONDS", 5)?,
    };
    let metrics_addr = listen_addr(
        &flag(&args, "metrics-addr", "SINEW_METRICS_ADDR").unwrap_or_else(|| "pod:9466".into()),
        std::env::var("POD_IP").ok().as_deref(),
    )?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("serving /healthz and /metrics on {metrics_addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    tokio::spawn(sinew_operator::http::serve(listener, metrics.clone()));
    // A standby is healthy and ready: it is doing its job, waiting.
    metrics.ready.store(true, Ordering::Relaxed);

    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), &namespace);
    tracing::info!(%identity, "waiting to become the leader");
    let renewing = tokio::select! {
        handle = sinew_operator::leader::lead(leases.clone(), LEASE.to_string(), identity.clone(), timing) => handle,
        _ = shutdown_signal() => {
            tracing::info!("stopping (standby)");
            return Ok(());
        }
    };
    metrics.leader.store(true, Ordering::Relaxed);
    metrics.ready.store(false, Ordering::Relaxed);
    let settings = Settings {
        namespace: namespace.clone(),
        daemonset: daemonset::Settings {
            namespace,
            default_image: image,
        },
    };
    // The controllers stop on SIGTERM/SIGINT once their running reconciles finish.
    let result = sinew_operator::run::run(client, settings, metrics.clone()).await;
    renewing.abort();
    metrics.leader.store(false, Ordering::Relaxed);
    if let Err(e) = sinew_operator::leader::release(&leases, LEASE, &identity).await {
        tracing::warn!(error = %e, "could not release the lease; a standby takes over when it expires");
    }
    result
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SINEW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        println!("sinew-operator {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sinew-operator: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sinew-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `pod:PORT` is the pod's own address (`POD_IP`, from the downward API; for this host-network
/// pod, the node's address) rather than every address of the host; without `POD_IP` it falls
/// back to all addresses. Anything else is `address:port`.
fn listen_addr(spec: &str, pod_ip: Option<&str>) -> anyhow::Result<SocketAddr> {
    if let Some(port) = spec.strip_prefix("pod:") {
        let port: u16 = port.parse().with_context(|| {
            format!("--metrics-addr pod:PORT needs a port number, got {spec:?}")
        })?;
        let ip = match pod_ip.filter(|ip| !ip.is_empty()) {
            Some(ip) => ip
                .parse()
                .with_context(|| format!("POD_IP {ip:?} is not an IP address"))?,
            None => std::net::IpAddr::from([0, 0, 0, 0]),
        };
        return Ok(SocketAddr::new(ip, port));
    }
    spec.parse()
        .with_context(|| format!("--metrics-addr must be pod:PORT or address:port, got {spec:?}"))
}

#[cfg(test)]
mod tests {
    use super::listen_addr;

    #[test]
    fn the_admin_listener_binds_the_pods_address() {
        assert_eq!(
            listen_addr("pod:9466", Some("10.0.0.7"))
                .unwrap()
                .to_string(),
            "10.0.0.7:9466"
        );
        assert_eq!(
            listen_addr("pod:9466", Some("fd00::7"))
                .unwrap()
                .to_string(),
            "[fd00::7]:9466"
        );
        assert_eq!(
            listen_addr("pod:9466", None).unwrap().to_string(),
            "0.0.0.0:9466"
        );
        assert_eq!(
            listen_addr("127.0.0.1:0", None).unwrap().to_string(),
            "127.0.0.1:0"
        );
        assert!(listen_addr("pod:x", None).is_err());
    }
}
