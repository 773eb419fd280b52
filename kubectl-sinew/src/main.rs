//! `kubectl sinew`: a kubectl plugin (any `kubectl-sinew` on the PATH is one) that tells what
//! is wrong with pod networking and why.
//!
//! ```text
//! kubectl sinew doctor [NODE] [-o json]       every current problem, worst first
//! kubectl sinew ipam check [--release-leaks]  stores vs IPBlocks vs Pods, nothing locked
//! kubectl sinew trace POD POD [-n NS]         the path between two pods as sinew programmed it,
//!       [--port N/PROTO]                      and the NetworkPolicy rules that allow or deny it
//! kubectl sinew drops [--node NODE]           the packets NetworkPolicy dropped, from the
//!       [--since 1h]                          agents' drop log (spec.networkPolicyDropLog)
//! ```
//! Exit status: 0 when nothing is wrong, 1 when something is, 2 when the API server cannot be
//! asked.

#![forbid(unsafe_code)]

mod doctor;
mod drops;
mod finding;
mod ipam;
mod policy_trace;
mod trace;

use std::process::ExitCode;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams};
use sinew_crds::{
    CLUSTER_NETWORK_NAME, ClusterNetwork, IPBlock, IPBlockUsage, IPPool, NetworkPolicyMode,
    RELEASE_ANNOTATION,
};
use sinew_runtime::clap::{self, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-sinew",
    version,
    about = "Diagnose sinew pod networking"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every current problem, cluster-wide or for one node, with cause, evidence and fix.
    Doctor { node: Option<String> },
    /// Address bookkeeping: leaked, duplicated, orphaned, untracked.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// The path between two pods as sinew programmed it.
    Trace {
        from: String,
        to: String,
        /// Namespace of pods given without one (`NS/NAME` also works).
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// The connection NetworkPolicy is judged for, `PORT/PROTOCOL` (`8080/TCP`, `53/UDP`);
        /// default: the destination's first container port, else 80/TCP.
        #[arg(long)]
        port: Option<String>,
    },
    /// The packets NetworkPolicy dropped, from the agents' drop log (ClusterNetwork
    /// spec.networkPolicyDropLog: Enabled).
    Drops {
        /// Only this node's drops.
        #[arg(long)]
        node: Option<String>,
        /// How far back: 30s, 5m, 2h, 1d.
        #[arg(long, default_value = "1h")]
        since: String,
    },
}

#[derive(Debug, Subcommand)]
enum IpamCommand {
    Check {
        /// Ask the nodes to free leaked addresses (the agent checks address, generation and
        /// pod UID before it frees anything).
        #[arg(long)]
        release_leaks: bool,
    },
}

async fn list<K>(client: &kube::Client) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {}", K::plural(&())))?
        .items)
}

async fn pods(client: &kube::Client) -> anyhow::Result<Vec<Pod>> {
    Ok(Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing pods")?
        .items)
}

