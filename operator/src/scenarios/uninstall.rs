//! `sinew-operator uninstall` (Helm's pre-delete hook) against a mocked API server: it refuses,
//! writing nothing, while a pod holds an address, and otherwise deletes the `ClusterNetwork`
//! only once every pool is gone.

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use sinew_crds::{
    Allocation, IPBlock, IPBlockSpec, IPBlockUsage, IPBlockUsageSpec, IPBlockUsageStatus, IPPool,
};

use super::{USAGES, World, deleted, pool_spec, within};
use crate::uninstall::{Error, uninstall_polling};

const POOLS: &str = "/apis/sinew.dev/v1alpha1/ippools";
const BLOCKS: &str = "/apis/sinew.dev/v1alpha1/ipblocks";
const NETWORKS: &str = "/apis/sinew.dev/v1alpha1/clusternetworks";
const PODS: &str = "/api/v1/pods";

fn pool() -> IPPool {
    IPPool::new("p", pool_spec("10.244.0.0/16"))
}

/// Pool `p` as the API server returns it after a DELETE: deletion stamped, held by the
/// operator's finalizer, `Ready=False/Draining` with `message`.
fn draining(message: &str) -> Value {
    let mut draining = serde_json::to_value(pool()).expect("JSON");
    draining["metadata"]["deletionTimestamp"] =
        serde_json::to_value(deleted(Duration::ZERO)).expect("JSON");
    draining["metadata"]["finalizers"] = json!(["sinew.dev/cleanup"]);
    draining["status"] = json!({"conditions": [{"type": "Ready", "status": "False",
        "reason": "Draining", "message": message, "lastTransitionTime": "2026-11-30T00:00:00Z"}]});
    draining
}

fn list(kind: &str, items: Value) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": "7"}, "items": items})
}

fn pools(items: Value) -> Value {
    let mut l = list("IPPool", items);
    l["apiVersion"] = json!("sinew.dev/v1alpha1");
    l
}

fn networks(items: Value) -> Value {
    let mut l = list("ClusterNetwork", items);
    l["apiVersion"] = json!("sinew.dev/v1alpha1");
    l
}

fn blocks(items: Value) -> Value {
    let mut l = list("IPBlock", items);
    l["apiVersion"] = json!("sinew.dev/v1alpha1");
    l
}

fn usages(items: Value) -> Value {
    let mut l = list("IPBlock", items);
    l["apiVersion"] = json!("sinew.dev/v1alpha1");
    l
}

/// The block of CoreDNS's pod on `sinew-worker`.
fn coredns_block() -> IPBlock {
    IPBlock::new(
        "10-244-1-0-26",
        IPBlockSpec {
            pool: "p".into(),
            cidr: "10.244.1.0/26".into(),
            node: "sinew-worker".into(),
        },
    )
}

/// CoreDNS's pod on `sinew-worker`, as its agent reports it in the block's usage.
fn coredns_usage() -> IPBlockUsage {
    let b = coredns_block();
    let mut u = IPBlockUsage::new("10-244-1-0-26", IPBlockUsageSpec::of(&b.spec));
    u.status = Some(IPBlockUsageStatus {
        allocated: 1,
        allocations: vec![Allocation {
            ip: "10.244.1.2".into(),
            container_id: "ctr-coredns".into(),
            interface: "eth0".into(),
            pod_namespace: Some("kube-system".into()),
            pod_name: Some("coredns-7d4f-abcde".into()),
            pod_uid: Some("uid-coredns".into()),
            generation: 1,
        }],
    });
    u
}

/// A pod on the pod network that no block's status lists yet.
fn web_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web"},
           "spec": {"nodeName": "sinew-worker2", "containers": [{"name": "c", "image": "i"}]},
           "status": {"phase": "Running", "podIP": "10.244.2.9", "podIPs": [{"ip": "10.244.2.9"}]}})
}

