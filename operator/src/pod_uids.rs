//! The UIDs of every pod in the cluster, from a metadata-only watch: all the operator needs to
//! know about pods (does an allocation's pod still exist?). A set of UIDs is a small fraction
//! of a store of pod objects, which matters at 10,000 pods.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tracing::warn;

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
                let uid = |p: &PartialObjectMeta<Pod>| p.metadata.uid.clone();
                match event {
                    Ok(Event::Init) => building = HashSet::new(),
                    Ok(Event::InitApply(p)) => building.extend(uid(&p)),
                    Ok(Event::InitDone) => {
                        if let Ok(mut s) = set.write() {
                            *s = std::mem::take(&mut building);
                        }
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Apply(p)) => {
                        if let (Ok(mut s), Some(u)) = (set.write(), uid(&p)) {
                            s.insert(u);
                        }
                    }
                    Ok(Event::Delete(p)) => {
                        if let (Ok(mut s), Some(u)) = (set.write(), uid(&p)) {
                            s.remove(&u);
                        }
                    }
                    Err(e) => warn!(error = %e, "pod watch error; retrying"),
                }
            }
        });
        PodUids { uids, ready }
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
