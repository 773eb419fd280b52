//! `demo` (`make demo`): sinew's main job on this machine. Builds what is needed, starts a real
//! control plane, installs sinew with `helm install` of charts/sinew (CRDs, RBAC, the default
//! ClusterNetwork and pool), runs the operator and a 3-node local cluster (nodes as network
//! namespaces, two of them on one subnet and one behind a router) with one agent per node,
//! each under the identity the chart gives it, starts pods on every node, prints a connectivity matrix and the pool status, switches the
//! pool's mode live and shows the matrix again. Then it leaves everything up until Ctrl-C
//! (`--no-wait` tears down at once). Needs root.

use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sinew_crds::IPPool;
use sinew_e2e::ControlPlane;
use sinew_e2e::cluster::{LocalCluster, Pod};
use sinew_e2e::helm::Helm;
use sinew_e2e::netsim::{EchoServer, tcp_exchange};

fn step(msg: &str) {
    eprintln!("\n\x1b[1m==> {msg}\x1b[0m");
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let Ok(bin) = cp.tools().path("kubectl") else {
        return "kubectl not built".into();
    };
    let out = Command::new(bin)
        .arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
        .args(args)
        .output();
    match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("kubectl: {e}"),
    }
}

/// Every pod connects to every other pod; the server reports the source address it saw.
fn matrix(pods: &[Pod]) -> (String, usize) {
    let mut out = format!("{:>22}", "from \\ to");
    for p in pods {
        out += &format!(
            " {:>14}",
            format!("{}@{}", p.name, p.node.rsplit('-').next().unwrap_or(""))
        );
    }
    out.push('\n');
    let mut failures = 0;
    for from in pods {
        out += &format!("{:>22}", format!("{} {}", from.name, from.ipv4()));
        for to in pods {
            let cell = if from.name == to.name {
                "-".to_string()
            } else {
                let server = EchoServer::start(&to.ns, SocketAddr::new(to.ipv4(), 0));
                match tcp_exchange(&from.ns, server.addr) {
                    Ok(reply) if reply.starts_with(&from.ipv4().to_string()) => "ok".to_string(),
                    Ok(_) => {
                        failures += 1;
                        "NAT!".into()
                    }
                    Err(_) => {
                        failures += 1;
                        "FAIL".into()
                    }
                }
            };
            out += &format!(" {cell:>14}");
        }
        out.push('\n');
    }
    (out, failures)
}

async fn converge(cluster: &LocalCluster, expect_vxlan_to_far_node: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let near = cluster.name(0);
    while Instant::now() < deadline {
        let routes = cluster.peer_routes(&near);
        let vxlan = routes
            .values()
            .filter(|r| r.contains("sinew.vxlan"))
            .count();
        let wanted = if expect_vxlan_to_far_node {
            routes.len()
        } else {
            1
        };
        if routes.len() >= 2 && vxlan == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn demo(wait: bool) -> Result<usize, Box<dyn std::error::Error>> {
    if !sinew_e2e::require::is_root() {
        return Err("the demo creates network namespaces: run it as root".into());
    }
    step(
        "building sinew (plugin, agent, operator) and the upstream control plane (cached after the first run)",
    );
    sinew_e2e::plugin::workspace_binary("sinew-operator", "sinew-operator");
    sinew_e2e::plugin::workspace_binary("sinew-node-agent", "sinew-node");
    sinew_e2e::plugin::sinew_binary();
    step("starting etcd and kube-apiserver on 127.0.0.1");
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    step("helm install sinew charts/sinew --namespace sinew-system --create-namespace");
    let helm = Helm::new(&cp)?;
    println!("{}", helm.install(&[])?);
    step(
        "running the operator as the chart's Deployment would (its service account, its settings; no kubelet here)",
    );
    let _operator = sinew_e2e::helm::start_operator(&cp, &client, "sinew-operator-0")
        .await
        .map_err(|e| e.to_string())?;

    step(
        "bringing up 3 nodes (demo-0, demo-1 on 10.99.0.0/24; demo-2 on 10.99.1.0/24 behind a router), one sinew-node agent each with its node-bound service-account token",
    );
    let cluster = LocalCluster::start_with(&cp, "demo", &[0, 0, 1], true).await;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    converge(&cluster, false).await;

    step("starting 2 pods on every node (network namespaces attached through upstream cnitool)");
    let mut pods = Vec::new();
    for n in 0..3 {
        for p in 0..2 {
            pods.push(
                cluster
                    .start_pod(&cluster.name(n), &format!("pod{}{}", n, p))
                    .await,
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    step(
        "TCP from every pod to every other (ok = connected, and the receiver saw the sender's own pod IP: no NAT); mode Auto: routed to demo-1, VXLAN to demo-2 across the router",
    );
    let (m, mut failures) = matrix(&pods);
    println!("{m}");
    println!(
        "{}",
        kubectl(&cp, &["get", "ippools,ipblocks,ipblockusages"])
    );

    step(
        r#"switching the chart's pool default-ipv4 to VXLAN, live (kubectl patch ippool default-ipv4 --type merge -p '{"spec":{"mode":"VXLAN"}}')"#,
    );
    let pools: Api<IPPool> = Api::all(client.clone());
    pools
        .patch(
            "default-ipv4",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mode": "VXLAN"}})),
        )
        .await?;
    converge(&cluster, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    step("connectivity matrix, mode VXLAN");
    let (m, f) = matrix(&pods);
    failures += f;
    println!("{m}");
    println!("{}", kubectl(&cp, &["get", "ippools,clusternetwork"]));
    println!("routes on {} (proto 116 = sinew peers):", cluster.name(0));
    for (dst, via) in cluster.peer_routes(&cluster.name(0)) {
        println!("  {dst} {via}");
    }
    if wait {
        step("the cluster stays up; in another shell:");
        println!("  export KUBECONFIG={}", cp.kubeconfig_path().display());
        if let Ok(k) = cp.tools().path("kubectl") {
            println!("  {} get ippools,ipblocks,ipblockusages,nodes", k.display());
        }
        for n in &cluster.nodes {
            println!(
                "  ip netns exec {} ip route    # node {}",
                n.ns.path()
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                n.name
            );
        }
        println!("Press Ctrl-C to tear everything down.");
        tokio::signal::ctrl_c().await?;
    }
    step("tearing down");
    for p in pods {
        cluster.stop_pod(p).await;
    }
    Ok(failures)
}

fn main() -> ExitCode {
    let wait = !std::env::args().any(|a| a == "--no-wait");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(wait)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            eprintln!("demo: {n} connections failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}
