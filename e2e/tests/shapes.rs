//! The shapes production clusters have, on nodes simulated as network namespaces against the
//! real API server: a pool per zone (selecting some nodes only) reached from every node and
//! every other pool; nodes that boot with strict reverse-path filtering (RHEL's default) on
//! an underlay that drops every packet addressed from or to a pod (a cloud VPC's
//! source/destination check), where VXLAN must carry everything, node -> pod included, and
//! Routed must be named as the cause. Needs root and the Go-built control plane.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sinew_crds::IPPool;
use sinew_crds::node::{NodeReport, ProblemKind};
use sinew_e2e::cluster::{CLUSTER_LABEL, LocalCluster, Pod, Shape};
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::netsim::{EchoServer, tcp_exchange};
use sinew_e2e::{require, tests};

fn main() -> ExitCode {
    if !require::is_root() {
        require::missing("shapes", "nodes are network namespaces, which needs root");
        return ExitCode::SUCCESS;
    }
    let code = sinew_e2e::harness::run(
        |ctx| async move { sinew_e2e::operator::agents_setup(&ctx, true).await },
        tests![
            a_zones_pool_is_reached_from_every_node_and_pool,
            strict_nodes_on_a_cloud_underlay_work_in_vxlan_and_routed_is_named,
            a_pod_cannot_send_as_another_pod_or_as_its_node,
        ],
    );
    sinew_e2e::operator::stop_kept();
    code
}

async fn pool(
    ctx: &Ctx,
    name: &str,
    selector: serde_json::Value,
    cidr: &str,
    mode: &str,
) -> TestResult {
    let pool = json!({
        "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name},
        "spec": {"cidr": cidr, "blockSize": 28, "mode": mode,
                 "nodeSelector": {"matchLabels": selector}},
    });
    Api::<IPPool>::all(ctx.client.clone())
        .patch(name, &PatchParams::apply("sinew-e2e"), &Patch::Apply(&pool))
        .await?;
    Ok(())
}

async fn set_mode(ctx: &Ctx, name: &str, mode: &str) -> TestResult {
    Api::<IPPool>::all(ctx.client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mode": mode}})),
        )
        .await?;
    Ok(())
}

/// One TCP exchange from `from` (a pod's or a node's namespace) to `to`; the server must see
/// the client's own address when `source` is given (no NAT between pods).
fn exchange(
    from: (&str, &sinew_node_lib::netns::NetNs),
    to: &Pod,
    source: Option<IpAddr>,
) -> Result<(), String> {
    let server = EchoServer::start(&to.ns, SocketAddr::new(to.ipv4(), 0));
    let reply =
        tcp_exchange(from.1, server.addr).map_err(|e| format!("{} -> {}: {e}", from.0, to.name))?;
    match source {
        Some(ip) if !reply.starts_with(&ip.to_string()) => Err(format!(
            "{} -> {}: the server saw {reply:?}, not {ip}",
            from.0, to.name
        )),
        _ => Ok(()),
    }
}

/// Every pod reaches every other pod (seeing its real address) and every node reaches every
/// pod; all failing paths are listed.
fn full_mesh(cluster: &LocalCluster, pods: &[Pod]) -> Result<(), String> {
    let mut failed = Vec::new();
    for a in pods {
        for b in pods.iter().filter(|b| b.name != a.name) {
            if let Err(e) = exchange((&a.name, &a.ns), b, Some(a.ipv4())) {
                failed.push(e);
            }
        }
    }
    for node in &cluster.nodes {
        for p in pods {
            if let Err(e) = exchange((&node.name, &node.ns), p, None) {
                failed.push(e);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} path(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        ))
    }
}

