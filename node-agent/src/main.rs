//! `sinew-node`: installs the sinew CNI plugin on a node and runs the node agent.
//!
//! ```text
//! sinew-node install   copy the plugin binary into the CNI bin dir (init container)
//! sinew-node run       the node agent (DaemonSet, hostNetwork)
//! ```
//! Settings come from flags or the environment: `--node-name`/`NODE_NAME` (required for
//! `run`), `--conf-dir`/`SINEW_CNI_CONF_DIR` and `--bin-dir`/`SINEW_CNI_BIN_DIR` (default: the
//! `ClusterNetwork`'s, else `/etc/cni/net.d` and `/opt/cni/bin`), `--state-dir`/`SINEW_STATE_DIR`
//! (`/var/lib/sinew`), `--plugin`/`SINEW_PLUGIN` (the `sinew` binary next to this one),
//! `--log-file`/`SINEW_CNI_LOG_FILE` (`/var/log/sinew/cni.log`), `--min-free`/`SINEW_MIN_FREE`
//! (16), `--block-release-seconds`/`SINEW_BLOCK_RELEASE_SECONDS` (300),
//! `--resync-seconds`/`SINEW_RESYNC_SECONDS` (10), `--metrics-addr`/`SINEW_METRICS_ADDR`
//! (`node:9465`: the Node's InternalIP; or `host:port`, or `off`) for `/metrics`,
//! `--probe-addr`/`SINEW_PROBE_ADDR` (`127.0.0.1:9464`, or `off`) for the kubelet's probes
//! `/healthz` and `/readyz` (served from the start, before the caches sync), `--stall-seconds`/`SINEW_STALL_SECONDS` (120: `/healthz` fails when the loop
//! has not come round for that long), `--sysctl-dir`/`SINEW_SYSCTL_DIR` (`/proc/sys`; the
//! host's `/proc/sys/net` mounted in a container, under `<dir>/net`).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sinew_node_agent::agent::{Agent, ListenAddr, Settings};
use sinew_node_agent::install;
use sinew_node_lib::consts::{DEFAULT_STATE_DIR, PLUGIN_BINARY};
use sinew_runtime::clap::{self, Parser, Subcommand};

/// sinew's node installer and agent.
#[derive(Debug, Parser)]
#[command(name = "sinew-node", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy the plugin binary into the CNI bin dir (init container).
    Install,
    /// Run the node agent (DaemonSet, hostNetwork).
    Run,
}

#[derive(Debug, clap::Args)]
struct Flags {
    /// This node's name (the downward API's spec.nodeName); required for `run`.
    #[arg(long, global = true, env = "NODE_NAME")]
    node_name: Option<String>,
    /// CNI configuration directory (default: the ClusterNetwork's).
    #[arg(long, global = true, env = "SINEW_CNI_CONF_DIR")]
    conf_dir: Option<PathBuf>,
    /// CNI binary directory (default: the ClusterNetwork's, /opt/cni/bin for `install`).
    #[arg(long, global = true, env = "SINEW_CNI_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Node-local state (IPAM store, node.json).
    #[arg(long, global = true, env = "SINEW_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The plugin binary to install (default: `sinew` next to this executable).
    #[arg(long, global = true, env = "SINEW_PLUGIN")]
    plugin: Option<PathBuf>,
    /// The plugin's log file (written into the conflist).
    #[arg(
        long,
        global = true,
        env = "SINEW_CNI_LOG_FILE",
        default_value = "/var/log/sinew/cni.log"
    )]
    log_file: PathBuf,
    /// Free addresses to keep per pool before claiming another block.
    #[arg(long, global = true, env = "SINEW_MIN_FREE", default_value_t = 16)]
    min_free: u64,
    /// A label selector of the Nodes that are this node's peers (default: every Node). For
    /// several sinew networks sharing one API server (the test harness's simulated
    /// clusters), or nodes sinew does not run on.
    #[arg(long, global = true, env = "SINEW_PEER_SELECTOR")]
    peer_selector: Option<String>,
    /// How long a block stays empty before it is given back.
    #[arg(
        long,
        global = true,
        env = "SINEW_BLOCK_RELEASE_SECONDS",
        default_value_t = 300
    )]
    block_release_seconds: u64,
    /// Longest time between two passes.
    #[arg(
        long,
        global = true,
        env = "SINEW_RESYNC_SECONDS",
        default_value_t = 10
    )]
    resync_seconds: u64,
    /// Where /healthz, /readyz and /metrics listen: node:PORT (the Node's InternalIP),
    /// host:port, or off.
    #[arg(
        long,
        global = true,
        env = "SINEW_METRICS_ADDR",
        default_value = "node:9465"
    )]
    metrics_addr: String,
    /// Where the kubelet's probes (/healthz, /readyz) listen: host:port (loopback: pods cannot
    /// reach it) or off.
    #[arg(
        long,
        global = true,
        env = "SINEW_PROBE_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    probe_addr: String,
    /// /healthz fails when the loop has not come round for this long.
    #[arg(
        long,
        global = true,
        env = "SINEW_STALL_SECONDS",
        default_value_t = 120
    )]
    stall_seconds: u64,
    /// sinew's dangling host veths (no pod recorded) are removed after this long.
    #[arg(
        long,
        global = true,
        env = "SINEW_DANGLING_SECONDS",
        default_value_t = 60
    )]
    dangling_seconds: u64,
    /// Where the node's sysctls are (the host's /proc/sys/net mounted under <dir>/net in a
    /// container).
    #[arg(
        long,
        global = true,
        env = "SINEW_SYSCTL_DIR",
        default_value = "/proc/sys"
    )]
    sysctl_dir: PathBuf,
}

