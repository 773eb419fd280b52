//! `IPPool` reconcile against a mocked API server: the finalizer, the drain of a deleted pool
//! and the release of a departed node's block.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sinew_crds::node::NodeReport;
use sinew_crds::{
    Allocation, IPBlock, IPBlockSpec, IPBlockUsage, IPBlockUsageSpec, IPBlockUsageStatus, IPPool,
};

use super::{USAGES, World, deleted, node, not_found, pool_spec, ready_condition, to_json, within};
use crate::context::FINALIZER;
use crate::pool::reconcile;

const POOL: &str = "/apis/sinew.dev/v1alpha1/ippools/p";
const POOL_STATUS: &str = "/apis/sinew.dev/v1alpha1/ippools/p/status";
const BLOCKS: &str = "/apis/sinew.dev/v1alpha1/ipblocks";

fn pool(finalizers: &[&str]) -> IPPool {
    let mut p = IPPool::new("p", pool_spec("10.0.0.0/24"));
    p.metadata.generation = Some(1);
    p.metadata.uid = Some("pool-uid".into());
    p.metadata.resource_version = Some("41".into());
    if !finalizers.is_empty() {
        p.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
    }
    p
}

/// A pool deleted `ago`, still held by sinew's finalizer (and `others`).
fn deleted_pool(ago: Duration, others: &[&str]) -> IPPool {
    let mut finalizers = others.to_vec();
    finalizers.push(FINALIZER);
    let mut p = pool(&finalizers);
    p.metadata.deletion_timestamp = Some(deleted(ago));
    p
}

/// An allocation for pod `default/<pod>` with UID `uid`.
fn allocation(ip: &str, pod: &str, uid: &str) -> Allocation {
    Allocation {
        ip: ip.into(),
        container_id: format!("ctr-{pod}"),
        interface: "eth0".into(),
        pod_namespace: Some("default".into()),
        pod_name: Some(pod.into()),
        pod_uid: Some(uid.into()),
        generation: 1,
    }
}

/// Block `index` (a /26) of pool `p`, on `node`, and its usage holding `allocations`.
fn block(index: u8, node: &str, allocations: Vec<Allocation>) -> (IPBlock, IPBlockUsage) {
    let mut b = IPBlock::new(
        &format!("10-0-0-{}-26", index * 64),
        IPBlockSpec {
            pool: "p".into(),
            cidr: format!("10.0.0.{}/26", index * 64),
            node: node.into(),
        },
    );
    b.metadata.uid = Some(format!("block-uid-{index}"));
    let mut usage = IPBlockUsage::new(
        &b.metadata.name.clone().unwrap_or_default(),
        IPBlockUsageSpec::of(&b.spec),
    );
    usage.status = Some(IPBlockUsageStatus {
        allocated: allocations.len() as u32,
        allocations,
    });
    (b, usage)
}

/// Asserts that a DELETE of a block carried its UID as a precondition (a block deleted and
/// claimed again meanwhile, by another node, must not be deleted in its place).
fn assert_uid_precondition(seen: &super::Seen, index: u8) {
    assert_eq!(
        seen.body["preconditions"]["uid"],
        json!(format!("block-uid-{index}")),
        "{}",
        seen.body
    );
}

fn block_list(claims: &[(IPBlock, IPBlockUsage)]) -> Value {
    let blocks: Vec<&IPBlock> = claims.iter().map(|(b, _)| b).collect();
    json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockList",
           "metadata": {"resourceVersion": "7"}, "items": blocks})
}

fn usage_list(claims: &[(IPBlock, IPBlockUsage)]) -> Value {
    let usages: Vec<&IPBlockUsage> = claims.iter().map(|(_, u)| u).collect();
    json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsageList",
           "metadata": {"resourceVersion": "7"}, "items": usages})
}

/// The drain's live reads: the pool's blocks, then their usages.
async fn expect_live(api: &mut super::ApiServer, live: &[(IPBlock, IPBlockUsage)]) {
    let list = api.expect(Method::GET, BLOCKS, 200, block_list(live)).await;
    assert_eq!(
        list.query.get("fieldSelector").map(String::as_str),
        Some("spec.pool=p")
    );
    let list = api.expect(Method::GET, USAGES, 200, usage_list(live)).await;
    assert_eq!(
        list.query.get("fieldSelector").map(String::as_str),
        Some("spec.pool=p")
    );
}

