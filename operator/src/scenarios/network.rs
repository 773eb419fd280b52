//! `ClusterNetwork` reconcile against a mocked API server: the finalizer, the wait for every
//! node's clean-up and the removal of the node agent DaemonSet.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::json;
use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport};
use sinew_crds::{ClusterNetwork, ClusterNetworkSpec};

use super::{NAMESPACE, World, deleted, node, not_found, ready_condition, to_json, within};
use crate::context::FINALIZER;
use crate::network::reconcile;

const NETWORK: &str = "/apis/sinew.dev/v1alpha1/clusternetworks/default";
const NETWORK_STATUS: &str = "/apis/sinew.dev/v1alpha1/clusternetworks/default/status";

fn daemonset_path() -> String {
    format!(
        "/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/{}",
        crate::daemonset::NAME
    )
}

fn network(finalizers: &[&str]) -> ClusterNetwork {
    let mut n = ClusterNetwork::new("default", ClusterNetworkSpec::default());
    n.metadata.generation = Some(1);
    n.metadata.uid = Some("network-uid".into());
    n.metadata.resource_version = Some("12".into());
    if !finalizers.is_empty() {
        n.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
    }
    n
}

fn deleted_network() -> ClusterNetwork {
    let mut n = network(&[FINALIZER]);
    n.metadata.deletion_timestamp = Some(deleted(Duration::from_secs(10)));
    n
}

fn report(cleaned_up: bool) -> Option<NodeReport> {
    Some(NodeReport {
        ready: !cleaned_up,
        cleaned_up,
        ..NodeReport::default()
    })
}

#[tokio::test]
async fn a_new_network_gets_the_finalizer_before_the_daemonset_and_status() {
    let n = network(&[]);
    let (ctx, api) = World {
        networks: vec![n.clone()],
        ..World::default()
    }
    .build();
    let written = network(&[FINALIZER]);
    let scenario = api.play(|mut api| async move {
        let first = api
            .expect(Method::PATCH, NETWORK, 200, to_json(&written))
            .await;
        assert_eq!(
            first.body,
            json!({"metadata": {"finalizers": ["sinew.dev/cleanup"], "resourceVersion": "12"}})
        );
        let ds = api
            .expect_with(Method::PATCH, &daemonset_path(), 200, |seen| {
                seen.body.clone()
            })
            .await;
        assert_eq!(
            ds.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(ds.query.get("force").map(String::as_str), Some("true"));
        assert_eq!(ds.body["kind"], "DaemonSet");
        api.expect(Method::PATCH, NETWORK_STATUS, 200, to_json(&written))
            .await;
        api
    });
    let result = within(reconcile(Arc::new(n), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn a_deleted_network_waits_for_nodes_not_cleaned_up_and_keeps_the_daemonset() {
    let n = deleted_network();
    let (ctx, api) = World {
        networks: vec![n.clone()],
        nodes: vec![
            node("a", report(true)),
            node("b", report(false)),
            // Never reported (no agent ran there): nothing to wait for.
            node("c", None),
        ],
        ..World::default()
    }
    .build();
    let reply = to_json(&n);
    let scenario = api.play(|mut api| async move {
        let status = api.expect(Method::PATCH, NETWORK_STATUS, 200, reply).await;
        let ready = ready_condition(&status.body);
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "CleaningUp");
        assert_eq!(ready["message"], "waiting for 1 node(s) to clean up: b");
        api
    });
    let result = within(reconcile(Arc::new(n), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(2))
    );
}

#[tokio::test]
async fn a_deleted_network_waits_for_a_node_whose_report_it_cannot_read() {
    let n = deleted_network();
    let mut garbled = node("b", None);
    garbled.metadata.annotations = Some(
        [(
            NODE_STATE_ANNOTATION.to_string(),
            "{not a report".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    let (ctx, api) = World {
        networks: vec![n.clone()],
        nodes: vec![node("a", report(true)), garbled],
        ..World::default()
    }
    .build();
    let reply = to_json(&n);
    let scenario = api.play(|mut api| async move {
        // Not the DaemonSet's deletion: the node's state is unknown, not clean.
        let status = api.expect(Method::PATCH, NETWORK_STATUS, 200, reply).await;
        let ready = ready_condition(&status.body);
        assert_eq!(ready["reason"], "CleaningUp");
        assert_eq!(
            ready["message"],
            "waiting for 1 node(s) to clean up: b (unreadable report)"
        );
        api
    });
    let result = within(reconcile(Arc::new(n), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(2))
    );
}

#[tokio::test]
async fn a_deleted_network_with_every_node_cleaned_deletes_the_daemonset_then_the_finalizer() {
    let n = deleted_network();
    let (ctx, api) = World {
        networks: vec![n.clone()],
        nodes: vec![node("a", report(true)), node("b", report(true))],
        ..World::default()
    }
    .build();
    let reply = to_json(&n);
    let scenario = api.play(|mut api| async move {
        let success = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Success", "code": 200});
        api.expect(Method::DELETE, &daemonset_path(), 200, success)
            .await;
        let release = api.expect(Method::PATCH, NETWORK, 200, reply).await;
        assert_eq!(
            release.body,
            json!({"metadata": {"finalizers": [], "resourceVersion": "12"}})
        );
        api
    });
    let result = within(reconcile(Arc::new(n), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
}

#[tokio::test]
async fn a_deleted_network_whose_daemonset_is_already_gone_still_drops_the_finalizer() {
    let n = deleted_network();
    let (ctx, api) = World {
        networks: vec![n.clone()],
        nodes: vec![node("a", report(true))],
        ..World::default()
    }
    .build();
    let reply = to_json(&n);
    let scenario = api.play(|mut api| async move {
        api.expect(Method::DELETE, &daemonset_path(), 404, not_found())
            .await;
        api.expect(Method::PATCH, NETWORK, 200, reply).await;
        api
    });
    let result = within(reconcile(Arc::new(n), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
}

#[tokio::test]
async fn a_failed_daemonset_delete_keeps_the_finalizer_and_is_an_error() {
    let n = deleted_network();
    let (ctx, api) = World {
        networks: vec![n.clone()],
        nodes: vec![node("a", report(true))],
        ..World::default()
    }
    .build();
    let scenario = api.play(|mut api| async move {
        api.expect(
            Method::DELETE,
            &daemonset_path(),
            403,
            super::status(403, "Forbidden"),
        )
        .await;
        api
    });
    let result = within(reconcile(Arc::new(n), ctx.clone())).await;
    scenario.finish(ctx).await;
    assert!(
        matches!(result, Err(crate::context::Error::Kube(kube::Error::Api(ref e))) if e.code == 403),
        "{result:?}"
    );
}
