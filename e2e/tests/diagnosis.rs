//! Diagnosis: classic CNI failures injected on nodes simulated as network namespaces, each
//! named by its agent (at the product's default 10 s resync) within 10 s (Node report, `sinew_node_problem{kind}`, Events, `kubectl
//! sinew doctor`), cleared when undone; a healthy cluster reports nothing over a bounded soak.
//! Needs root and the Go-built control plane.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sinew_crds::IPPool;
use sinew_crds::node::{NodeReport, ProblemKind};
use sinew_e2e::cluster::{CLUSTER_LABEL, LocalCluster, SimNode};
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::{require, tests};

fn main() -> ExitCode {
    if !require::is_root() {
        require::missing(
            "diagnosis",
            "nodes are network namespaces, which needs root",
        );
        return ExitCode::SUCCESS;
    }
    let code = sinew_e2e::harness::run(
        |ctx| async move { sinew_e2e::operator::agents_setup(&ctx, true).await },
        tests![
            a_healthy_cluster_reports_no_problem,
            each_injected_failure_is_named_within_10s_and_cleared_when_undone,
            path_failures_between_nodes_are_named_within_10s_and_cleared,
        ],
    );
    sinew_e2e::operator::stop_kept();
    code
}

async fn pool(ctx: &Ctx, name: &str, cluster: &str, cidr: &str) -> TestResult {
    let pool = json!({
        "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name},
        "spec": {"cidr": cidr, "blockSize": 26, "mode": "Auto",
                 "nodeSelector": {"matchLabels": {CLUSTER_LABEL: cluster}}},
    });
    Api::<IPPool>::all(ctx.client.clone())
        .patch(name, &PatchParams::apply("sinew-e2e"), &Patch::Apply(&pool))
        .await?;
    Ok(())
}

async fn report(ctx: &Ctx, node: &str) -> Result<NodeReport, kube::Error> {
    sinew_e2e::cluster::node_report(&ctx.client, node).await
}

