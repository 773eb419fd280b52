//! The UIDs of every pod in the cluster, from a metadata-only watch: all the operator needs to
//! know about pods (does an allocation's pod still exist?). A set of UIDs is a small fraction
//! of a store of pod objects, which matters at 10,000 pods.
//!
//! A static pod runs under the UID kubelet derives from its manifest (the config hash), and
//! that is the `K8S_POD_UID` the runtime hands the plugin; the API server only has its mirror
//! pod, whose `metadata.uid` differs and which carries the hash in the annotations
//! `kubernetes.io/config.mirror` and `kubernetes.io/config.hash`. Both count as the pod.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tracing::warn;

/// Annotations by which a mirror pod names the UID its static pod runs under.
pub const MIRROR_UID_ANNOTATIONS: [&str; 2] =
    ["kubernetes.io/config.mirror", "kubernetes.io/config.hash"];

/// Every UID under which this pod may hold an address: its own, and for a mirror pod the
/// static pod's.
pub fn identities(meta: &kube::api::ObjectMeta) -> Vec<String> {
    let mut ids: Vec<String> = meta.uid.iter().cloned().collect();
    if let Some(annotations) = &meta.annotations {
        for key in MIRROR_UID_ANNOTATIONS {
            if let Some(v) = annotations.get(key).filter(|v| !v.is_empty())
                && !ids.contains(v)
            {
                ids.push(v.clone());
            }
        }
    }
    ids
}

#[derive(Clone)]
pub struct PodUids {
    uids: Arc<RwLock<HashSet<String>>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl PodUids {
    /// Starts the watch; the set fills in the background.
    pub fn watch(api: Api<PartialObjectMeta<Pod>>) -> PodUids {
        let uids = Arc::new(RwLock::new(HashSet::new()));
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let set = uids.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            let mut building: HashSet<String> = HashSet::new();
            while let Some(event) = stream.next().await {
                let uids = |p: &PartialObjectMeta<Pod>| identities(&p.metadata);
                match event {
                    Ok(Event::Init) => building = HashSet::new(),
                    Ok(Event::InitApply(p)) => building.extend(uids(&p)),
                    Ok(Event::InitDone) => {
                        if let Ok(mut s) = set.write() {
                            *s = std::mem::take(&mut building);
                        }
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Apply(p)) => {
                        if let Ok(mut s) = set.write() {
                            s.extend(uids(&p));
                        }
                    }
                    Ok(Event::Delete(p)) => {
                        if let Ok(mut s) = set.write() {
                            for u in uids(&p) {
                                s.remove(&u);
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "pod watch error; retrying"),
                }
            }
        });
        PodUids { uids, ready }
    }

    /// Test seam: a fixed set of UIDs, ready at once, with no watch behind it (the mock-API
    /// scenario tests build a [`Context`](crate::context::Context) without a pod list).
    #[cfg(test)]
    pub(crate) fn fixed<'a>(uids: impl IntoIterator<Item = &'a str>) -> PodUids {
        let (_, ready) = tokio::sync::watch::channel(true);
        let set = uids.into_iter().map(String::from).collect();
        PodUids {
            uids: Arc::new(RwLock::new(set)),
            ready,
        }
    }

    /// Whether a pod with this UID exists (as of the watch).
    pub fn contains(&self, uid: &str) -> bool {
        self.uids.read().map(|s| s.contains(uid)).unwrap_or(true)
    }

    /// Waits for the initial list; false if the watch ended first.
    pub async fn wait_until_ready(&self) -> bool {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_pod_stands_for_its_static_pod() {
        let meta: kube::api::ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "etcd-node-a", "namespace": "kube-system", "uid": "mirror-uid",
            "annotations": {"kubernetes.io/config.mirror": "hash-123", "kubernetes.io/config.hash": "hash-123"},
        }))
        .unwrap();
        assert_eq!(identities(&meta), ["mirror-uid", "hash-123"]);
        let plain: kube::api::ObjectMeta =
            serde_json::from_value(serde_json::json!({"name": "p", "uid": "u"})).unwrap();
        assert_eq!(identities(&plain), ["u"]);
    }
}