async fn eventually_mesh(cluster: &LocalCluster, pods: &[Pod], what: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match full_mesh(cluster, pods) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                let logs: String = cluster
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "\n--- routes {} ---\n{:?}",
                            n.name,
                            cluster.peer_routes(&n.name)
                        )
                    })
                    .collect();
                return Err(format!("{what}: {e}{logs}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A pool for one zone (it selects one node) beside the cluster-wide pool: its pod is reached
/// from pods of the other pool and from every node, the zone's node included, in every mode
/// and in mixed modes, on nodes with strict reverse-path filtering (a mix makes the paths
/// asymmetric); nodes outside the zone route its blocks though it never selects them.
async fn a_zones_pool_is_reached_from_every_node_and_pool(ctx: Ctx) -> TestResult {
    // zn-0 and zn-1 (the zone's node) share a subnet; zn-2 is behind the router.
    let shape = Shape {
        strict_nodes: true,
        cloud_underlay: false,
    };
    let cluster = LocalCluster::start_shaped(&ctx.cp, "zn", &[0, 0, 1], shape).await;
    pool(
        &ctx,
        "zn-all",
        json!({CLUSTER_LABEL: "zn"}),
        "10.116.0.0/24",
        "Auto",
    )
    .await?;
    pool(
        &ctx,
        "zn-zone",
        json!({"kubernetes.io/hostname": "zn-1"}),
        "10.116.1.0/24",
        "Auto",
    )
    .await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "zone-team", "annotations": {"sinew.dev/ippool": "zn-zone"}}});
    Api::<Namespace>::all(ctx.client.clone())
        .patch(
            "zone-team",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&ns),
        )
        .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    // The namespace's pool must be known on zn-1 before its pod starts.
    let mirrored = cluster.nodes[1].state_dir().join("namespaces/zone-team");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&mirrored)
        .map(|s| s != "zn-zone")
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "namespace annotation not mirrored to zn-1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let zone_range: sinew_crds::Cidr = "10.116.1.0/24".parse()?;
    let mut pods = vec![
        cluster.start_pod(&cluster.name(0), "zn-a").await,
        cluster.start_pod(&cluster.name(1), "zn-b").await,
        cluster.start_pod(&cluster.name(2), "zn-c").await,
    ];
    let zoned = cluster
        .start_pod_in(&cluster.name(1), "zone-team", "zn-z")
        .await;
    assert!(
        zone_range.contains(zoned.ipv4()),
        "the zone's pod got {}",
        zoned.ipv4()
    );
    pods.push(zoned);
    for (all, zone) in [
        ("Auto", "Auto"),
        ("VXLAN", "VXLAN"),
        ("Auto", "VXLAN"),
        ("VXLAN", "Auto"),
    ] {
        set_mode(&ctx, "zn-all", all).await?;
        set_mode(&ctx, "zn-zone", zone).await?;
        eventually_mesh(
            &cluster,
            &pods,
            &format!("zn-all in {all}, zn-zone in {zone}"),
        )
        .await?;
    }
    // Both subnets' nodes route the zone's block: zn-0 and zn-2 never select zn-zone.
    for node in [cluster.name(0), cluster.name(2)] {
        let routes = cluster.peer_routes(&node);
        assert!(
            routes.keys().any(|dst| dst.starts_with("10.116.1.")),
            "{node} has no route to the zone's block: {routes:?}"
        );
    }
    for p in pods {
        cluster.stop_pod(p).await;
    }
    Ok(())
}

async fn report(ctx: &Ctx, node: &str) -> Result<NodeReport, kube::Error> {
    sinew_e2e::cluster::node_report(&ctx.client, node).await
}

