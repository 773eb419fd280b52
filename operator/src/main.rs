//! `sinew-operator`: reconciles `ClusterNetwork` and `IPPool`.
//!
//! Settings: `--namespace`/`POD_NAMESPACE` (where the node agent DaemonSet lives, default
//! `sinew-system`), `--node-image`/`SINEW_NODE_IMAGE` (agent image when the `ClusterNetwork`
//! names none), `--identity`/`POD_NAME` (leader election identity),
//! `--lease-seconds`/`SINEW_LEASE_SECONDS` (15) and `--renew-seconds`/`SINEW_RENEW_SECONDS` (5).
//! Replicas elect a leader on the Lease `sinew-operator` in that namespace; only it reconciles.

use std::process::ExitCode;

use anyhow::Context as _;
use sinew_operator::context::Settings;
use sinew_operator::daemonset;

fn flag(args: &[String], name: &str, env: &str) -> Option<String> {
    args.windows(2)
        .find(|w| w[0] == format!("--{name}"))
        .map(|w| w[1].clone())
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

async fn run(args: Vec<String>) -> anyhow::Result<()> {
    let namespace =
        flag(&args, "namespace", "POD_NAMESPACE").unwrap_or_else(|| "sinew-system".into());
    let image = flag(&args, "node-image", "SINEW_NODE_IMAGE")
        .unwrap_or_else(|| format!("ghcr.io/sinew-dev/sinew-node:{}", env!("CARGO_PKG_VERSION")));
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (in-cluster config or KUBECONFIG)")?;
    let identity = flag(&args, "identity", "POD_NAME")
        .unwrap_or_else(|| format!("sinew-operator-{}", std::process::id()));
    let seconds = |name: &str, env: &str, default: u64| -> anyhow::Result<std::time::Duration> {
        let v = flag(&args, name, env).map_or(Ok(default), |v| {
            v.parse()
                .with_context(|| format!("--{name} must be a number of seconds"))
        })?;
        Ok(std::time::Duration::from_secs(v))
    };
    let timing = sinew_operator::leader::Timing {
        duration: seconds("lease-seconds", "SINEW_LEASE_SECONDS", 15)?,
        renew: seconds("renew-seconds", "SINEW_RENEW_SECONDS", 5)?,
    };
    tracing::info!(%identity, "waiting to become the leader");
    sinew_operator::leader::lead(
        kube::Api::namespaced(client.clone(), &namespace),
        "sinew-operator".to_string(),
        identity,
        timing,
    )
    .await;
    let settings = Settings {
        namespace: namespace.clone(),
        daemonset: daemonset::Settings {
            namespace,
            default_image: image,
        },
    };
    sinew_operator::run::run(client, settings).await
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
