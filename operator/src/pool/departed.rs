//! Blocks of nodes that are gone. No agent gives their addresses back, so the operator
//! releases such a block once none of its pods exists, by the caches and then live, whether
//! its pool stays or is being deleted.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use sinew_crds::{IPBlock, IPBlockUsageStatus, IPPool};

use crate::context::{Context, Error, delete_block};

/// Pure: whether a block of a node that no longer exists can be released, given its `usage`.
/// Only when no pod of its allocations exists any more; an allocation without a pod UID could
/// belong to anything, so it keeps the block. A block whose node never reported on it is
/// released once it is older than a minute (its agent had every chance to report).
pub fn releasable(
    block: &IPBlock,
    usage: Option<&IPBlockUsageStatus>,
    node_exists: bool,
    pod_exists: impl Fn(&str) -> bool,
) -> bool {
    if node_exists {
        return false;
    }
    let Some(status) = usage else {
        let age = block
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0));
        return age.is_none_or(|a| a > k8s_openapi::jiff::SignedDuration::from_secs(60));
    };
    // A count the details do not account for means owners we cannot check: keep the block.
    status.allocations.len() >= status.allocated as usize
        && status
            .allocations
            .iter()
            .all(|a| a.pod_uid.as_deref().is_some_and(|uid| !pod_exists(uid)))
}

/// Live re-check of what the caches said about a departed node's block: the Node is gone and
/// none of the block's pods exists (by UID, a mirror pod counting for its static pod). Any
/// doubt (an API error) keeps the block.
async fn departed_live(ctx: &Context, block: &IPBlock, usage: Option<&IPBlockUsageStatus>) -> bool {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    match nodes.get_opt(&block.spec.node).await {
        Ok(None) => {}
        Ok(Some(_)) => return false,
        Err(e) => {
            tracing::warn!(error = %e, node = %block.spec.node, "live node check failed; keeping the block");
            return false;
        }
    }
    for a in usage.iter().flat_map(|s| s.allocations.iter()) {
        let (Some(ns), Some(name), Some(uid)) = (&a.pod_namespace, &a.pod_name, &a.pod_uid) else {
            continue;
        };
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        if crate::gc::pod_exists_live(&pods, name, uid).await {
            return false;
        }
    }
    true
}

/// Deletes this pool's blocks whose node is gone and none of whose pods exists; returns
/// whether some are still waiting for their pods.
pub(super) async fn release_blocks_of_departed_nodes(
    pool: &IPPool,
    ctx: &Context,
) -> Result<bool, Error> {
    let name = pool.name_any();
    let nodes: BTreeSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    let mut waiting = false;
    let blocks: Vec<_> = ctx
        .blocks
        .state()
        .into_iter()
        .filter(|b| b.spec.pool == name)
        .collect();
    for block in blocks.iter().filter(|b| !nodes.contains(&b.spec.node)) {
        // The cache holds counts only: a departed node's block is judged by its allocations.
        let used = ctx.live_usage(block).await?;
        waiting |= release_if_departed(pool, ctx, block, used.as_ref(), &nodes).await?
            == Departed::Waiting;
    }
    Ok(waiting)
}

/// What became of a block in [`release_if_departed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Departed {
    /// Its node exists.
    NodeExists,
    /// Its node is gone but a pod of it may still exist (or the live check said otherwise).
    Waiting,
    /// Its node and pods are gone: the block is released.
    Released,
}

/// Releases `block` of `pool` if its node (not in `nodes`, the cached node names) is gone and
/// none of its pods exists, by the caches and then live, with an Event.
pub(super) async fn release_if_departed(
    pool: &IPPool,
    ctx: &Context,
    block: &IPBlock,
    usage: Option<&IPBlockUsageStatus>,
    nodes: &BTreeSet<String>,
) -> Result<Departed, Error> {
    let node_exists = nodes.contains(&block.spec.node);
    if node_exists {
        return Ok(Departed::NodeExists);
    }
    if !releasable(block, usage, node_exists, |uid| ctx.pods.contains(uid)) {
        return Ok(Departed::Waiting);
    }
    // The caches said so; the API server must say so too, right before the release.
    if !departed_live(ctx, block, usage).await {
        return Ok(Departed::Waiting);
    }
    let api: Api<IPBlock> = Api::all(ctx.client.clone());
    if !delete_block(&api, block).await? {
        return Ok(Departed::Released);
    }
    ctx.metrics.block_releases.inc();
    let name = pool.name_any();
    tracing::info!(pool = %name, block = %block.spec.cidr, node = %block.spec.node, "released the block of a departed node");
    let event = Event {
        type_: EventType::Normal,
        reason: "BlockReleased".into(),
        note: Some(format!(
            "block {} of node {} released: the node is gone and no pod of the block exists",
            block.spec.cidr, block.spec.node
        )),
        action: "Release".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
        tracing::warn!(error = %e, "recording an Event failed");
    }
    Ok(Departed::Released)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> IPBlock {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock", "metadata": {"name": "b"},
            "spec": {"pool": "p", "cidr": "10.0.0.0/26", "node": "n"},
        }))
        .unwrap()
    }

    fn usage(allocations: serde_json::Value) -> IPBlockUsageStatus {
        serde_json::from_value(serde_json::json!({"allocated": 1, "allocations": allocations}))
            .unwrap()
    }

    #[test]
    fn a_departed_nodes_block_goes_only_when_its_pods_are_gone() {
        let live = |uid: &str| uid == "alive";
        let a = |uid: Option<&str>| serde_json::json!([{"ip": "10.0.0.1", "containerId": "c", "interface": "eth0", "generation": 1, "podUid": uid}]);
        assert!(
            !releasable(&block(), Some(&usage(a(Some("dead")))), true, live),
            "the node still exists"
        );
        assert!(releasable(
            &block(),
            Some(&usage(a(Some("dead")))),
            false,
            live
        ));
        assert!(!releasable(
            &block(),
            Some(&usage(a(Some("alive")))),
            false,
            live
        ));
        assert!(
            !releasable(&block(), Some(&usage(a(None))), false, live),
            "an unknown owner keeps the block"
        );
        assert!(
            !releasable(&block(), Some(&usage(serde_json::json!([]))), false, live),
            "allocated 1 without details"
        );
    }

    #[test]
    fn a_block_its_node_never_reported_on_goes_after_a_minute() {
        let mut b: IPBlock = serde_json::from_value(serde_json::json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock", "metadata": {"name": "b"},
            "spec": {"pool": "p", "cidr": "10.0.0.0/26", "node": "n"},
        }))
        .unwrap();
        let none = |_: &str| false;
        assert!(
            releasable(&b, None, false, none),
            "no creation time: old enough"
        );
        let ago = |s: i64| {
            let now = k8s_openapi::jiff::Timestamp::now();
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s))
                    .unwrap(),
            ))
        };
        b.metadata.creation_timestamp = ago(10);
        assert!(
            !releasable(&b, None, false, none),
            "its agent may still report"
        );
        b.metadata.creation_timestamp = ago(120);
        assert!(releasable(&b, None, false, none));
        assert!(!releasable(&b, None, true, none), "the node exists");
    }
}
