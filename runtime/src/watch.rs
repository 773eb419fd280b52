//! The reflector helper both daemons use: a cached, continuously updated view of one kind of
//! object, pruned of what sinew never reads (stores are most of a daemon's memory), with an
//! optional wake-up for whoever reconciles from it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use kube::Api;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// What a cluster-scoped kind must be for a daemon to watch and cache it.
pub trait Watchable:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watchable for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A hash of what a reconciler reads of an object: two versions with the same fingerprint
/// look the same to it, so a change between them is not worth a wake-up. `None` (the object
/// could not be hashed) always wakes.
pub type Fingerprint<K> = Arc<dyn Fn(&K) -> Option<u64> + Send + Sync>;

/// Whom a reflector wakes, and on which changes.
pub struct Wake<K> {
    pub notify: Arc<Notify>,
    /// What the reconciler reads of each object (see [`fingerprint`]).
    pub fingerprint: Fingerprint<K>,
    /// Counts every object the watch delivers (what this daemon receives of the kind).
    pub received: Option<prometheus_client::metrics::counter::Counter>,
    /// Counts the wake-ups, each once the store holds its change (see [`Changes`]).
    pub changes: Option<Changes>,
}

/// How many times a store changed in what its fingerprint covers (or may have: a watch
/// error counts too). A reader that remembers the count it derived something from knows the
/// derivation still holds while the count is the same. Read the count before the store: a
/// change that lands in between then only makes the next look derive again.
#[derive(Debug, Clone, Default)]
pub struct Changes(Arc<AtomicU64>);

impl Changes {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Counts a change, once the store holds it (what [`reflect`] does; a test that fills
    /// a store itself does the same).
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Spawns a reflector for `api` (default back-off) whose objects go through `prune` before
/// they are stored. `wake` (if any) is woken, once the store holds the change, when an
/// object appears, is deleted or changes its fingerprint, when a (re-)list completes, and on
/// every watch error; not when only what its reconciler ignores changed (a status it does
/// not read, a Node heartbeat, `resourceVersion`).
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    prune: fn(&mut K),
    wake: Option<Wake<K>>,
) -> Store<K>
where
    K: Watchable,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(prune)
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut filter = wake
            .as_ref()
            .map(|w| WakeFilter::new(w.fingerprint.clone()));
        while let Some(event) = stream.next().await {
            let wakes = match &event {
                Err(e) => {
                    tracing::warn!(error = %e, "watch error; retrying");
                    true
                }
                Ok(event) => {
                    if let (
                        Some(counter),
                        watcher::Event::Apply(_)
                        | watcher::Event::Delete(_)
                        | watcher::Event::InitApply(_),
                    ) = (wake.as_ref().and_then(|w| w.received.as_ref()), event)
                    {
                        counter.inc();
                    }
                    filter.as_mut().is_some_and(|f| f.wakes(event))
                }
            };
            if wakes && let Some(w) = &wake {
                if let Some(changes) = &w.changes {
                    changes.bump();
                }
                w.notify.notify_one();
            }
        }
    });
    store
}

/// The last fingerprint of every object a reflector holds, and the wake-up decision for
/// each watch event (pure: no I/O, no clock).
pub struct WakeFilter<K: kube::Resource<DynamicType = ()>> {
    fingerprint: Fingerprint<K>,
    last: HashMap<ObjectRef<K>, Option<u64>>,
    /// Fingerprints of a re-list under way (between `Init` and `InitDone`).
    relist: HashMap<ObjectRef<K>, Option<u64>>,
}

impl<K: kube::Resource<DynamicType = ()>> WakeFilter<K> {
    pub fn new(fingerprint: Fingerprint<K>) -> WakeFilter<K> {
        WakeFilter {
            fingerprint,
            last: HashMap::new(),
            relist: HashMap::new(),
        }
    }

    /// Whether `event` is worth a wake-up: a new object, a changed (or unhashable)
    /// fingerprint, a deletion, or the end of a (re-)list. Objects of a re-list wake once,
    /// at its end, when the store holds them all.
    pub fn wakes(&mut self, event: &watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(obj) => {
                let fp = (self.fingerprint)(obj);
                let previous = self.last.insert(ObjectRef::from_obj(obj), fp);
                fp.is_none() || previous != Some(fp)
            }
            watcher::Event::Delete(obj) => {
                self.last.remove(&ObjectRef::from_obj(obj));
                true
            }
            watcher::Event::Init => {
                self.relist.clear();
                false
            }
            watcher::Event::InitApply(obj) => {
                self.relist
                    .insert(ObjectRef::from_obj(obj), (self.fingerprint)(obj));
                false
            }
            watcher::Event::InitDone => {
                self.last = std::mem::take(&mut self.relist);
                true
            }
        }
    }
}