#[tokio::test]
async fn uninstall_refuses_and_deletes_nothing_while_pods_hold_addresses() {
    let (ctx, api) = World::default().build();
    let scenario = api.play(|mut api| async move {
        api.expect(Method::GET, POOLS, 200, pools(json!([pool()])))
            .await;
        api.expect(Method::GET, BLOCKS, 200, blocks(json!([coredns_block()])))
            .await;
        api.expect(Method::GET, USAGES, 200, usages(json!([coredns_usage()])))
            .await;
        api.expect(Method::GET, PODS, 200, list("Pod", json!([web_pod()])))
            .await;
        // No DELETE may follow: the scenario refuses anything beyond this.
        api
    });
    let result = within(uninstall_polling(
        ctx.client.clone(),
        Duration::from_secs(5),
        Duration::ZERO,
        Duration::from_millis(1),
    ))
    .await;
    scenario.finish(ctx).await;
    let err = result.expect_err("refused");
    assert!(matches!(err, Error::PodsHoldAddresses { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("kube-system/coredns-7d4f-abcde on node sinew-worker (10.244.1.2)"),
        "{text}"
    );
    assert!(
        text.contains("shop/web on node sinew-worker2 (10.244.2.9)"),
        "{text}"
    );
    assert!(text.contains("Nothing was deleted"), "{text}");
    assert!(text.contains("run `helm uninstall` again"), "{text}");
}

#[tokio::test]
async fn uninstall_deletes_the_cluster_network_only_once_the_pools_are_gone() {
    let (ctx, api) = World::default().build();
    let draining = draining("settling");
    let network = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork",
                         "metadata": {"name": "default"}, "spec": {}});
    let scenario = api.play(move |mut api| async move {
        // The check: a pool, no allocation, only a host-network pod.
        api.expect(Method::GET, POOLS, 200, pools(json!([pool()]))).await;
        api.expect(Method::GET, BLOCKS, 200, blocks(json!([]))).await;
        api.expect(Method::GET, USAGES, 200, usages(json!([]))).await;
        let host = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kube-proxy-x", "namespace": "kube-system"},
            "spec": {"hostNetwork": true, "nodeName": "n", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "172.18.0.2"}});
        api.expect(Method::GET, PODS, 200, list("Pod", json!([host]))).await;
        // The pools go first, and the uninstall waits for them.
        api.expect(Method::GET, POOLS, 200, pools(json!([pool()]))).await;
        api.expect(Method::DELETE, &format!("{POOLS}/p"), 200, draining.clone())
            .await;
        api.expect(Method::GET, POOLS, 200, pools(json!([draining.clone()])))
            .await;
        api.expect(Method::GET, POOLS, 200, pools(json!([draining]))).await;
        api.expect(Method::GET, POOLS, 200, pools(json!([]))).await;
        // Only then the ClusterNetwork.
        api.expect(Method::GET, NETWORKS, 200, networks(json!([network.clone()])))
            .await;
        api.expect(
            Method::DELETE,
            &format!("{NETWORKS}/default"),
            200,
            network.clone(),
        )
        .await;
        api.expect(Method::GET, NETWORKS, 200, networks(json!([]))).await;
        api
    });
    let result = within(uninstall_polling(
        ctx.client.clone(),
        Duration::from_secs(5),
        Duration::ZERO,
        Duration::from_millis(1),
    ))
    .await;
    scenario.finish(ctx).await;
    result.expect("uninstalled");
}

#[tokio::test]
async fn a_pool_that_never_drains_times_out_before_the_cluster_network_is_touched() {
    let (ctx, api) = World::default().build();
    let draining = draining(
        "1 addresses of this pool are still in use; the pool is removed once its pods are gone",
    );
    let scenario = api.play(move |mut api| async move {
        api.expect(Method::GET, POOLS, 200, pools(json!([pool()])))
            .await;
        api.expect(Method::GET, BLOCKS, 200, blocks(json!([])))
            .await;
        api.expect(Method::GET, USAGES, 200, usages(json!([])))
            .await;
        api.expect(Method::GET, PODS, 200, list("Pod", json!([])))
            .await;
        api.expect(Method::GET, POOLS, 200, pools(json!([pool()])))
            .await;
        api.expect(Method::DELETE, &format!("{POOLS}/p"), 200, draining.clone())
            .await;
        // A pod got an address between the check and the deletion: the pool stays draining
        // until the timeout (zero here), which names the pod; the ClusterNetwork is never
        // deleted.
        api.expect(Method::GET, POOLS, 200, pools(json!([draining.clone()])))
            .await;
        api.expect(Method::GET, POOLS, 200, pools(json!([draining])))
            .await;
        api.expect(Method::GET, BLOCKS, 200, blocks(json!([coredns_block()])))
            .await;
        api.expect(Method::GET, USAGES, 200, usages(json!([coredns_usage()])))
            .await;
        api.expect(Method::GET, PODS, 200, list("Pod", json!([])))
            .await;
        api
    });
    let result = within(uninstall_polling(
        ctx.client.clone(),
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_millis(1),
    ))
    .await;
    scenario.finish(ctx).await;
    let err = result.expect_err("timed out");
    let text = err.to_string();
    assert!(matches!(err, Error::Timeout { .. }), "{text}");
    assert!(
        text.contains("IPPool p: 1 addresses of this pool are still in use"),
        "{text}"
    );
    assert!(
        text.contains("kube-system/coredns-7d4f-abcde on node sinew-worker (10.244.1.2)"),
        "{text}"
    );
}

