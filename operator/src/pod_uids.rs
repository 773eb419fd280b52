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

/// A set of pod UIDs kept in 16 bytes each where the text allows it without loss: a UID as
/// Kubernetes writes it (a lower-case UUID) and a static pod's config hash (32 lower-case
/// hex digits) are two distinct kinds of 128-bit numbers; anything else is kept as text. At
/// 150,000 pods this is a third of a set of strings.
#[derive(Debug, Default)]
pub struct UidSet {
    uuids: HashSet<u128>,
    hashes: HashSet<u128>,
    other: HashSet<Box<str>>,
}

/// How a UID is kept in a [`UidSet`].
enum Kept<'a> {
    Uuid(u128),
    Hash(u128),
    Text(&'a str),
}

/// The number written by `digits` lower-case hex digits (`None` on anything else).
fn lower_hex(mut digits: impl Iterator<Item = u8>) -> Option<u128> {
    digits.try_fold(0u128, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some((n << 4) | u128::from(v))
    })
}

fn kept(uid: &str) -> Kept<'_> {
    let b = uid.as_bytes();
    if b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') {
        let digits = b
            .iter()
            .enumerate()
            .filter(|(i, _)| ![8, 13, 18, 23].contains(i));
        if let Some(n) = lower_hex(digits.map(|(_, d)| *d)) {
            return Kept::Uuid(n);
        }
    } else if b.len() == 32
        && let Some(n) = lower_hex(b.iter().copied())
    {
        return Kept::Hash(n);
    }
    Kept::Text(uid)
}

impl UidSet {
    pub fn insert(&mut self, uid: &str) {
        match kept(uid) {
            Kept::Uuid(n) => self.uuids.insert(n),
            Kept::Hash(n) => self.hashes.insert(n),
            Kept::Text(t) => self.other.insert(t.into()),
        };
    }

    pub fn remove(&mut self, uid: &str) {
        match kept(uid) {
            Kept::Uuid(n) => self.uuids.remove(&n),
            Kept::Hash(n) => self.hashes.remove(&n),
            Kept::Text(t) => self.other.remove(t),
        };
    }

    pub fn contains(&self, uid: &str) -> bool {
        match kept(uid) {
            Kept::Uuid(n) => self.uuids.contains(&n),
            Kept::Hash(n) => self.hashes.contains(&n),
            Kept::Text(t) => self.other.contains(t),
        }
    }
}

#[derive(Clone)]
pub struct PodUids {
    uids: Arc<RwLock<UidSet>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl PodUids {
    /// Starts the watch; the set fills in the background.
    pub fn watch(api: Api<PartialObjectMeta<Pod>>) -> PodUids {
        let uids = Arc::new(RwLock::new(UidSet::default()));
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let set = uids.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            let mut building = UidSet::default();
            while let Some(event) = stream.next().await {
                let uids = |p: &PartialObjectMeta<Pod>| identities(&p.metadata);
                match event {
                    Ok(Event::Init) => building = UidSet::default(),
                    Ok(Event::InitApply(p)) => uids(&p).iter().for_each(|u| building.insert(u)),
                    Ok(Event::InitDone) => {
                        if let Ok(mut s) = set.write() {
                            *s = std::mem::take(&mut building);
                        }
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Apply(p)) => {
                        if let Ok(mut s) = set.write() {
                            uids(&p).iter().for_each(|u| s.insert(u));
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
        let mut set = UidSet::default();
        uids.into_iter().for_each(|u| set.insert(u));
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

    #[test]
    fn a_uid_set_tells_every_uid_apart_exactly() {
        let uuid = "3f2a1c9e-7b4d-4e8a-9c1f-0a2b3c4d5e6f";
        let same_digits = "3f2a1c9e7b4d4e8a9c1f0a2b3c4d5e6f";
        let upper = "3F2A1C9E-7B4D-4E8A-9C1F-0A2B3C4D5E6F";
        let mut set = UidSet::default();
        for uid in [uuid, "static-hash", "u"] {
            set.insert(uid);
        }
        assert!(set.contains(uuid) && set.contains("static-hash") && set.contains("u"));
        // The same 128 bits written as a config hash, or in upper case, are other UIDs.
        assert!(!set.contains(same_digits) && !set.contains(upper));
        set.insert(same_digits);
        set.insert(upper);
        set.remove(uuid);
        assert!(!set.contains(uuid));
        assert!(set.contains(same_digits) && set.contains(upper));
        for odd in [
            "",
            "3f2a1c9e-7b4d-4e8a-9c1f-0a2b3c4d5e6",
            "3f2a1c9e+7b4d-4e8a-9c1f-0a2b3c4d5e6f",
        ] {
            assert!(!set.contains(odd), "{odd:?}");
            set.insert(odd);
            assert!(set.contains(odd), "{odd:?}");
        }
    }
}
