//! `sinew-operator`: reconciles `ClusterNetwork` and `IPPool`.
//!
//! Settings: `--namespace`/`POD_NAMESPACE` (where the node agent DaemonSet lives, default
//! `sinew-system`), `--node-image`/`SINEW_NODE_IMAGE` (agent image when the `ClusterNetwork`
//! names none), `--image-pull-secrets`/`SINEW_IMAGE_PULL_SECRETS` (comma-separated Secrets the
//! agent DaemonSet pulls its image with), `--identity`/`POD_NAME` (leader election identity),
//! `--lease-seconds`/`SINEW_LEASE_SECONDS` (15) and `--renew-seconds`/`SINEW_RENEW_SECONDS` (5),
//! `--metrics-addr`/`SINEW_METRICS_ADDR` (`pod:9466`: `POD_IP`, else every address; or
//! `address:port`) for `/metrics`, `--probe-addr`/`SINEW_PROBE_ADDR` (`127.0.0.1:9467`: loopback,
//! which pods cannot reach; or `off`) for the kubelet's probes `/healthz` and `/readyz`.
//! Replicas elect a leader on the Lease `sinew-operator` in that namespace; only it reconciles.
//! A leader that cannot renew the Lease within two thirds of its duration (each attempt bounded
//! by the renew interval) exits before another replica can take over.
//! On SIGTERM the leader finishes its running reconciles and gives the Lease up, so a standby
//! takes over at once.
//!
//! `sinew-operator uninstall [--timeout-seconds N]` (Helm's pre-delete hook): refuses, changing
//! nothing and exiting with code 3, while pods still hold pod-network addresses (it names
//! them); otherwise deletes every `IPPool`, waits until they are gone, then deletes the
//! `ClusterNetwork` and waits until its finalizer ran.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use sinew_operator::context::Settings;
use sinew_operator::daemonset;
use sinew_operator::http::Metrics;
use sinew_runtime::clap::{self, Parser, Subcommand};

/// The Lease the replicas elect a leader on.
const LEASE: &str = "sinew-operator";

/// sinew's operator: reconciles ClusterNetwork and IPPool.
#[derive(Debug, Parser)]
#[command(name = "sinew-operator", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Namespace of the node agent DaemonSet and of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sinew-system")]
    namespace: String,
    /// Node agent image when the ClusterNetwork names none.
    #[arg(long, env = "SINEW_NODE_IMAGE")]
    node_image: Option<String>,
    /// Secrets (comma-separated, in --namespace) the node agent DaemonSet pulls its image with.
    #[arg(long, env = "SINEW_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    image_pull_secrets: Vec<String>,
    /// Leader election identity (default: host name, process and a time stamp).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration.
    #[arg(long, env = "SINEW_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// How often the leader renews the Lease.
    #[arg(long, env = "SINEW_RENEW_SECONDS", default_value_t = 5)]
    renew_seconds: u64,
    /// Where /healthz, /readyz and /metrics listen: pod:PORT (POD_IP, else every address) or
    /// address:port.
    #[arg(long, env = "SINEW_METRICS_ADDR", default_value = "pod:9466")]
    metrics_addr: String,
    /// Where the kubelet's probes (/healthz, /readyz) listen: address:port (loopback: pods
    /// cannot reach it, and its connection slots are its own) or off.
    #[arg(long, env = "SINEW_PROBE_ADDR", default_value = "127.0.0.1:9467")]
    probe_addr: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Helm's pre-delete hook: refuses (exit code 3, nothing deleted) while pods hold
    /// pod-network addresses; else deletes every IPPool, waits until they are gone, then the
    /// ClusterNetwork, and waits until its finalizer ran.
    Uninstall {
        #[arg(long, env = "SINEW_UNINSTALL_TIMEOUT", default_value_t = 600)]
        timeout_seconds: u64,
    },
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

