//! The leak GC against a mocked API server: a release is asked of the block's agent (the
//! block's release annotation) only for a pod missing on two passes a grace period apart,
//! and still missing live.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use serde_json::json;
use sinew_crds::{
    Allocation, IPBlock, IPBlockSpec, IPBlockUsage, IPBlockUsageSpec, IPBlockUsageStatus,
    RELEASE_ANNOTATION, ReleaseRequest,
};

use super::{World, node, not_found, to_json, within};
use crate::gc::{Suspects, pass};

const BLOCK: &str = "/apis/sinew.dev/v1alpha1/ipblocks/10-0-0-0-26";

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

/// A block of node `n1`, and its usage holding `allocations`.
fn block(allocations: Vec<Allocation>) -> (IPBlock, IPBlockUsage) {
    let b = IPBlock::new(
        "10-0-0-0-26",
        IPBlockSpec {
            pool: "p".into(),
            cidr: "10.0.0.0/26".into(),
            node: "n1".into(),
        },
    );
    let mut u = IPBlockUsage::new("10-0-0-0-26", IPBlockUsageSpec::of(&b.spec));
    u.status = Some(IPBlockUsageStatus {
        allocated: allocations.len() as u32,
        allocations,
    });
    (b, u)
}

/// A pod named `name` in `default` with UID `uid`, as the API server returns it.
fn pod(name: &str, uid: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "uid": uid}})
}

#[tokio::test]
async fn a_release_is_requested_only_for_a_pod_missing_on_two_passes_a_grace_period_apart() {
    let b = block(vec![
        allocation("10.0.0.1", "gone", "gone-uid"),
        allocation("10.0.0.2", "alive", "alive-uid"),
    ]);
    let (ctx, api) = World {
        nodes: vec![node("n1", None)],
        pods: vec!["alive-uid"],
        ..World::default()
    }
    .with_claims(vec![b.clone()])
    .build();
    let received = api.received();
    let reply = to_json(&b.0);
    let usages = [b.1.clone()];
    let scenario = api.play(|mut api| async move {
        // Each pass reads the allocations live, in pages; only the third writes.
        for _ in 0..3 {
            api.expect_usage_list(&usages).await;
        }
        api.expect(
            Method::GET,
            "/api/v1/namespaces/default/pods/gone",
            404,
            not_found(),
        )
        .await;
        let patch = api.expect(Method::PATCH, BLOCK, 200, reply).await;
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        let value = patch.body["metadata"]["annotations"][RELEASE_ANNOTATION]
            .as_str()
            .expect("a JSON string");
        let requests: Vec<ReleaseRequest> = serde_json::from_str(value).unwrap();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!(
            (
                requests[0].ip.as_str(),
                requests[0].generation,
                requests[0].pod_uid.as_str(),
                requests[0].pod.as_str()
            ),
            ("10.0.0.1", 1, "gone-uid", "default/gone")
        );
        let event = api.expect_event().await;
        assert_eq!(event.body["reason"], "LeakedAddressReleased");
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["regarding"]["name"], "10-0-0-0-26");
        api
    });
    let grace = Duration::from_secs(1);
    let mut suspects = Suspects::default();
    within(pass(&ctx, &mut suspects, grace))
        .await
        .expect("first pass");
    assert_eq!(
        received.load(Ordering::SeqCst),
        1,
        "first sighting: the list only"
    );
    within(pass(&ctx, &mut suspects, grace))
        .await
        .expect("second pass, too early");
    assert_eq!(
        received.load(Ordering::SeqCst),
        2,
        "within the grace period: the list only"
    );
    tokio::time::sleep(grace + Duration::from_millis(50)).await;
    let result = within(pass(&ctx, &mut suspects, grace)).await;
    scenario.finish(ctx).await;
    result.expect("third pass");
}

#[tokio::test]
async fn a_pod_found_live_keeps_its_address() {
    let b = block(vec![allocation("10.0.0.1", "web", "web-uid")]);
    // The pod cache is behind: it does not have the pod yet.
    let (ctx, api) = World {
        nodes: vec![node("n1", None)],
        ..World::default()
    }
    .with_claims(vec![b.clone()])
    .build();
    let usages = [b.1];
    let scenario = api.play(|mut api| async move {
        // Each pass reads every page of the live list: the usage is on the second.
        for _ in 0..2 {
            api.expect_usage_page(&[], None, Some("page-2")).await;
            api.expect_usage_page(&usages, Some("page-2"), None).await;
        }
        // Asked on the second pass only.
        api.expect(
            Method::GET,
            "/api/v1/namespaces/default/pods/web",
            200,
            pod("web", "web-uid"),
        )
        .await;
        api
    });
    let mut suspects = Suspects::default();
    within(pass(&ctx, &mut suspects, Duration::ZERO))
        .await
        .expect("first pass");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let result = within(pass(&ctx, &mut suspects, Duration::ZERO)).await;
    scenario.finish(ctx).await;
    result.expect("second pass");
}

#[tokio::test]
async fn a_block_of_a_departed_node_is_left_to_the_pool_reconciler() {
    let b = block(vec![allocation("10.0.0.1", "web", "web-uid")]);
    let (ctx, api) = World { ..World::default() }
        .with_claims(vec![b.clone()])
        .build();
    let usages = [b.1];
    let scenario = api.play(|mut api| async move {
        api.expect_usage_list(&usages).await;
        api.expect_usage_list(&usages).await;
        api
    });
    let mut suspects = Suspects::default();
    for _ in 0..2 {
        within(pass(&ctx, &mut suspects, Duration::ZERO))
            .await
            .expect("pass");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    scenario.finish(ctx).await;
}

#[tokio::test]
async fn a_carried_out_release_request_is_dropped_from_the_block() {
    let mut b = block(vec![allocation("10.0.0.2", "web", "web-uid")]);
    let (block, _) = &mut b;
    let done = ReleaseRequest {
        ip: "10.0.0.1".into(),
        generation: 1,
        pod_uid: "gone-uid".into(),
        pod: "default/gone".into(),
        missing_since: "2026-01-01T00:00:00Z".into(),
    };
    block.metadata.annotations = Some(
        [(
            RELEASE_ANNOTATION.to_string(),
            serde_json::to_string(&[done]).unwrap(),
        )]
        .into_iter()
        .collect(),
    );
    let (ctx, api) = World {
        nodes: vec![node("n1", None)],
        pods: vec!["web-uid"],
        ..World::default()
    }
    .with_claims(vec![b.clone()])
    .build();
    let metrics = ctx.metrics.clone();
    let reply = to_json(&b.0);
    let usage = b.1.clone();
    let scenario = api.play(|mut api| async move {
        api.expect_usage(&usage).await;
        let patch = api.expect(Method::PATCH, BLOCK, 200, reply).await;
        assert_eq!(
            patch.body,
            json!({"metadata": {"annotations": {RELEASE_ANNOTATION: null}}})
        );
        api.expect_usage_list(std::slice::from_ref(&usage)).await;
        api
    });
    let result = within(pass(&ctx, &mut Suspects::default(), Duration::ZERO)).await;
    scenario.finish(ctx).await;
    result.expect("pass");
    assert_eq!(metrics.gc_releases.get(), 1);
}