/// RHEL-like nodes (`rp_filter=1` from boot) on an underlay that drops pod-addressed packets
/// like a cloud VPC: in VXLAN mode pod -> pod and node -> pod work across nodes, on one
/// subnet and across the router (the node's own traffic into the tunnel leaves with its
/// tunnel address, so the reply comes back through the tunnel); switched to Auto, the nodes
/// on one subnet route directly, the underlay drops it, and each names the other as
/// unreachable over the plain route with the underlay as the cause and VXLAN as the fix.
async fn strict_nodes_on_a_cloud_underlay_work_in_vxlan_and_routed_is_named(
    ctx: Ctx,
) -> TestResult {
    let shape = Shape {
        strict_nodes: true,
        cloud_underlay: true,
    };
    let cluster = LocalCluster::start_shaped(&ctx.cp, "cu", &[0, 0, 1], shape).await;
    pool(
        &ctx,
        "cu-pool",
        json!({CLUSTER_LABEL: "cu"}),
        "10.117.0.0/24",
        "VXLAN",
    )
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let range: sinew_crds::Cidr = "10.117.0.0/24".parse()?;
    for node in &cluster.nodes {
        assert_eq!(
            sinew_e2e::netsim::read_sysctl(&node.ns, "net.ipv4.conf.all.rp_filter"),
            "1"
        );
        let mut nl = node.netlink();
        let vx = nl.link_by_name("sinew.vxlan")?.ok_or("no VXLAN device")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !nl
            .addresses(vx.index)?
            .iter()
            .any(|(a, _)| range.contains(*a))
        {
            assert!(
                Instant::now() < deadline,
                "{}: sinew.vxlan has no address of the node's block: {:?}",
                node.name,
                nl.addresses(vx.index)?
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let pods = vec![
        cluster.start_pod(&cluster.name(0), "cu-a").await,
        cluster.start_pod(&cluster.name(1), "cu-b").await,
        cluster.start_pod(&cluster.name(2), "cu-c").await,
    ];
    eventually_mesh(
        &cluster,
        &pods,
        "VXLAN on a cloud underlay with strict nodes",
    )
    .await?;

    // Auto: cu-0 and cu-1 share a subnet and route directly, which this underlay drops.
    set_mode(&ctx, "cu-pool", "Auto").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = report(&ctx, &cluster.name(0)).await?;
        let named = r.problems.iter().any(|p| {
            p.kind == ProblemKind::PeerUnreachable
                && p.message.contains(&cluster.name(1))
                && p.evidence.iter().any(|e| e.contains("addressed to pods"))
                && p.fix.as_deref().is_some_and(|f| f.contains("VXLAN"))
        });
        if named {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "routed pod traffic dropped by the underlay was not named: {:?}\n{}",
            r.problems,
            cluster.nodes[0].agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        exchange((&pods[0].name, &pods[0].ns), &pods[1], None).is_err(),
        "routed traffic crossed an underlay that drops pod addresses: the test's underlay is not a cloud's"
    );

    // Back to VXLAN: everything works again and the problem clears.
    set_mode(&ctx, "cu-pool", "VXLAN").await?;
    eventually_mesh(&cluster, &pods, "back in VXLAN").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while report(&ctx, &cluster.name(0))
        .await?
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::PeerUnreachable)
    {
        assert!(
            Instant::now() < deadline,
            "PeerUnreachable did not clear in VXLAN"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in pods {
        cluster.stop_pod(p).await;
    }
    Ok(())
}

/// Whether UDP datagrams sent from `from`'s namespace with source `src` reach `to`.
fn udp_arrives(from: &Pod, src: IpAddr, to: &Pod) -> Result<bool, String> {
    let rx = to
        .ns
        .run_in(|| UdpSocket::bind(SocketAddr::new(to.ipv4(), 0)))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    rx.set_read_timeout(Some(Duration::from_millis(700)))
        .map_err(|e| e.to_string())?;
    let dst = rx.local_addr().map_err(|e| e.to_string())?;
    from.ns
        .run_in(|| -> std::io::Result<()> {
            let tx = UdpSocket::bind(SocketAddr::new(src, 0))?;
            for _ in 0..3 {
                tx.send_to(b"who am i", dst)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("sending from {src}: {e}"))?;
    let mut buf = [0u8; 32];
    Ok(rx.recv_from(&mut buf).is_ok())
}

/// Anti-spoofing: a pod's datagrams from its own address arrive; from another pod's address
/// or its node's address (put on its interface by the pod itself) they are dropped at its
/// node, whether the destination is on the same node or across the tunnel.
async fn a_pod_cannot_send_as_another_pod_or_as_its_node(ctx: Ctx) -> TestResult {
    let cluster = LocalCluster::start(&ctx.cp, "sp", &[0, 1]).await;
    pool(
        &ctx,
        "sp-pool",
        json!({CLUSTER_LABEL: "sp"}),
        "10.118.0.0/24",
        "VXLAN",
    )
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let a = cluster.start_pod(&cluster.name(0), "sp-a").await;
    let b = cluster.start_pod(&cluster.name(1), "sp-b").await;
    let c = cluster.start_pod(&cluster.name(0), "sp-c").await;
    for to in [&b, &c] {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !udp_arrives(&a, a.ipv4(), to)? {
            assert!(
                Instant::now() < deadline,
                "sp-a's datagrams from its own address do not reach {}",
                to.name
            );
        }
    }
    let node_ip = IpAddr::V4(cluster.nodes[0].ip);
    for forged in [c.ipv4(), node_ip, b.ipv4()] {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["addr", "add", &format!("{forged}/32"), "dev", "eth0"]);
        sinew_e2e::netsim::in_netns(&mut cmd, &a.ns);
        assert!(cmd.status()?.success(), "adding {forged} in the pod");
        for to in [&b, &c] {
            if to.ipv4() == forged {
                continue;
            }
            assert!(
                !udp_arrives(&a, forged, to)?,
                "pod sp-a sent as {forged} and reached {}",
                to.name
            );
        }
    }
    for p in [a, b, c] {
        cluster.stop_pod(p).await;
    }
    Ok(())
}