/// Polls the node's report until `want` holds; returns the time it took.
async fn until(
    ctx: &Ctx,
    node: &SimNode,
    what: &str,
    within: Duration,
    want: impl Fn(&NodeReport) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let r = report(ctx, &node.name).await.map_err(|e| e.to_string())?;
        if want(&r) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!(
                "{what}: not within {within:?}; report: {:?}\n{}",
                r.problems,
                node.agent_log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has(kind: ProblemKind) -> impl Fn(&NodeReport) -> bool {
    move |r| r.problems.iter().any(|p| p.kind == kind)
}

fn lacks(kind: ProblemKind) -> impl Fn(&NodeReport) -> bool {
    move |r| r.ready && !r.problems.iter().any(|p| p.kind == kind)
}

/// Runs `ip ARGS` inside the node's namespace.
fn ip(node: &SimNode, args: &str) -> TestResult {
    let mut cmd = Command::new("ip");
    cmd.args(args.split_whitespace());
    sinew_e2e::netsim::in_netns(&mut cmd, &node.ns);
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("ip {args}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// `kind` is named on every channel: `kubectl sinew doctor` (exit 1), the agent's
/// `sinew_node_problem` metric and an Event on the Node.
async fn named_everywhere(ctx: &Ctx, node: &SimNode, kind: &str) -> TestResult {
    let (code, text) = doctor(ctx, &node.name, false)?;
    assert!(
        code == 1 && text.contains(kind),
        "doctor on {}: {text}",
        node.name
    );
    let (_, metrics) = sinew_e2e::cluster::agent_http(node, "/metrics")?;
    let series = format!(
        "sinew_node_problem{{node=\"{}\",kind=\"{kind}\"}} ",
        node.name
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&series) && !l.ends_with(" 0")),
        "{series}missing or 0:\n{metrics}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ctx.client.clone(), "default");
    let start = Instant::now();
    loop {
        let list = events.list(&Default::default()).await?;
        if list.items.iter().any(|e| {
            e.reason.as_deref() == Some(kind)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node.name.as_str())
        }) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("no {kind} Event on Node {}", node.name).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kubectl sinew doctor NODE -o json|text`: (exit code, stdout).
fn doctor(ctx: &Ctx, node: &str, json: bool) -> Result<(i32, String), String> {
    let bin = sinew_e2e::plugin::workspace_binary("kubectl-sinew", "kubectl-sinew");
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", ctx.cp.kubeconfig_path())
        .args(["doctor", node]);
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

async fn a_healthy_cluster_reports_no_problem(ctx: Ctx) -> TestResult {
    let cluster = LocalCluster::start_default_resync(&ctx.cp, "dh", &[0, 1]).await;
    // Node 1 filters reverse paths strictly, as RHEL's defaults do.
    sinew_e2e::netsim::sysctl(&cluster.nodes[1].ns, "net.ipv4.conf.all.rp_filter", "1");
    pool(&ctx, "dh-pool", "dh", "10.120.0.0/16").await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let a = cluster.start_pod(&cluster.name(0), "dh-a").await;
    let b = cluster.start_pod(&cluster.name(1), "dh-b").await;
    // A bounded soak: 15 s of passes (resync is 2 s here) with pods coming and going.
    let end = Instant::now() + Duration::from_secs(15);
    let mut round = 0;
    while Instant::now() < end {
        for node in &cluster.nodes {
            let r = report(&ctx, &node.name).await?;
            assert!(
                r.problems.is_empty(),
                "healthy node {} reports {:?}\n{}",
                node.name,
                r.problems,
                node.agent_log()
            );
        }
        let p = cluster
            .start_pod(&cluster.name(round % 2), &format!("dh-churn-{round}"))
            .await;
        cluster.stop_pod(p).await;
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for node in &cluster.nodes {
        let (code, out) = doctor(&ctx, &node.name, false)?;
        assert_eq!(code, 0, "doctor on a healthy node: {out}");
        assert!(out.contains("no problem found"), "{out}");
        let (_, metrics) = sinew_e2e::cluster::agent_http(node, "/metrics")?;
        assert!(
            metrics.contains(&format!(
                "sinew_node_problem{{node=\"{}\",kind=\"RouteConflict\"}} 0",
                node.name
            )),
            "{metrics}"
        );
    }
    // The probe mesh's VXLAN echoes pass there because the agent loosened sinew.vxlan only.
    let vxlan_rp = cluster.nodes[1]
        .ns
        .run_in(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/sinew.vxlan/rp_filter"))??;
    assert_eq!(vxlan_rp.trim(), "2");
    let all_rp =
        sinew_e2e::netsim::read_sysctl(&cluster.nodes[1].ns, "net.ipv4.conf.all.rp_filter");
    assert_eq!(all_rp, "1", "the node's own setting is left alone");
    cluster.stop_pod(a).await;
    cluster.stop_pod(b).await;
    Ok(())
}

async fn each_injected_failure_is_named_within_10s_and_cleared_when_undone(ctx: Ctx) -> TestResult {
    let cluster = LocalCluster::start_default_resync(&ctx.cp, "di", &[0, 1]).await;
    pool(&ctx, "di-pool", "di", "10.121.0.0/16").await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let node = &cluster.nodes[0];
    let within = Duration::from_secs(10);
    let mut took = Vec::new();

    // A leftover bridge of another CNI, with a route into the pool's range.
    ip(node, "link add cni0 type bridge")?;
    ip(node, "addr add 10.121.0.129/25 dev cni0")?;
    ip(node, "link set cni0 up")?;
    took.push((
        "ForeignInterfaces",
        until(
            &ctx,
            node,
            "cni0 named",
            within,
            has(ProblemKind::ForeignInterfaces),
        )
        .await?,
    ));
    took.push((
        "RouteConflict (route)",
        until(&ctx, node, "its route named", within, |r| {
            r.problems.iter().any(|p| {
                p.kind == ProblemKind::RouteConflict
                    && p.evidence
                        .iter()
                        .any(|e| e.contains("10.121.0.128/25 dev cni0"))
            })
        })
        .await?,
    ));
    // A policy rule sending the pool's traffic to another table.
    ip(node, "route add blackhole default table 100")?;
    ip(node, "rule add from 10.121.0.0/16 lookup 100 priority 100")?;
    took.push((
        "RouteConflict (rule)",
        until(&ctx, node, "the rule named", within, |r| {
            r.problems.iter().any(|p| {
                p.kind == ProblemKind::RouteConflict
                    && p.evidence.iter().any(|e| e.contains("lookup 100"))
            })
        })
        .await?,
    ));
    // A veth of sinew's that belongs to no pod.
    ip(
        node,
        "link add snw0000deadbeef type veth peer name deadpeer0",
    )?;
    took.push((
        "DanglingVeth",
        until(&ctx, node, "the veth named", within, |r| {
            r.problems.iter().any(|p| {
                p.kind == ProblemKind::DanglingVeth
                    && p.evidence.contains(&"snw0000deadbeef".to_string())
            })
        })
        .await?,
    ));
    // Another vendor's conflist that sorts first.
    std::fs::write(
        node.conf_dir().join("05-other.conflist"),
        br#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}"#,
    )?;
    took.push((
        "ConflistShadowed",
        until(
            &ctx,
            node,
            "the conflist named",
            within,
            has(ProblemKind::ConflistShadowed),
        )
        .await?,
    ));
    eprintln!("detection times: {took:?}");

    // Every channel says it: doctor (text and JSON, exit 1), the metric, Events.
    let (code, text) = doctor(&ctx, &node.name, false)?;
    eprintln!("$ kubectl sinew doctor {}\n{text}", node.name);
    assert_eq!(code, 1, "{text}");
    for kind in [
        "ForeignInterfaces",
        "RouteConflict",
        "DanglingVeth",
        "ConflistShadowed",
    ] {
        assert!(text.contains(kind), "doctor does not name {kind}:\n{text}");
    }
    assert!(text.contains("fix: "), "{text}");
    let (_, json_out) = doctor(&ctx, &node.name, true)?;
    let findings: serde_json::Value = serde_json::from_str(&json_out)?;
    assert_eq!(
        findings[0]["severity"], "Critical",
        "worst first: {json_out}"
    );
    let (_, metrics) = sinew_e2e::cluster::agent_http(node, "/metrics")?;
    assert!(
        metrics.contains(&format!(
            "sinew_node_problem{{node=\"{}\",kind=\"RouteConflict\"}} 2",
            node.name
        )),
        "{metrics}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ctx.client.clone(), "default");
    let list = events.list(&Default::default()).await?;
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("RouteConflict")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                    == Some(node.name.as_str())),
        "no RouteConflict Event on the Node"
    );
    // The other node is not blamed.
    assert!(
        report(&ctx, &cluster.nodes[1].name)
            .await?
            .problems
            .is_empty()
    );

    // Undone, each clears; sinew's dangling veth goes by itself only after its grace period,
    // so it is removed here.
    std::fs::remove_file(node.conf_dir().join("05-other.conflist"))?;
    ip(node, "rule del priority 100")?;
    ip(node, "link delete cni0")?;
    ip(node, "link delete snw0000deadbeef")?;
    for kind in [
        ProblemKind::ConflistShadowed,
        ProblemKind::RouteConflict,
        ProblemKind::ForeignInterfaces,
        ProblemKind::DanglingVeth,
    ] {
        until(&ctx, node, "cleared", within, lacks(kind)).await?;
    }
    let (code, text) = doctor(&ctx, &node.name, false)?;
    assert_eq!(code, 0, "{text}");
    Ok(())
}

/// Failures between two nodes on different subnets (VXLAN between them): a lowered underlay
/// MTU on one, a blackholed peer, forwarding turned off. Pods on both nodes give each a block,
/// so each probes the other.
async fn path_failures_between_nodes_are_named_within_10s_and_cleared(ctx: Ctx) -> TestResult {
    // dp-0 and dp-2 share a subnet (routed), dp-1 is behind the router (VXLAN).
    let cluster = LocalCluster::start_default_resync(&ctx.cp, "dp", &[0, 1, 0]).await;
    pool(&ctx, "dp-pool", "dp", "10.122.0.0/16").await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let a = cluster.start_pod(&cluster.name(0), "dp-a").await;
    let b = cluster.start_pod(&cluster.name(1), "dp-b").await;
    let c = cluster.start_pod(&cluster.name(2), "dp-c").await;
    let (node, peer) = (&cluster.nodes[0], &cluster.nodes[1]);
    let within = Duration::from_secs(10);
    let mut took = Vec::new();
    let names = |kind: ProblemKind, what: &'static str| {
        let peer = peer.name.clone();
        move |r: &NodeReport| {
            r.problems.iter().any(|p| {
                p.kind == kind
                    && p.message.contains(&peer)
                    && p.evidence.iter().any(|e| e.contains(what))
            })
        }
    };

    // The peer's underlay link carries 1400 bytes: 1450-byte pod packets in VXLAN do not fit.
    ip(peer, "link set eth0 mtu 1400")?;
    took.push((
        "MTUMismatch (reported underlay)",
        until(
            &ctx,
            node,
            "the smaller underlay named",
            within,
            names(ProblemKind::MtuMismatch, "underlay MTU of 1400"),
        )
        .await?,
    ));
    took.push((
        "MTUMismatch (probes)",
        until(
            &ctx,
            node,
            "the largest passing size named",
            within,
            names(ProblemKind::MtuMismatch, "largest packet that passes is"),
        )
        .await?,
    ));
    let r = report(&ctx, &node.name).await?;
    let mtu = r
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::MtuMismatch)
        .ok_or("gone")?;
    eprintln!("MTUMismatch: {mtu:?}");
    named_everywhere(&ctx, node, "MTUMismatch").await?;
    // 1350 bytes of pod packet fill a 1400-byte link (a veth passes 4 bytes more).
    assert!(
        mtu.evidence
            .iter()
            .any(|e| (1350..=1354).any(|n| e.contains(&format!("passes is {n} bytes")))),
        "{mtu:?}"
    );
    ip(peer, "link set eth0 mtu 1500")?;
    until(
        &ctx,
        node,
        "MTUMismatch cleared",
        within,
        lacks(ProblemKind::MtuMismatch),
    )
    .await?;

    // The peer's address blackholed on this node: pods here cannot reach the peer's pods.
    ip(node, &format!("route add blackhole {}/32", peer.ip))?;
    took.push((
        "PeerUnreachable",
        until(
            &ctx,
            node,
            "the peer named",
            within,
            names(
                ProblemKind::PeerUnreachable,
                "does not answer over the underlay either",
            ),
        )
        .await?,
    ));
    named_everywhere(&ctx, node, "PeerUnreachable").await?;
    ip(node, &format!("route del blackhole {}/32", peer.ip))?;
    until(
        &ctx,
        node,
        "PeerUnreachable cleared",
        within,
        lacks(ProblemKind::PeerUnreachable),
    )
    .await?;

    // Strict reverse-path filtering with an asymmetric route: dp-2's pods arrive on eth0 but
    // this node routes part of dp-2's block out of another interface.
    let routed_peer = &cluster.nodes[2];
    let block = Api::<sinew_crds::IPBlock>::all(ctx.client.clone())
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|b| b.spec.node == routed_peer.name)
        .ok_or("dp-2 holds no block")?;
    let base = block
        .spec
        .cidr
        .split('/')
        .next()
        .ok_or("block")?
        .to_string();
    sinew_e2e::netsim::sysctl(&node.ns, "net.ipv4.conf.all.rp_filter", "1");
    ip(node, "link add asym0 type veth peer name asym1")?;
    ip(node, "link set asym1 up")?;
    ip(node, "link set asym0 up")?;
    ip(node, &format!("route add {base}/27 dev asym0"))?;
    took.push((
        "RPFilterStrict",
        until(&ctx, node, "the dropped block named", within, |r| {
            r.problems.iter().any(|p| {
                p.kind == ProblemKind::RpFilterStrict
                    && p.evidence
                        .iter()
                        .any(|e| e.contains(&block.spec.cidr) && e.contains("on eth0"))
            })
        })
        .await?,
    ));
    named_everywhere(&ctx, node, "RPFilterStrict").await?;
    ip(node, "link delete asym0")?;
    until(
        &ctx,
        node,
        "RPFilterStrict cleared",
        within,
        lacks(ProblemKind::RpFilterStrict),
    )
    .await?;
    sinew_e2e::netsim::sysctl(&node.ns, "net.ipv4.conf.all.rp_filter", "0");

    // Forwarding turned off behind the agent's back: turned on again, and said.
    sinew_e2e::netsim::sysctl(&node.ns, "net.ipv4.ip_forward", "0");
    let start = Instant::now();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ctx.client.clone(), "default");
    loop {
        let on = sinew_e2e::netsim::read_sysctl(&node.ns, "net.ipv4.ip_forward") == "1";
        let evented = events
            .list(&Default::default())
            .await?
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("ForwardingOff")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some(node.name.as_str())
            });
        if on && evented {
            took.push(("ForwardingOff (repaired)", start.elapsed()));
            break;
        }
        if start.elapsed() > within {
            return Err(format!(
                "forwarding on: {on}, ForwardingOff Event: {evented}\n{}",
                node.agent_log()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("detection times: {took:?}");
    cluster.stop_pod(a).await;
    cluster.stop_pod(b).await;
    cluster.stop_pod(c).await;
    Ok(())
}