/// The fingerprint of an object's metadata (without `resourceVersion` and `managedFields`,
/// which every write changes) and of `rest`, the parts of it a reconciler reads.
pub fn fingerprint<T: serde::Serialize + ?Sized>(meta: &ObjectMeta, rest: &T) -> Option<u64> {
    let meta = ObjectMeta {
        resource_version: None,
        managed_fields: None,
        ..meta.clone()
    };
    let mut out = HashWriter(DefaultHasher::new());
    serde_json::to_writer(&mut out, &(&meta, rest)).ok()?;
    Some(out.0.finish())
}

/// Feeds what is written into a hasher.
struct HashWriter(DefaultHasher);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Nodes per page of a (re-)list. A Node as the kubelet writes it is several KiB (its images
/// alone), and a page is held whole, as JSON, before its Nodes are read: the default 500 is
/// megabytes at once. (At 5,000 nodes this did not lower the operator's peak
/// at its start measurably: other lists dominate it.)
pub const NODE_LIST_PAGE: u32 = 100;

/// Drops managed fields (kept by no reconciler).
pub fn prune_meta<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::ConfigMap;
    use watcher::Event;

    fn config_map(name: &str, rv: &str, data: &str, status_like: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv},
            "data": {"read": data},
            // Stands for a status the reconciler does not read.
            "binaryData": {"ignored": status_like},
        }))
        .unwrap()
    }

    /// Reads `data` only, as a reconciler that ignores a status would.
    fn data_only(cm: &ConfigMap) -> Option<u64> {
        fingerprint(&cm.metadata, &cm.data)
    }

    #[test]
    fn only_changes_a_reconciler_reads_wake_it() {
        let mut f = WakeFilter::new(Arc::new(data_only));
        assert!(!f.wakes(&Event::Init));
        assert!(!f.wakes(&Event::InitApply(config_map("a", "1", "x", "AQ=="))));
        assert!(f.wakes(&Event::InitDone), "the list is complete");
        let unchanged = config_map("a", "2", "x", "Ag==");
        assert!(
            !f.wakes(&Event::Apply(unchanged.clone())),
            "a new resourceVersion and an unread part changed"
        );
        assert!(!f.wakes(&Event::Apply(unchanged.clone())), "the same again");
        assert!(
            f.wakes(&Event::Apply(config_map("a", "3", "y", "Ag=="))),
            "read part"
        );
        assert!(
            f.wakes(&Event::Apply(config_map("b", "4", "y", "Ag=="))),
            "new object"
        );
        let mut annotated = config_map("a", "5", "y", "Ag==");
        annotated
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("k".into(), "v".into());
        assert!(f.wakes(&Event::Apply(annotated)), "metadata is read");
        assert!(
            f.wakes(&Event::Delete(config_map("b", "6", "y", "Ag=="))),
            "deleted"
        );
        assert!(
            f.wakes(&Event::Apply(config_map("b", "7", "y", "Ag=="))),
            "created again after its deletion"
        );
    }

    #[test]
    fn a_relist_wakes_once_at_its_end_and_replaces_the_fingerprints() {
        let mut f = WakeFilter::new(Arc::new(data_only));
        assert!(!f.wakes(&Event::Init));
        assert!(!f.wakes(&Event::InitApply(config_map("a", "1", "x", ""))));
        assert!(!f.wakes(&Event::InitApply(config_map("b", "1", "x", ""))));
        assert!(f.wakes(&Event::InitDone));
        // The watch broke; "b" was deleted meanwhile and is not listed again.
        assert!(!f.wakes(&Event::Init));
        assert!(!f.wakes(&Event::InitApply(config_map("a", "9", "x", ""))));
        assert!(f.wakes(&Event::InitDone));
        assert!(
            f.wakes(&Event::Apply(config_map("b", "10", "x", ""))),
            "b was forgotten with the re-list: it is new again"
        );
        assert!(!f.wakes(&Event::Apply(config_map("a", "11", "x", ""))));
    }

    #[test]
    fn an_unhashable_object_always_wakes() {
        let mut f = WakeFilter::new(Arc::new(|_: &ConfigMap| None));
        let cm = config_map("a", "1", "x", "");
        assert!(f.wakes(&Event::Apply(cm.clone())));
        assert!(f.wakes(&Event::Apply(cm)));
    }
}
