//! The reflector helper both daemons use: a cached, continuously updated view of one kind of
//! object, pruned of what sinew never reads (stores are most of a daemon's memory), with an
//! optional wake-up for whoever reconciles from it.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// Spawns a reflector for `api` (default back-off) whose objects go through `prune` before
/// they are stored; `notify` (if any) is woken on every change and every watch error.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    prune: fn(&mut K),
    notify: Option<Arc<Notify>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(prune)
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watch error; retrying");
            }
            if let Some(n) = &notify {
                n.notify_one();
            }
        }
    });
    store
}

/// Drops managed fields (kept by no reconciler).
pub fn prune_meta<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Keeps of a Node what sinew reads: labels (pool selectors), sinew's annotations (agent
/// reports, VTEP MACs) and addresses.
pub fn prune_node(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with("sinew.dev/"));
    }
    node.spec = None;
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pruned_node_keeps_labels_sinew_annotations_and_addresses() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "labels": {"zone": "a"},
                         "annotations": {"sinew.dev/node-state": "{}", "other/x": "y"}},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                       "images": [{"names": ["big"], "sizeBytes": 1}]},
        }))
        .unwrap();
        prune_node(&mut node);
        let annotations = node.metadata.annotations.unwrap();
        assert_eq!(annotations.len(), 1);
        assert!(annotations.contains_key("sinew.dev/node-state"));
        assert_eq!(node.metadata.labels.unwrap()["zone"], "a");
        assert!(node.spec.is_none());
        let status = node.status.unwrap();
        assert!(status.images.is_none());
        assert_eq!(status.addresses.unwrap()[0].address, "192.0.2.1");
    }
}
