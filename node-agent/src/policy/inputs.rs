//! What the node's policy is compiled from: the world of every pod that matters to it, every
//! namespace and NetworkPolicy, kept up to date one object at a time (a change never rebuilds
//! it). Four watches (pods take two, see [`pod_selectors`]) turn their objects into the
//! compiler's views at once (a pod is kept as what policy reads of it: labels, addresses,
//! named ports, node, host network, phase) and send the changes to the policy loop, which
//! applies them to its `World` before it compiles. A change that leaves the view as it was
//! (a pod's conditions, a policy's status) wakes nothing.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::metrics::counter::Counter;
use sinew_policy::{NamespaceView, ObjectKey, PodView, PolicyView, World};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::http::Metrics;

/// One change of the world.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Pod(Edit<PodView>),
    Policy(Edit<PolicyView>),
    Namespace(Edit<NamespaceView>),
    /// A watch holds its whole initial list.
    Listed(&'static str),
}

/// An object seen (with its view) or gone (by its key).
#[derive(Debug, Clone, PartialEq)]
pub enum Edit<V> {
    Upsert(V),
    Remove(ObjectKey),
}

/// The world as the watches last told it, and the changes still to apply.
pub struct Inputs {
    world: World,
    changes: mpsc::UnboundedReceiver<Change>,
    listed: HashSet<&'static str>,
    watches: Vec<JoinHandle<()>>,
}

/// The watches end with their inputs (policy turned off frees what they held).
impl Drop for Inputs {
    fn drop(&mut self) {
        self.watches.iter().for_each(JoinHandle::abort);
    }
}

impl Inputs {
    /// Starts the watches of node `node`; a change policy reads wakes `wake`. What each
    /// delivers is counted in `metrics` (`sinew_node_watch_events_total`).
    pub fn watch(
        client: &kube::Client,
        node: &str,
        wake: &Arc<Notify>,
        metrics: &Metrics,
    ) -> Inputs {
        let (tx, changes) = mpsc::unbounded_channel();
        let feed = |resource| Feed {
            tx: tx.clone(),
            wake: wake.clone(),
            received: metrics.watch_events(resource),
        };
        let [here, elsewhere] = pod_selectors(node);
        let mut watches: Vec<JoinHandle<()>> = [("pods here", here), ("pods elsewhere", elsewhere)]
            .into_iter()
            .map(|(what, fields)| {
                follow(
                    Api::<Pod>::all(client.clone()),
                    watcher::Config::default().fields(&fields),
                    what,
                    |p| Change::Pod(Edit::Upsert(PodView::from(p))),
                    |k| Change::Pod(Edit::Remove(k)),
                    feed("pods"),
                )
            })
            .collect();
        watches.extend([
            follow(
                Api::<NetworkPolicy>::all(client.clone()),
                watcher::Config::default(),
                "networkpolicies",
                |p| Change::Policy(Edit::Upsert(PolicyView::from(p))),
                |k| Change::Policy(Edit::Remove(k)),
                feed("networkpolicies"),
            ),
            // Metadata only: names and labels are all policy reads of a namespace.
            follow(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
                "namespaces",
                |ns| Change::Namespace(Edit::Upsert(namespace_view(&ns.metadata))),
                |k| Change::Namespace(Edit::Remove(k)),
                feed("namespaces"),
            ),
        ]);
        Inputs {
            world: World::default(),
            changes,
            listed: HashSet::new(),
            watches,
        }
    }

    /// Waits until every watch has delivered its initial list.
    pub async fn synced(&mut self) -> Result<(), String> {
        while self.listed.len() < self.watches.len() {
            let change = self
                .changes
                .recv()
                .await
                .ok_or_else(|| "the watches ended".to_string())?;
            self.apply(change);
        }
        Ok(())
    }