async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (in-cluster config or KUBECONFIG)")?;
    if let Some(Command::Uninstall { timeout_seconds }) = args.command {
        return sinew_operator::uninstall::uninstall(client, Duration::from_secs(timeout_seconds))
            .await
            .context("uninstalling sinew");
    }
    let namespace = args.namespace;
    let image = args
        .node_image
        .unwrap_or_else(|| format!("ghcr.io/sinew-dev/sinew-node:{}", env!("CARGO_PKG_VERSION")));
    // Without POD_NAME: the host name plus the process and a time stamp, since a PID alone is
    // the same (1) in every container.
    let identity = args.identity.unwrap_or_else(|| {
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
    let timing = sinew_operator::leader::Timing::new(
        Duration::from_secs(args.lease_seconds),
        Duration::from_secs(args.renew_seconds),
    )
    .map_err(anyhow::Error::msg)?;
    let metrics_addr = listen_addr(&args.metrics_addr, std::env::var("POD_IP").ok().as_deref())?;
    let metrics = Arc::new(Metrics::default());
    if args.probe_addr != "off" {
        let probe_addr: SocketAddr = args.probe_addr.parse().with_context(|| {
            format!(
                "--probe-addr must be address:port or off, got {:?}",
                args.probe_addr
            )
        })?;
        let probes = tokio::net::TcpListener::bind(probe_addr)
            .await
            .with_context(|| format!("serving the probes /healthz and /readyz on {probe_addr}"))?;
        tracing::info!(addr = %probes.local_addr()?, "serving the probes /healthz and /readyz");
        tokio::spawn(sinew_operator::http::serve_probes(probes, metrics.clone()));
    }
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("serving /metrics on {metrics_addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    tokio::spawn(sinew_operator::http::serve(listener, metrics.clone()));
    // A standby is healthy and ready: it is doing its job, waiting.
    metrics.ready.store(true, Ordering::Relaxed);

    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), &namespace);
    tracing::info!(%identity, "waiting to become the leader");
    let mut leader = tokio::select! {
        leader = sinew_operator::leader::lead(leases.clone(), LEASE.to_string(), identity.clone(), timing) => leader,
        _ = shutdown_signal() => {
            tracing::info!("stopping (standby)");
            return Ok(());
        }
    };
    metrics.set_leader(true);
    metrics.ready.store(false, Ordering::Relaxed);
    let settings = Settings {
        namespace: namespace.clone(),
        daemonset: daemonset::Settings {
            namespace,
            default_image: image,
            pull_secrets: args
                .image_pull_secrets
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        },
    };
    // The controllers stop on SIGTERM/SIGINT once their running reconciles finish. A lost
    // Lease stops them at once: the process exits (its in-flight writes with it) before the
    // Lease can expire for the others, and restarts as a standby.
    let result = tokio::select! {
        result = sinew_operator::run::run(client, settings, metrics.clone()) => result,
        why = leader.lost() => {
            metrics.set_leader(false);
            tracing::error!(lease = LEASE, %identity, ?why, "no longer the leader: stopping before another replica takes over");
            std::process::exit(1);
        }
    };
    leader.stop();
    metrics.set_leader(false);
    if let Err(e) = sinew_operator::leader::release(&leases, LEASE, &identity).await {
        tracing::warn!(error = %e, "could not release the lease; a standby takes over when it expires");
    }
    result
}

fn main() -> ExitCode {
    // Unknown flags, bad numbers and --help/--version end here, with clap's message.
    let args = Args::parse();
    sinew_runtime::logging::init();
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
            match e.downcast_ref::<sinew_operator::uninstall::Error>() {
                Some(sinew_operator::uninstall::Error::PodsHoldAddresses { .. }) => {
                    ExitCode::from(sinew_operator::uninstall::EXIT_PODS_HOLD_ADDRESSES)
                }
                _ => ExitCode::FAILURE,
            }
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
    use super::*;

    #[test]
    fn flags_have_env_fallbacks_and_unknown_ones_are_refused() {
        let a = Args::try_parse_from(["sinew-operator", "--lease-seconds", "9"]).unwrap();
        assert_eq!(a.lease_seconds, 9);
        assert!(a.command.is_none());
        let e = Args::try_parse_from(["sinew-operator", "--lease-secs", "9"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let a = Args::try_parse_from(["sinew-operator", "uninstall", "--timeout-seconds", "5"])
            .unwrap();
        assert!(matches!(
            a.command,
            Some(Command::Uninstall { timeout_seconds: 5 })
        ));
        assert!(Args::try_parse_from(["sinew-operator", "--renew-seconds", "x"]).is_err());
        let a = Args::try_parse_from(["sinew-operator"]).unwrap();
        assert_eq!(a.probe_addr, "127.0.0.1:9467");
        assert!(a.image_pull_secrets.is_empty());
        let a = Args::try_parse_from(["sinew-operator", "--image-pull-secrets", "a,b"]).unwrap();
        assert_eq!(a.image_pull_secrets, ["a", "b"]);
    }

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
