//! A soak, compressed: three nodes (two on one subnet, one behind a router) under a bounded run
//! of random pod churn, agent kill -9, API-server restarts and live mode switches, then the
//! invariants a user relies on: no address held twice, no leaked veth, every `IPBlock` status
//! equal to its node's store, every pod reachable from every other. Prints what it did.
//! The sequence is fixed by a seed (`SINEW_SOAK_SEED`, default 1) and the run by a step count
//! (`SINEW_SOAK_STEPS`, default 150), so a failure can be replayed.
//! Needs root and the Go-built control plane.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sinew_crds::{Cidr, IPPool};
use sinew_e2e::cluster::{CLUSTER_LABEL, LocalCluster, Pod};
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::netsim::{EchoServer, tcp_exchange};
use sinew_e2e::{require, tests};
use sinew_node_lib::consts::HOST_VETH_PREFIX;
use sinew_node_lib::ipam::Store;

fn main() -> ExitCode {
    if !require::is_root() {
        require::missing("soak", "nodes are network namespaces, which needs root");
        return ExitCode::SUCCESS;
    }
    let code = sinew_e2e::harness::run(
        |ctx| async move { sinew_e2e::operator::agents_setup(&ctx, true).await },
        tests![churn_kills_restarts_and_mode_switches_break_no_invariant],
    );
    sinew_e2e::operator::stop_kept();
    code
}

/// A small deterministic generator (xorshift), so a seed replays the same run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn env_number(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn set_mode(ctx: &Ctx, mode: &str) -> TestResult {
    let patch = json!({"spec": {"mode": mode}});
    Api::<IPPool>::all(ctx.client.clone())
        .patch("soak-pool", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn churn_kills_restarts_and_mode_switches_break_no_invariant(ctx: Ctx) -> TestResult {
    let mut rng = Rng(env_number("SINEW_SOAK_SEED", 1).max(1));
    let steps = env_number("SINEW_SOAK_STEPS", 150);
    let mut cluster = LocalCluster::start(&ctx.cp, "sk", &[0, 0, 1]).await;
    // Small blocks (/28, 14 usable) so that churn claims and releases blocks too.
    let pool = json!({
        "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "soak-pool"},
        "spec": {"cidr": "10.120.0.0/16", "blockSize": 28, "mode": "Auto",
                 "nodeSelector": {"matchLabels": {CLUSTER_LABEL: "sk"}}},
    });
    Api::<IPPool>::all(ctx.client.clone())
        .patch(
            "soak-pool",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&pool),
        )
        .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    let started = Instant::now();
    let mut pods: Vec<Pod> = Vec::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let modes = ["Auto", "VXLAN"];
    let mut mode = 0;
    let mut serial = 0;
    for _ in 0..steps {
        match rng.below(10) {
            0..=4 if pods.len() < 24 => {
                let node = cluster.name(rng.below(cluster.nodes.len()));
                serial += 1;
                pods.push(cluster.start_pod(&node, &format!("p{serial}")).await);
                *counts.entry("pods started").or_default() += 1;
            }
            0..=6 if !pods.is_empty() => {
                let pod = pods.swap_remove(rng.below(pods.len()));
                cluster.stop_pod(pod).await;
                *counts.entry("pods stopped").or_default() += 1;
            }
            7 => {
                let i = rng.below(cluster.nodes.len());
                cluster.stop_agent(i); // SIGKILL, as the Supervised drop sends
                cluster.restart_agent(i);
                *counts
                    .entry("agents killed (-9) and restarted")
                    .or_default() += 1;
            }
            8 if counts.get("API server restarts").copied().unwrap_or(0) < 3 => {
                ctx.cp.restart_apiserver().await?;
                *counts.entry("API server restarts").or_default() += 1;
            }
            _ => {
                mode = (mode + 1) % modes.len();
                set_mode(&ctx, modes[mode]).await?;
                *counts.entry("mode switches").or_default() += 1;
            }
        }
    }
    let churn = started.elapsed();

    // Invariants, once the agents have caught up (statuses are written within about a second).
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match invariants(&ctx, &cluster, &pods).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                last = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("{e}\n(first seen: {last})").into()),
        }
    }
    // Every pod reaches every other, over whatever mode the pool ended on.
    let mut pairs = 0;
    for to in &pods {
        let server = EchoServer::start(&to.ns, SocketAddr::new(to.ipv4(), 0));
        for from in pods.iter().filter(|p| p.name != to.name) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match tcp_exchange(&from.ns, server.addr) {
                    Ok(reply) if reply.starts_with(&from.ipv4().to_string()) => break,
                    other if Instant::now() > deadline => {
                        return Err(format!(
                            "{} ({}) -> {} ({}): {other:?}",
                            from.name, from.node, to.name, to.node
                        )
                        .into());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            pairs += 1;
        }
    }
    eprintln!(
        "soak: {steps} steps in {churn:?}: {counts:?}; {} pods left, {pairs} pod pairs reachable, final mode {}",
        pods.len(),
        modes[mode]
    );
    for pod in pods {
        cluster.stop_pod(pod).await;
    }
    Ok(())
}

/// The invariants, or the first one that does not hold.
async fn invariants(ctx: &Ctx, cluster: &LocalCluster, pods: &[Pod]) -> Result<(), String> {
    let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    let blocks = sinew_e2e::usage::block_allocations(&ctx.client, Some("soak-pool"))
        .await
        .map_err(|e| e.to_string())?;
    for node in &cluster.nodes {
        let store = Store::new(&node.state_dir())
            .snapshot()
            .map_err(|e| format!("{}: store: {e}", node.name))?;
        // No address held twice, across every node's store.
        for a in store.attachments.values() {
            for h in &a.addresses {
                if let Some(other) = owner.insert(h.ip, format!("{}/{}", node.name, a.container_id))
                {
                    return Err(format!(
                        "{} held twice: {other} and {}/{}",
                        h.ip, node.name, a.container_id
                    ));
                }
            }
        }
        // No leaked veth: the node's sinew veths are exactly its attachments'.
        let veths: BTreeSet<String> = node
            .netlink()
            .links()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|l| l.name.starts_with(HOST_VETH_PREFIX))
            .map(|l| l.name)
            .collect();
        let recorded: BTreeSet<String> = store
            .attachments
            .values()
            .map(|a| a.host_veth.clone())
            .collect();
        if veths != recorded {
            return Err(format!(
                "{}: veths {veths:?} but attachments {recorded:?}",
                node.name
            ));
        }
        // Every block's usage is the node's store.
        for (b, allocations) in blocks.iter().filter(|(b, _)| b.spec.node == node.name) {
            let cidr: Cidr = b.spec.cidr.parse().map_err(|e| format!("{e}"))?;
            let in_store: BTreeSet<String> = store
                .attachments
                .values()
                .flat_map(|a| a.addresses.iter().map(|h| h.ip))
                .filter(|ip| cidr.contains(*ip))
                .map(|ip| ip.to_string())
                .collect();
            let in_status: BTreeSet<String> = allocations.iter().map(|a| a.ip.clone()).collect();
            if in_store != in_status {
                return Err(format!(
                    "IPBlock {} ({}): status {in_status:?}, store {in_store:?}",
                    b.spec.cidr, node.name
                ));
            }
        }
    }
    // Every live pod's address is recorded on its node.
    for pod in pods {
        let holder = owner.get(&pod.ipv4());
        if !holder.is_some_and(|h| h.starts_with(&format!("{}/", pod.node))) {
            return Err(format!(
                "pod {} ({}) is held by {holder:?}",
                pod.name,
                pod.ipv4()
            ));
        }
    }
    Ok(())
}
