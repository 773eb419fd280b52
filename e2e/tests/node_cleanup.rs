//! Deleting the `ClusterNetwork` makes every agent clean its node: conflist first, then the
//! plugin binary, then routes, the VXLAN device and the nftables table. (Its own binary: the
//! `ClusterNetwork` is a cluster singleton.) Needs root and the Go-built control plane.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use sinew_crds::node::NodeReport;
use sinew_crds::{ClusterNetwork, IPPool};
use sinew_e2e::cluster::{CLUSTER_LABEL, LocalCluster};
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::{require, tests};

fn main() -> ExitCode {
    if !require::is_root() {
        require::missing(
            "node clean-up",
            "nodes are network namespaces, which needs root",
        );
        return ExitCode::SUCCESS;
    }
    let code = sinew_e2e::harness::run(
        |ctx| async move { sinew_e2e::operator::agents_setup(&ctx, false).await },
        tests![deleting_the_cluster_network_leaves_every_node_clean],
    );
    sinew_e2e::operator::stop_kept();
    code
}

async fn deleting_the_cluster_network_leaves_every_node_clean(ctx: Ctx) -> TestResult {
    let networks: Api<ClusterNetwork> = Api::all(ctx.client.clone());
    // The operator's finalizer holds the object while agents clean up; this test plays it.
    let cn = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork",
                    "metadata": {"name": "default", "finalizers": ["sinew.dev/test-hold"]}, "spec": {}});
    networks
        .patch(
            "default",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&cn),
        )
        .await?;
    let cluster = LocalCluster::start(&ctx.cp, "cl", &[0, 1]).await;
    let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "cl-pool"},
                      "spec": {"cidr": "10.106.0.0/24", "blockSize": 28, "mode": "Auto",
                               "nodeSelector": {"matchLabels": {CLUSTER_LABEL: "cl"}}}});
    Api::<IPPool>::all(ctx.client.clone())
        .patch(
            "cl-pool",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&pool),
        )
        .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.peer_routes(&cluster.name(0)).is_empty() {
        assert!(Instant::now() < deadline, "no peer routes were programmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A pod still runs on the first node when sinew is uninstalled.
    let pod = cluster.start_pod(&cluster.name(0), "survivor").await;

    networks.delete("default", &DeleteParams::default()).await?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node_state = |n: &Node| {
        n.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("sinew.dev/node-state"))
            .cloned()
            .unwrap_or_default()
    };
    // Its node keeps what the pod's DEL needs (conflist, plugin, routes) and says why.
    let first = &cluster.nodes[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = node_state(&nodes.get(&first.name).await?);
        if state.contains("CleanUpWaiting") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} never said it waits for its pod: {state}\n{}",
            first.name,
            first.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.conf_dir().join("10-sinew.conflist").exists());
    assert!(first.bin_dir().join("sinew").exists());
    // No new pod gets an address there meanwhile.
    let refused = cluster.networker.add(
        first,
        &sinew_e2e::cluster::PodRef {
            namespace: "default".into(),
            name: "latecomer".into(),
            uid: "latecomer-uid".into(),
        },
        sinew_e2e::netsim::netns("pod").path(),
    );
    assert!(
        !refused.success,
        "a new pod got an address during uninstall: {}",
        refused.stdout
    );
    // The runtime tears the pod down: DEL works, and then the node is cleaned.
    cluster.stop_pod(pod).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &cluster.nodes {
        loop {
            let n = nodes.get(&node.name).await?;
            let cleaned = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("sinew.dev/node-state"))
                .and_then(|s| NodeReport::parse(s))
                .is_some_and(|r| r.cleaned_up);
            if cleaned {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not report clean-up:\n{}",
                node.name,
                node.agent_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = cluster.leftovers(&node.name);
        assert!(left.is_empty(), "{} is not clean: {left:?}", node.name);
    }
    let release = json!({"metadata": {"finalizers": null}});
    networks
        .patch("default", &PatchParams::default(), &Patch::Merge(&release))
        .await?;
    Ok(())
}