fn listen_addr(spec: &str) -> anyhow::Result<ListenAddr> {
    Ok(match spec {
        "off" => ListenAddr::Off,
        addr => match addr.strip_prefix("node:") {
            Some(port) => ListenAddr::NodeIp(port.parse().with_context(|| {
                format!("--metrics-addr node:PORT needs a port number, got {addr:?}")
            })?),
            None => ListenAddr::At(addr.parse().with_context(|| {
                format!("--metrics-addr must be node:PORT, host:port or off, got {addr:?}")
            })?),
        },
    })
}

fn probe_addr(spec: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if spec == "off" {
        return Ok(None);
    }
    spec.parse()
        .map(Some)
        .with_context(|| format!("--probe-addr must be host:port or off, got {spec:?}"))
}

fn settings(flags: Flags, need_node: bool) -> anyhow::Result<Settings> {
    let node_name = flags.node_name.unwrap_or_default();
    if need_node && node_name.is_empty() {
        anyhow::bail!(
            "the node name is required: --node-name or NODE_NAME (the downward API's spec.nodeName)"
        );
    }
    let plugin_source = match flags.plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name(PLUGIN_BINARY),
    };
    Ok(Settings {
        node_name,
        conf_dir_override: flags.conf_dir,
        bin_dir_override: flags.bin_dir,
        state_dir: flags.state_dir,
        log_file: flags.log_file,
        plugin_source,
        min_free: flags.min_free,
        peer_selector: flags.peer_selector.filter(|s| !s.is_empty()),
        block_release_grace: Duration::from_secs(flags.block_release_seconds),
        resync: Duration::from_secs(flags.resync_seconds),
        metrics_addr: listen_addr(&flags.metrics_addr)?,
        probe_addr: probe_addr(&flags.probe_addr)?,
        sysctl_dir: flags.sysctl_dir,
        stall_after: Duration::from_secs(flags.stall_seconds),
        dangling_grace: Duration::from_secs(flags.dangling_seconds),
    })
}

fn install_binary(s: &Settings) -> anyhow::Result<()> {
    let bin_dir = s
        .bin_dir_override
        .clone()
        .unwrap_or_else(|| PathBuf::from("/opt/cni/bin"));
    let plugin = std::fs::read(&s.plugin_source)
        .with_context(|| format!("reading the plugin binary {}", s.plugin_source.display()))?;
    let target = bin_dir.join(PLUGIN_BINARY);
    let outcome = install::install_file(&target, &plugin, 0o755)
        .with_context(|| format!("installing {}", target.display()))?;
    tracing::info!(path = %target.display(), sha256 = %install::sha256_hex(&plugin), ?outcome, "plugin binary");
    Ok(())
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (in-cluster config or KUBECONFIG)")?;
    Agent::start(s, client).await.run().await
}

fn main() -> ExitCode {
    // Unknown flags, bad numbers and --help/--version end here, with clap's message.
    let args = Args::parse();
    sinew_runtime::logging::init();
    let result = (|| -> anyhow::Result<()> {
        match args.command {
            Command::Install => install_binary(&settings(args.flags, false)?),
            Command::Run => {
                let s = settings(args.flags, true)?;
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .context("starting the async runtime")?
                    .block_on(run(s))
            }
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sinew-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_env_fallbacks_and_unknown_ones_are_refused() {
        let a = Args::try_parse_from(["sinew-node", "run", "--node-name", "n1", "--min-free", "4"])
            .unwrap();
        assert!(matches!(a.command, Command::Run));
        let s = settings(a.flags, true).unwrap();
        assert_eq!((s.node_name.as_str(), s.min_free), ("n1", 4));
        assert_eq!(s.metrics_addr, ListenAddr::NodeIp(9465));
        assert_eq!(s.probe_addr, Some(([127, 0, 0, 1], 9464).into()));
        assert_eq!(probe_addr("off").unwrap(), None);
        assert!(probe_addr("9464").is_err());
        let e = Args::try_parse_from(["sinew-node", "run", "--min-fre", "4"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(Args::try_parse_from(["sinew-node", "run", "--resync-seconds", "x"]).is_err());
        assert!(listen_addr("node:x").is_err());
        assert_eq!(listen_addr("off").unwrap(), ListenAddr::Off);
    }
}