    /// Applies the changes received so far; whether the world changed.
    pub fn update(&mut self) -> bool {
        let mut changed = false;
        while let Ok(change) = self.changes.try_recv() {
            changed |= self.apply(change);
        }
        changed
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    fn apply(&mut self, change: Change) -> bool {
        apply(&mut self.world, &mut self.listed, change)
    }
}

/// Applies one change to `world`; whether what the compiler reads changed.
fn apply(world: &mut World, listed: &mut HashSet<&'static str>, change: Change) -> bool {
    match change {
        Change::Pod(Edit::Upsert(view)) => {
            let same = world.pod(&view.key()) == Some(&view);
            if !same {
                world.upsert_pod(view);
            }
            !same
        }
        Change::Pod(Edit::Remove(key)) => {
            let known = world.pod(&key).is_some();
            world.remove_pod(&key);
            known
        }
        Change::Policy(Edit::Upsert(view)) => {
            let same = world.policy(&view.key()) == Some(&view);
            if !same {
                world.upsert_policy(view);
            }
            !same
        }
        Change::Policy(Edit::Remove(key)) => {
            let known = world.policy(&key).is_some();
            world.remove_policy(&key);
            known
        }
        Change::Namespace(Edit::Upsert(view)) => {
            let same = world.namespace(&view.name) == Some(&view);
            if !same {
                world.upsert_namespace(view);
            }
            !same
        }
        Change::Namespace(Edit::Remove(key)) => {
            let known = world.namespace(&key.name).is_some();
            world.remove_namespace(&key.name);
            known
        }
        Change::Listed(what) => listed.insert(what),
    }
}

/// What one watch knows: the keys of its objects, and those seen by a re-list under way.
#[derive(Debug, Default)]
struct Followed {
    known: HashSet<ObjectKey>,
    relisted: Option<HashSet<ObjectKey>>,
}

impl Followed {
    /// The changes one watch event makes (pure): an object seen is an upsert; a deletion a
    /// removal; the end of a (re-)list removes what the list no longer holds.
    fn on<K: kube::Resource>(
        &mut self,
        event: watcher::Event<K>,
        what: &'static str,
        upsert: impl Fn(&K) -> Change,
        remove: impl Fn(ObjectKey) -> Change,
    ) -> Vec<Change> {
        match event {
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let k = key(&obj);
                if let Some(seen) = &mut self.relisted {
                    seen.insert(k.clone());
                }
                self.known.insert(k);
                vec![upsert(&obj)]
            }
            watcher::Event::Delete(obj) => {
                let k = key(&obj);
                self.known.remove(&k);
                vec![remove(k)]
            }
            watcher::Event::InitDone => {
                let seen = self.relisted.take().unwrap_or_default();
                let gone: Vec<ObjectKey> = self.known.difference(&seen).cloned().collect();
                let mut out: Vec<Change> = gone
                    .into_iter()
                    .map(|k| {
                        self.known.remove(&k);
                        remove(k)
                    })
                    .collect();
                out.push(Change::Listed(what));
                out
            }
        }
    }
}

/// The two pod watches' field selectors, this node's pods and the others' (pure).
///
/// - This node's pods are followed from their creation: a pod is isolated before its first
///   packet, so its interface is in the table before it has an address.
/// - Another node's pod matters here only as a peer, that is, by its address, and only until
///   it ends (`Succeeded` or `Failed`: its address may already be another pod's, and policy
///   never counts it). It is followed only in between. Its creation, binding and pending
///   statuses, and its last statuses and deletion once it has ended, cost this node nothing
///   (decision 105).
///
/// `spec.nodeName` is immutable once set, so no pod is in both watches.
pub fn pod_selectors(node: &str) -> [String; 2] {
    [
        format!("spec.nodeName={node}"),
        format!(
            "spec.nodeName!={node},status.podIP!=,status.phase!=Succeeded,status.phase!=Failed"
        ),
    ]
}

