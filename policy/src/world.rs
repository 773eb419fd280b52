//! The world the compiler reads: every pod, namespace and policy view, keyed by name (so the
//! input order never matters), with the lookups policy needs: pods and policies of a
//! namespace, a namespace's labels, the live pods at an address. Updated one object at a time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::view::{NamespaceView, ObjectKey, PodView, PolicyView};

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

#[derive(Debug, Clone, Default)]
pub struct World {
    namespaces: BTreeMap<String, NamespaceView>,
    pods: BTreeMap<ObjectKey, Arc<PodView>>,
    policies: BTreeMap<ObjectKey, PolicyView>,
    /// Pods that can be peers (pod network, not terminated) by each of their addresses,
    /// sorted by name (shared with `pods`, so a peer lookup is one search by address).
    live_by_ip: BTreeMap<IpAddr, Vec<Arc<PodView>>>,
}

impl World {
    pub fn new(
        namespaces: impl IntoIterator<Item = NamespaceView>,
        pods: impl IntoIterator<Item = PodView>,
        policies: impl IntoIterator<Item = PolicyView>,
    ) -> Self {
        let mut w = World::default();
        namespaces.into_iter().for_each(|n| w.upsert_namespace(n));
        pods.into_iter().for_each(|p| w.upsert_pod(p));
        policies.into_iter().for_each(|p| w.upsert_policy(p));
        w
    }

    pub fn upsert_namespace(&mut self, ns: NamespaceView) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    pub fn upsert_pod(&mut self, pod: PodView) {
        let key = pod.key();
        self.remove_pod(&key);
        let pod = Arc::new(pod);
        if pod.is_policy_pod() {
            for ip in &pod.ips {
                let at = self.live_by_ip.entry(*ip).or_default();
                let i =
                    at.partition_point(|p| (&p.namespace, &p.name) < (&key.namespace, &key.name));
                at.insert(i, Arc::clone(&pod));
            }
        }
        self.pods.insert(key, pod);
    }

    pub fn remove_pod(&mut self, key: &ObjectKey) {
        let Some(old) = self.pods.remove(key) else {
            return;
        };
        for ip in &old.ips {
            if let Some(set) = self.live_by_ip.get_mut(ip) {
                set.retain(|p| !Arc::ptr_eq(p, &old));
                if set.is_empty() {
                    self.live_by_ip.remove(ip);
                }
            }
        }
    }

    pub fn upsert_policy(&mut self, policy: PolicyView) {
        self.policies.insert(policy.key(), policy);
    }

    pub fn remove_policy(&mut self, key: &ObjectKey) {
        self.policies.remove(key);
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &NamespaceView> {
        self.namespaces.values()
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodView> {
        self.pods.values().map(|p| p.as_ref())
    }

    pub fn policies(&self) -> impl Iterator<Item = &PolicyView> {
        self.policies.values()
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&PodView> {
        self.pods.get(key).map(|p| p.as_ref())
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespaceView> {
        self.namespaces.get(name)
    }

    pub fn policy(&self, key: &ObjectKey) -> Option<&PolicyView> {
        self.policies.get(key)
    }

    /// A namespace's labels; a namespace not (yet) known has none.
    pub fn namespace_labels(&self, name: &str) -> &BTreeMap<String, String> {
        self.namespaces.get(name).map_or(&NO_LABELS, |n| &n.labels)
    }

    /// The names of the namespaces that hold pods (known namespaces or not), in order.
    pub fn pod_namespaces(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for k in self.pods.keys() {
            if out.last() != Some(&k.namespace.as_str()) {
                out.push(&k.namespace);
            }
        }
        out
    }

    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a PodView> + 'a {
        range_of(&self.pods, namespace).map(|p| p.as_ref())
    }

    pub fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a PolicyView> + 'a {
        range_of(&self.policies, namespace)
    }

    /// The pods that can be peers (pod network, not terminated) holding `addr`.
    pub fn live_pods_at(&self, addr: IpAddr) -> impl Iterator<Item = &PodView> {
        self.live_by_ip
            .get(&addr)
            .into_iter()
            .flatten()
            .map(|p| p.as_ref())
    }

    /// The live pods' addresses in `lo..=hi` (one family), each with its pod, in order.
    pub fn live_addresses_in(
        &self,
        lo: IpAddr,
        hi: IpAddr,
    ) -> impl Iterator<Item = (IpAddr, &PodView)> {
        self.live_by_ip
            .range(lo..=hi)
            .flat_map(|(ip, pods)| pods.iter().map(|p| (*ip, p.as_ref())))
    }
}

fn range_of<'a, V>(
    map: &'a BTreeMap<ObjectKey, V>,
    namespace: &'a str,
) -> impl Iterator<Item = &'a V> + 'a {
    map.range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
        .map(|(_, v)| v)
}