#[tokio::test]
async fn a_new_pool_gets_the_finalizer_before_anything_else_is_written() {
    let p = pool(&[]);
    let (ctx, api) = World {
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let written = pool(&[FINALIZER]);
    let scenario = api.play(|mut api| async move {
        let first = api
            .expect(Method::PATCH, POOL, 200, to_json(&written))
            .await;
        assert_eq!(
            first.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            first.body,
            json!({"metadata": {"finalizers": ["sinew.dev/cleanup"], "resourceVersion": "41"}}),
            "the list is replaced only if the pool did not change since it was read"
        );
        let status = api
            .expect(Method::PATCH, POOL_STATUS, 200, to_json(&written))
            .await;
        assert_eq!(
            status.query.get("fieldManager").map(String::as_str),
            Some("sinew-operator")
        );
        assert_eq!(status.body["status"]["capacity"], 254);
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn a_finalizer_patch_refused_for_a_concurrent_change_is_made_again_from_the_fresh_pool() {
    // Another controller added its finalizer after the cache was filled: the API server
    // refuses the patch made from the stale list instead of letting it drop that finalizer;
    // the operator reads the pool again and keeps the other finalizer.
    let p = pool(&[]);
    let (ctx, api) = World {
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let mut fresh = pool(&["example.com/other"]);
    fresh.metadata.resource_version = Some("42".into());
    let written = pool(&["example.com/other", FINALIZER]);
    let scenario = api.play(|mut api| async move {
        let stale = api
            .expect(Method::PATCH, POOL, 409, super::status(409, "Conflict"))
            .await;
        assert_eq!(stale.body["metadata"]["resourceVersion"], "41");
        api.expect(Method::GET, POOL, 200, to_json(&fresh)).await;
        let again = api
            .expect(Method::PATCH, POOL, 200, to_json(&written))
            .await;
        assert_eq!(
            again.body,
            json!({"metadata": {"finalizers": ["example.com/other", "sinew.dev/cleanup"],
                                "resourceVersion": "42"}})
        );
        api.expect(Method::PATCH, POOL_STATUS, 200, to_json(&written))
            .await;
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn a_second_conflict_on_the_finalizer_is_an_error() {
    let p = pool(&[]);
    let (ctx, api) = World {
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let fresh = to_json(&p);
    let scenario = api.play(|mut api| async move {
        api.expect(Method::PATCH, POOL, 409, super::status(409, "Conflict"))
            .await;
        api.expect(Method::GET, POOL, 200, fresh).await;
        api.expect(Method::PATCH, POOL, 409, super::status(409, "Conflict"))
            .await;
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert!(
        matches!(result, Err(crate::context::Error::Kube(kube::Error::Api(ref e))) if e.code == 409),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_pool_whose_finalizer_and_status_are_current_is_not_written() {
    // First pass: the status the operator computes for the pool.
    let p = pool(&[FINALIZER]);
    let (ctx, api) = World {
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply = to_json(&p);
    let scenario = api.play(|mut api| async move {
        let status = api.expect(Method::PATCH, POOL_STATUS, 200, reply).await;
        tx.send(status.body["status"].clone()).unwrap();
        api
    });
    within(reconcile(Arc::new(p.clone()), ctx.clone()))
        .await
        .expect("reconciled");
    scenario.finish(ctx).await;
    // Second pass, over the pool as the API server now has it: nothing to write.
    let mut current = p;
    current.status = Some(serde_json::from_value(rx.await.unwrap()).unwrap());
    let (ctx, api) = World {
        pools: vec![current.clone()],
        ..World::default()
    }
    .build();
    let scenario = api.play(|api| async move { api });
    let result = within(reconcile(Arc::new(current), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn a_deleted_pool_with_addresses_in_use_is_draining_and_keeps_its_finalizer() {
    let p = deleted_pool(Duration::from_secs(60), &[]);
    // The cache has no blocks (it is behind): the live list is what counts.
    let (ctx, api) = World {
        nodes: vec![node("a", None), node("b", None), node("c", None)],
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let live = [
        block(
            0,
            "a",
            vec![
                allocation("10.0.0.1", "web-1", "u1"),
                allocation("10.0.0.2", "web-2", "u2"),
            ],
        ),
        block(1, "b", vec![allocation("10.0.0.65", "web-3", "u3")]),
        block(2, "c", Vec::new()),
    ];
    let reply = to_json(&p);
    let scenario = api.play(|mut api| async move {
        expect_live(&mut api, &live).await;
        let status = api.expect(Method::PATCH, POOL_STATUS, 200, reply).await;
        let ready = ready_condition(&status.body);
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "Draining");
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.starts_with("3 addresses of this pool are still in use"),
            "{message}"
        );
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_drained_pool_past_the_settle_time_deletes_its_blocks_then_drops_only_its_finalizer() {
    let p = deleted_pool(Duration::from_secs(6), &["example.com/keep"]);
    let (ctx, api) = World {
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let live = [block(0, "a", Vec::new()), block(1, "b", Vec::new())];
    let first = to_json(&live[0].0);
    let reply = to_json(&p);
    let scenario = api.play(|mut api| async move {
        expect_live(&mut api, &live).await;
        let seen = api
            .expect(Method::DELETE, &format!("{BLOCKS}/10-0-0-0-26"), 200, first)
            .await;
        assert_uid_precondition(&seen, 0);
        // Already gone (deleted by someone else meanwhile): not an error.
        let seen = api
            .expect(
                Method::DELETE,
                &format!("{BLOCKS}/10-0-0-64-26"),
                404,
                not_found(),
            )
            .await;
        assert_uid_precondition(&seen, 1);
        let release = api.expect(Method::PATCH, POOL, 200, reply).await;
        assert_eq!(
            release.body,
            json!({"metadata": {"finalizers": ["example.com/keep"], "resourceVersion": "41"}}),
            "only sinew's finalizer goes, and only from the pool as it was read"
        );
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
}

#[tokio::test]
async fn a_deleted_pool_releases_the_blocks_of_departed_nodes_instead_of_draining_forever() {
    let p = deleted_pool(Duration::from_secs(6), &[]);
    // Node "gone" left the cluster with an address of the pool: no agent will ever drain it.
    let departed = block(1, "gone", vec![allocation("10.0.0.65", "web-1", "dead")]);
    let (ctx, api) = World {
        nodes: vec![reporting_drained("a", true)],
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let metrics = ctx.metrics.clone();
    let live = [block(0, "a", Vec::new()), departed.clone()];
    let (kept, reply) = (to_json(&live[0].0), to_json(&p));
    let scenario = api.play(|mut api| async move {
        expect_live(&mut api, &live).await;
        // The caches say the node and the pod are gone; the API server must say so too.
        api.expect(Method::GET, "/api/v1/nodes/gone", 404, not_found())
            .await;
        api.expect(
            Method::GET,
            "/api/v1/namespaces/default/pods/web-1",
            404,
            not_found(),
        )
        .await;
        api.expect(
            Method::DELETE,
            &format!("{BLOCKS}/10-0-0-64-26"),
            200,
            to_json(&departed.0),
        )
        .await;
        let event = api.expect_event().await;
        assert_eq!(event.body["reason"], "BlockReleased");
        // Nothing else in use: drained.
        api.expect(Method::DELETE, &format!("{BLOCKS}/10-0-0-0-26"), 200, kept)
            .await;
        let release = api.expect(Method::PATCH, POOL, 200, reply).await;
        assert_eq!(release.body["metadata"]["finalizers"], json!([]));
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
    assert_eq!(metrics.block_releases.get(), 1);
}

#[tokio::test]
async fn a_deleted_pool_keeps_draining_while_a_pod_of_a_departed_node_exists() {
    let p = deleted_pool(Duration::from_secs(6), &[]);
    let departed = block(1, "gone", vec![allocation("10.0.0.65", "web-1", "alive")]);
    let (ctx, api) = World {
        pools: vec![p.clone()],
        pods: vec!["alive"],
        ..World::default()
    }
    .build();
    let live = [departed];
    let reply = to_json(&p);
    let scenario = api.play(|mut api| async move {
        expect_live(&mut api, &live).await;
        let status = api.expect(Method::PATCH, POOL_STATUS, 200, reply).await;
        assert_eq!(ready_condition(&status.body)["reason"], "Draining");
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(5))
    );
}

/// A node whose agent reports pool `p` drained (or not).
fn reporting_drained(name: &str, drained: bool) -> k8s_openapi::api::core::v1::Node {
    node(
        name,
        Some(NodeReport {
            ready: true,
            drained: if drained {
                vec!["p".into()]
            } else {
                Vec::new()
            },
            ..NodeReport::default()
        }),
    )
}

#[tokio::test]
async fn a_drained_pool_waits_for_every_node_holding_a_block_to_confirm_it() {
    // Deleted a minute ago, every block's status says empty: but node a's agent has not said
    // it stopped handing out addresses of the pool (a lagging agent may not have written its
    // last allocation yet).
    let p = deleted_pool(Duration::from_secs(60), &[]);
    let (ctx, api) = World {
        nodes: vec![reporting_drained("a", false), reporting_drained("b", true)],
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let live = [block(0, "a", Vec::new()), block(1, "b", Vec::new())];
    let reply = to_json(&p);
    let scenario = api.play(|mut api| async move {
        expect_live(&mut api, &live).await;
        // No DELETE: the scenario refuses anything beyond the status write.
        let status = api.expect(Method::PATCH, POOL_STATUS, 200, reply).await;
        let ready = ready_condition(&status.body);
        assert_eq!(ready["reason"], "Draining");
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.starts_with("waiting for node a to confirm"),
            "{message}"
        );
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_drained_pool_confirmed_by_its_nodes_goes_at_once() {
    // Deleted just now: no fixed delay, the nodes' word is what counts.
    let p = deleted_pool(Duration::ZERO, &[]);
    let (ctx, api) = World {
        nodes: vec![reporting_drained("a", true)],
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let live = [block(0, "a", Vec::new())];
    let (first, reply) = (to_json(&live[0].0), to_json(&p));
    let scenario = api.play(|mut api| async move {
        expect_live(&mut api, &live).await;
        let seen = api
            .expect(Method::DELETE, &format!("{BLOCKS}/10-0-0-0-26"), 200, first)
            .await;
        assert_uid_precondition(&seen, 0);
        let release = api.expect(Method::PATCH, POOL, 200, reply).await;
        assert_eq!(release.body["metadata"]["finalizers"], json!([]));
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
}

#[tokio::test]
async fn a_departed_nodes_block_is_released_after_the_live_checks_with_an_event() {
    let p = pool(&[FINALIZER]);
    let departed = block(1, "gone", vec![allocation("10.0.0.65", "web-1", "dead")]);
    let (ctx, api) = World {
        nodes: vec![node("a", None)],
        pools: vec![p.clone()],
        ..World::default()
    }
    .with_claims(vec![block(0, "a", Vec::new()), departed.clone()])
    .build();
    let metrics = ctx.metrics.clone();
    let reply = to_json(&p);
    let usage = departed.1.clone();
    let scenario = api.play(|mut api| async move {
        // The node cache says it is gone: its block's allocations are read live.
        api.expect_usage(&usage).await;
        // The caches say the node and the pod are gone; the API server must say so too.
        api.expect(Method::GET, "/api/v1/nodes/gone", 404, not_found())
            .await;
        api.expect(
            Method::GET,
            "/api/v1/namespaces/default/pods/web-1",
            404,
            not_found(),
        )
        .await;
        let seen = api
            .expect(
                Method::DELETE,
                &format!("{BLOCKS}/10-0-0-64-26"),
                200,
                to_json(&departed.0),
            )
            .await;
        assert_uid_precondition(&seen, 1);
        let event = api.expect_event().await;
        assert_eq!(event.body["reason"], "BlockReleased");
        assert_eq!(event.body["type"], "Normal");
        assert_eq!(event.body["regarding"]["name"], "p");
        api.expect(Method::PATCH, POOL_STATUS, 200, reply).await;
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(30))
    );
    assert_eq!(metrics.block_releases.get(), 1);
}

#[tokio::test]
async fn a_departed_nodes_block_is_kept_when_the_node_is_back_live() {
    let p = pool(&[FINALIZER]);
    let departed = block(0, "gone", vec![allocation("10.0.0.1", "web-1", "dead")]);
    let (ctx, api) = World {
        pools: vec![p.clone()],
        ..World::default()
    }
    .with_claims(vec![departed.clone()])
    .build();
    let reply = to_json(&p);
    let scenario = api.play(|mut api| async move {
        api.expect_usage(&departed.1).await;
        // The node cache is behind: the node is back.
        api.expect(
            Method::GET,
            "/api/v1/nodes/gone",
            200,
            to_json(&node("gone", None)),
        )
        .await;
        api.expect(Method::PATCH, POOL_STATUS, 200, reply).await;
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(3)),
        "a block still waiting is looked at again soon"
    );
}

#[tokio::test]
async fn a_deleted_pool_whose_blocks_cannot_be_listed_keeps_its_finalizer_and_is_an_error() {
    let p = deleted_pool(Duration::from_secs(10), &[]);
    // The cache (which could be stale) says there is nothing left; only the live list counts.
    let (ctx, api) = World {
        pools: vec![p.clone()],
        ..World::default()
    }
    .build();
    let scenario = api.play(|mut api| async move {
        api.expect(
            Method::GET,
            BLOCKS,
            503,
            super::status(503, "ServiceUnavailable"),
        )
        .await;
        api
    });
    let result = within(reconcile(Arc::new(p), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert!(
        matches!(result, Err(crate::context::Error::Kube(kube::Error::Api(ref e))) if e.code == 503),
        "{result:?}"
    );
}