#[tokio::test]
async fn addresses_given_back_while_the_check_settles_do_not_refuse() {
    let (ctx, api) = World::default().build();
    let scenario = api.play(|mut api| async move {
        // A pod deleted just before: its block's status still lists it, then no longer.
        api.expect(Method::GET, POOLS, 200, pools(json!([pool()])))
            .await;
        api.expect(Method::GET, BLOCKS, 200, blocks(json!([coredns_block()])))
            .await;
        api.expect(Method::GET, USAGES, 200, usages(json!([coredns_usage()])))
            .await;
        api.expect(Method::GET, PODS, 200, list("Pod", json!([])))
            .await;
        api.expect(Method::GET, POOLS, 200, pools(json!([pool()])))
            .await;
        api.expect(Method::GET, BLOCKS, 200, blocks(json!([])))
            .await;
        api.expect(Method::GET, USAGES, 200, usages(json!([])))
            .await;
        api.expect(Method::GET, PODS, 200, list("Pod", json!([])))
            .await;
        // Then the uninstall proceeds: the pools first.
        api.expect(Method::GET, POOLS, 200, pools(json!([]))).await;
        api.expect(Method::GET, POOLS, 200, pools(json!([]))).await;
        api.expect(Method::GET, NETWORKS, 200, networks(json!([])))
            .await;
        api.expect(Method::GET, NETWORKS, 200, networks(json!([])))
            .await;
        api
    });
    let result = within(uninstall_polling(
        ctx.client.clone(),
        Duration::from_secs(5),
        Duration::from_secs(5),
        Duration::from_millis(1),
    ))
    .await;
    scenario.finish(ctx).await;
    result.expect("uninstalled");
}

/// A pod on the pod network on `node` with address `ip`.
fn pod_at(name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

#[tokio::test]
async fn the_check_reads_blocks_and_pods_page_by_page_and_names_a_bounded_list() {
    let (ctx, api) = World::default().build();
    let scenario = api.play(|mut api| async move {
        api.expect(Method::GET, POOLS, 200, pools(json!([pool()])))
            .await;
        // Blocks, in two pages.
        let mut first = blocks(json!([coredns_block()]));
        first["metadata"]["continue"] = json!("blocks-2");
        let seen = api.expect(Method::GET, BLOCKS, 200, first).await;
        assert_eq!(seen.query.get("limit").map(String::as_str), Some("250"));
        assert!(!seen.query.contains_key("continue"), "{:?}", seen.query);
        let seen = api
            .expect(Method::GET, BLOCKS, 200, blocks(json!([])))
            .await;
        assert_eq!(
            seen.query.get("continue").map(String::as_str),
            Some("blocks-2")
        );
        let seen = api
            .expect(Method::GET, USAGES, 200, usages(json!([coredns_usage()])))
            .await;
        assert_eq!(seen.query.get("limit").map(String::as_str), Some("250"));
        // Pods: only the ones that can hold a pod-network address, page by page.
        let page = |from: usize| {
            (from..from + 30)
                .map(|i| {
                    pod_at(
                        &format!("web-{i:03}"),
                        "sinew-worker2",
                        &format!("10.244.2.{i}"),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut first = list("Pod", json!(page(0)));
        first["metadata"]["continue"] = json!("pods-2");
        let seen = api.expect(Method::GET, PODS, 200, first).await;
        assert_eq!(seen.query.get("limit").map(String::as_str), Some("250"));
        assert_eq!(
            seen.query.get("fieldSelector").map(String::as_str),
            Some("spec.hostNetwork=false,status.phase!=Succeeded,status.phase!=Failed")
        );
        let seen = api
            .expect(Method::GET, PODS, 200, list("Pod", json!(page(30))))
            .await;
        assert_eq!(
            seen.query.get("continue").map(String::as_str),
            Some("pods-2")
        );
        api
    });
    let result = within(uninstall_polling(
        ctx.client.clone(),
        Duration::from_secs(5),
        Duration::ZERO,
        Duration::from_millis(1),
    ))
    .await;
    scenario.finish(ctx).await;
    let err = result.expect_err("refused");
    assert!(matches!(err, Error::PodsHoldAddresses { .. }), "{err:?}");
    let text = err.to_string();
    // 61 holders: the first 50 by address are named, the rest counted.
    assert!(
        text.starts_with("61 pods still hold pod-network addresses:\n"),
        "{text}"
    );
    assert!(
        text.contains("kube-system/coredns-7d4f-abcde on node sinew-worker (10.244.1.2)"),
        "{text}"
    );
    assert_eq!(text.matches(" on node ").count(), 50, "{text}");
    assert!(text.contains("  and 11 more\n"), "{text}");
}
