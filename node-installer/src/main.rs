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
//! (`node:9465`: the Node's InternalIP; or `host:port`, or `off`) for `/healthz`, `/readyz` and
//! `/metrics`, `--stall-seconds`/`SINEW_STALL_SECONDS` (120: `/healthz` fails when the loop
//! has not come round for that long), `--sysctl-dir`/`SINEW_SYSCTL_DIR` (`/proc/sys`; the
//! host's `/proc/sys/net` mounted in a container, under `<dir>/net`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sinew_node_installer::agent::{Agent, ListenAddr, Settings};
use sinew_node_installer::install;

const USAGE: &str = "usage: sinew-node (install|run) [--node-name N] [--conf-dir D] [--bin-dir D] [--state-dir D] [--plugin P] [--log-file F] [--min-free N] [--block-release-seconds N] [--resync-seconds N] [--metrics-addr node:PORT|A|off] [--stall-seconds N] [--sysctl-dir D]";

struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String]) -> anyhow::Result<Flags> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .with_context(|| format!("unexpected argument {flag:?}\n{USAGE}"))?;
            let value = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            pairs.push((name.to_string(), value.clone()));
        }
        Ok(Flags(pairs))
    }

    fn get(&self, flag: &str, env: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == flag)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    }

    fn number(&self, flag: &str, env: &str, default: u64) -> anyhow::Result<u64> {
        self.get(flag, env).map_or(Ok(default), |v| {
            v.parse()
                .with_context(|| format!("--{flag}/{env} must be a number, got {v:?}"))
        })
    }
}

fn settings(flags: &Flags, need_node: bool) -> anyhow::Result<Settings> {
    let node_name = flags.get("node-name", "NODE_NAME").unwrap_or_default();
    if need_node && node_name.is_empty() {
        anyhow::bail!(
            "the node name is required: --node-name or NODE_NAME (the downward API's spec.nodeName)"
        );
    }
    let plugin_source = match flags.get("plugin", "SINEW_PLUGIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("sinew"),
    };
    Ok(Settings {
        node_name,
        conf_dir_override: flags
            .get("conf-dir", "SINEW_CNI_CONF_DIR")
            .map(PathBuf::from),
        bin_dir_override: flags.get("bin-dir", "SINEW_CNI_BIN_DIR").map(PathBuf::from),
        state_dir: PathBuf::from(
            flags
                .get("state-dir", "SINEW_STATE_DIR")
                .unwrap_or_else(|| sinew_node_lib::consts::DEFAULT_STATE_DIR.to_string()),
        ),
        log_file: PathBuf::from(
            flags
                .get("log-file", "SINEW_CNI_LOG_FILE")
                .unwrap_or_else(|| "/var/log/sinew/cni.log".into()),
        ),
        plugin_source,
        min_free: flags.number("min-free", "SINEW_MIN_FREE", 16)?,
        block_release_grace: Duration::from_secs(flags.number(
            "block-release-seconds",
            "SINEW_BLOCK_RELEASE_SECONDS",
            300,
        )?),
        resync: Duration::from_secs(flags.number("resync-seconds", "SINEW_RESYNC_SECONDS", 10)?),
        metrics_addr: match flags
            .get("metrics-addr", "SINEW_METRICS_ADDR")
            .unwrap_or_else(|| "node:9465".into())
            .as_str()
        {
            "off" => ListenAddr::Off,
            addr => match addr.strip_prefix("node:") {
                Some(port) => ListenAddr::NodeIp(port.parse().with_context(|| {
                    format!("--metrics-addr node:PORT needs a port number, got {addr:?}")
                })?),
                None => ListenAddr::At(addr.parse().with_context(|| {
                    format!("--metrics-addr must be node:PORT, host:port or off, got {addr:?}")
                })?),
            },
        },
        sysctl_dir: PathBuf::from(
            flags
                .get("sysctl-dir", "SINEW_SYSCTL_DIR")
                .unwrap_or_else(|| "/proc/sys".into()),
        ),
        stall_after: Duration::from_secs(flags.number(
            "stall-seconds",
            "SINEW_STALL_SECONDS",
            120,
        )?),
    })
}

fn install_binary(s: &Settings) -> anyhow::Result<()> {
    let bin_dir = s
        .bin_dir_override
        .clone()
        .unwrap_or_else(|| PathBuf::from("/opt/cni/bin"));
    let plugin = std::fs::read(&s.plugin_source)
        .with_context(|| format!("reading the plugin binary {}", s.plugin_source.display()))?;
    let target = bin_dir.join("sinew");
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SINEW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = (|| -> anyhow::Result<()> {
        let (command, rest) = args.split_first().context(USAGE)?;
        let flags = Flags::parse(rest)?;
        match command.as_str() {
            "install" => install_binary(&settings(&flags, false)?),
            "run" => {
                let s = settings(&flags, true)?;
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .context("starting the async runtime")?
                    .block_on(run(s))
            }
            "--version" => {
                println!("sinew-node {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
            other => anyhow::bail!("unknown command {other:?}\n{USAGE}"),
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