fn print<T: serde::Serialize>(output: Output, value: &T, text: String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Text => print!("{text}"),
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<u8> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (KUBECONFIG or in-cluster)")?;
    match args.command {
        Command::Doctor { node } => {
            let network = Api::<ClusterNetwork>::all(client.clone())
                .get_opt(CLUSTER_NETWORK_NAME)
                .await
                .context("reading the ClusterNetwork")?;
            let pools: Vec<IPPool> = list(&client).await?;
            let nodes: Vec<Node> = list(&client).await?;
            if let Some(n) = &node
                && !nodes.iter().any(|x| x.metadata.name.as_deref() == Some(n))
            {
                anyhow::bail!("node {n} does not exist");
            }
            let mut findings = doctor::findings(network.as_ref(), &pools, &nodes, node.as_deref());
            findings.sort();
            print(
                args.output,
                &findings,
                finding::render(&findings, "no problem found: sinew is healthy"),
            )?;
            Ok(finding::exit_code(&findings))
        }
        Command::Ipam {
            command: IpamCommand::Check { release_leaks },
        } => {
            let blocks: Vec<IPBlock> = list(&client).await?;
            let usages: Vec<IPBlockUsage> = list(&client).await?;
            let pools: Vec<IPPool> = list(&client).await?;
            let nodes: Vec<Node> = list(&client).await?;
            let pods = pods(&client).await?;
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let (mut findings, releases) =
                ipam::check(&blocks, &usages, &pools, &pods, &nodes, &now);
            findings.sort();
            print(
                args.output,
                &findings,
                finding::render(
                    &findings,
                    "IPAM is consistent: no leaked, duplicated, orphaned or untracked address",
                ),
            )?;
            if release_leaks {
                let api: Api<IPBlock> = Api::all(client.clone());
                for (block, requests) in releases {
                    let mut all = blocks
                        .iter()
                        .find(|b| b.metadata.name.as_deref() == Some(block.as_str()))
                        .map(IPBlock::release_requests)
                        .unwrap_or_default();
                    all.extend(requests);
                    all.sort();
                    all.dedup();
                    let value = serde_json::to_string(&all)?;
                    let patch = serde_json::json!({"metadata": {"annotations": {RELEASE_ANNOTATION: value}}});
                    api.patch(&block, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .with_context(|| format!("asking the node of {block} to release"))?;
                    eprintln!(
                        "asked the node of IPBlock {block} to release {} address(es)",
                        all.len()
                    );
                }
            }
            Ok(finding::exit_code(&findings))
        }
        Command::Trace {
            from,
            to,
            namespace,
            port,
        } => {
            let get = |spec: String| {
                let client = client.clone();
                let namespace = namespace.clone();
                async move {
                    let (ns, name) = spec
                        .split_once('/')
                        .map(|(n, p)| (n.to_string(), p.to_string()))
                        .unwrap_or((namespace, spec));
                    Api::<Pod>::namespaced(client, &ns)
                        .get(&name)
                        .await
                        .with_context(|| format!("reading pod {ns}/{name}"))
                }
            };
            let (a, b) = (get(from).await?, get(to).await?);
            let blocks: Vec<IPBlock> = list(&client).await?;
            let usages: Vec<IPBlockUsage> = list(&client).await?;
            let pools: Vec<IPPool> = list(&client).await?;
            let nodes: Vec<Node> = list(&client).await?;
            let network = Api::<ClusterNetwork>::all(client.clone())
                .get_opt(CLUSTER_NETWORK_NAME)
                .await
                .context("reading the ClusterNetwork")?;
            let mut t = trace::trace(&a, &b, &blocks, &usages, &pools, &nodes, network.as_ref())
                .map_err(anyhow::Error::msg)?;
            let enforced = network
                .as_ref()
                .is_some_and(|n| n.spec.network_policy == NetworkPolicyMode::Enabled);
            if enforced {
                let connection =
                    policy_trace::connection(port.as_deref(), &b).map_err(anyhow::Error::msg)?;
                let world = policy_trace::world(
                    list::<Namespace>(&client).await?,
                    Api::<Pod>::all(client.clone())
                        .list(&Default::default())
                        .await
                        .context("listing pods")?
                        .items,
                    Api::<NetworkPolicy>::all(client.clone())
                        .list(&Default::default())
                        .await
                        .context("listing NetworkPolicies")?
                        .items,
                );
                t.policy = Some(
                    policy_trace::trace(&world, &a, &b, connection).map_err(anyhow::Error::msg)?,
                );
            } else {
                t.policy = Some(policy_trace::PolicyTrace::not_enforced());
            }
            print(args.output, &t, trace::render(&t))?;
            Ok(u8::from(
                t.path == "Unreachable" || t.policy.as_ref().is_some_and(|p| !p.passes),
            ))
        }
        Command::Drops { node, since } => {
            let since = drops::parse_since(&since).map_err(anyhow::Error::msg)?;
            let events = drop_events(&client, node.as_deref(), since).await?;
            print(args.output, &events, drops::render(&events))?;
            Ok(0)
        }
    }
}

/// The drop events of the agents (of `node` only, if given) of the last `since` seconds,
/// oldest first.
async fn drop_events(
    client: &kube::Client,
    node: Option<&str>,
    since: i64,
) -> anyhow::Result<Vec<drops::Drop>> {
    let agents = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(drops::AGENT_SELECTOR))
        .await
        .context("listing the sinew-node pods")?
        .items;
    let mut out = Vec::new();
    for pod in agents {
        let on = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_some_and(|n| n != on) {
            continue;
        }
        let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) else {
            continue;
        };
        let params = LogParams {
            container: Some(drops::AGENT_CONTAINER.to_string()),
            since_seconds: Some(since),
            ..LogParams::default()
        };
        let log = Api::<Pod>::namespaced(client.clone(), &ns)
            .logs(&name, &params)
            .await
            .with_context(|| format!("reading the log of {ns}/{name}"))?;
        out.extend(drops::parse_log(&on, &log));
    }
    out.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubectl-sinew: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kubectl-sinew: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_unknown_flags_are_refused() {
        let a = Args::try_parse_from(["kubectl-sinew", "doctor", "n1", "-o", "json"]).unwrap();
        assert!(matches!(a.command, Command::Doctor { node: Some(ref n) } if n == "n1"));
        assert_eq!(a.output, Output::Json);
        let a =
            Args::try_parse_from(["kubectl-sinew", "ipam", "check", "--release-leaks"]).unwrap();
        assert!(matches!(
            a.command,
            Command::Ipam {
                command: IpamCommand::Check {
                    release_leaks: true
                }
            }
        ));
        assert!(Args::try_parse_from(["kubectl-sinew", "doctor", "--nope"]).is_err());
        let a = Args::try_parse_from(["kubectl-sinew", "drops", "--node", "n1", "--since", "5m"])
            .unwrap();
        assert!(matches!(
            a.command,
            Command::Drops { node: Some(ref n), ref since } if n == "n1" && since == "5m"
        ));
        let a = Args::try_parse_from(["kubectl-sinew", "drops"]).unwrap();
        assert!(matches!(a.command, Command::Drops { node: None, ref since } if since == "1h"));
    }
}