/// An object's key (a namespace's is its name).
fn key<K: kube::Resource>(obj: &K) -> ObjectKey {
    let meta = obj.meta();
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Where a watch delivers: the loop's changes, its wake-up, the watch's count of objects.
struct Feed {
    tx: mpsc::UnboundedSender<Change>,
    wake: Arc<Notify>,
    received: Counter,
}

/// Watches `api`, sending each change to the loop and waking it.
fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    upsert: fn(&K) -> Change,
    remove: fn(ObjectKey) -> Change,
    feed: Feed,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut followed = Followed::default();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if matches!(
                        event,
                        watcher::Event::Apply(_)
                            | watcher::Event::InitApply(_)
                            | watcher::Event::Delete(_)
                    ) {
                        feed.received.inc();
                    }
                    for change in followed.on(event, what, upsert, remove) {
                        if feed.tx.send(change).is_err() {
                            return;
                        }
                    }
                    feed.wake.notify_one();
                }
                Err(e) => warn!(watch = what, error = %e, "policy watch error; retrying"),
            }
        }
    })
}

/// A namespace's view from its metadata (the API server labels every namespace with its name;
/// the view adds that label where it is missing).
fn namespace_view(meta: &ObjectMeta) -> NamespaceView {
    NamespaceView::from(&Namespace {
        metadata: ObjectMeta {
            name: meta.name.clone(),
            labels: meta.labels.clone(),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn on(f: &mut Followed, event: watcher::Event<Pod>) -> Vec<Change> {
        f.on(
            event,
            "pods",
            |p| Change::Pod(Edit::Upsert(PodView::from(p))),
            |k| Change::Pod(Edit::Remove(k)),
        )
    }

    fn removed(name: &str) -> Change {
        Change::Pod(Edit::Remove(ObjectKey::new("default", name)))
    }

    /// A re-list (after the watch lost its place) removes exactly what it no longer holds,
    /// and the loop's world ends as the cluster is.
    #[test]
    fn a_relist_removes_what_is_gone_and_the_world_follows() {
        let mut f = Followed::default();
        let mut world = World::default();
        let mut listed = HashSet::new();
        let mut changes = on(&mut f, watcher::Event::Init);
        for p in ["a", "b", "c"] {
            changes.extend(on(&mut f, watcher::Event::InitApply(pod(p, "web"))));
        }
        changes.extend(on(&mut f, watcher::Event::InitDone));
        assert_eq!(changes.last(), Some(&Change::Listed("pods")));
        changes.extend(on(&mut f, watcher::Event::Delete(pod("a", "web"))));
        // The watch lost its place while b went and d came.
        changes.extend(on(&mut f, watcher::Event::Init));
        for p in ["c", "d"] {
            changes.extend(on(&mut f, watcher::Event::InitApply(pod(p, "web"))));
        }
        let relist_end = on(&mut f, watcher::Event::InitDone);
        assert_eq!(relist_end, vec![removed("b"), Change::Listed("pods")]);
        changes.extend(relist_end);
        for c in changes {
            apply(&mut world, &mut listed, c);
        }
        let names: Vec<&str> = world.pods().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c", "d"]);
        assert!(listed.contains("pods"));
    }

    /// Only a change of what policy reads counts: a pod's conditions do not, its labels do.
    #[test]
    fn only_changes_of_what_policy_reads_count() {
        let mut world = World::default();
        let mut listed = HashSet::new();
        let mut apply_pod =
            |p: &Pod| apply(&mut world, &mut listed, Change::Pod(Edit::Upsert(p.into())));
        let web = pod("a", "web");
        assert!(apply_pod(&web));
        let mut not_ready = web.clone();
        not_ready.status.as_mut().unwrap().conditions = None;
        assert!(!apply_pod(&not_ready));
        assert!(apply_pod(&pod("a", "db")));
        assert!(apply(&mut world, &mut listed, removed("a")));
        assert!(!apply(&mut world, &mut listed, removed("a")));
    }

    #[test]
    fn namespaces_are_labelled_with_their_name() {
        let view = namespace_view(&ObjectMeta {
            name: Some("prod".into()),
            ..ObjectMeta::default()
        });
        assert_eq!(
            view.labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("prod")
        );
    }
}
