//! The Node as sinew's daemons keep it ([`NodeFacts`]): what they read of it, taken from the
//! API's JSON as it is parsed. A `k8s_openapi` Node is 1.5 KiB before any of its text (its
//! status alone 920 bytes, mostly empty fields), and at 5,000 nodes the cache of pruned
//! Nodes was the largest thing either daemon held (decision 102).

use std::borrow::Cow;
use std::net::IpAddr;

use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

/// What sinew reads of a Node: its name, UID and version (Events, report caching), its
/// labels (selectors), sinew's annotations (agent reports, VTEP MACs) and its addresses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NodeFacts {
    pub metadata: ObjectMeta,
    #[serde(rename = "status", default)]
    pub addresses: NodeAddresses,
}

/// A Node's `status.addresses`, the ones that parse as IPs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeAddresses {
    /// The node's address: its InternalIP, else its first address (whether it parses).
    pub primary: Option<IpAddr>,
    /// Every address that parses, in the Node's order.
    pub all: Box<[IpAddr]>,
}

impl<'de> Deserialize<'de> for NodeAddresses {
    /// From a Node's `status`: its other fields (images, conditions, ...) are skipped.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Address {
            #[serde(rename = "type", default)]
            type_: String,
            address: String,
        }
        #[derive(Deserialize, Default)]
        struct Status {
            #[serde(default)]
            addresses: Option<Vec<Address>>,
        }
        let listed = Option::<Status>::deserialize(d)?
            .unwrap_or_default()
            .addresses
            .unwrap_or_default();
        let primary = listed
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .or_else(|| listed.first())
            .and_then(|a| a.address.parse().ok());
        Ok(NodeAddresses {
            primary,
            all: listed
                .iter()
                .filter_map(|a| a.address.parse().ok())
                .collect(),
        })
    }
}

impl kube::Resource for NodeFacts {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Keeps of a Node's metadata what sinew reads (see [`NodeFacts`]).
pub fn prune(node: &mut NodeFacts) {
    let ObjectMeta {
        name,
        uid,
        resource_version,
        labels,
        annotations,
        ..
    } = std::mem::take(&mut node.metadata);
    let annotations = annotations
        .map(|a| {
            a.into_iter()
                .filter(|(k, _)| k.starts_with("sinew.dev/"))
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .filter(|a| !a.is_empty());
    node.metadata = ObjectMeta {
        name,
        uid,
        resource_version,
        labels,
        annotations,
        ..ObjectMeta::default()
    };
}

/// What a reconciler reads of a Node: kubelet's status updates (heartbeats, images) and a new
/// `resourceVersion` leave it alone.
pub fn fingerprint(node: &NodeFacts) -> Option<u64> {
    crate::watch::fingerprint(&node.metadata, &node.addresses)
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;

    fn kept(json: serde_json::Value) -> NodeFacts {
        let mut node: NodeFacts = serde_json::from_value(json).unwrap();
        prune(&mut node);
        node
    }

    #[test]
    fn a_kubelets_node_is_kept_as_what_sinew_reads() {
        let node = kept(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u1", "resourceVersion": "7",
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {"zone": "a"},
                         "annotations": {"sinew.dev/node-state": "{}", "sinew.dev/vtep-mac": "m",
                                         "node.alpha.kubernetes.io/ttl": "0"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                     {"type": "ExternalIP", "address": "203.0.113.7"},
                                     {"type": "InternalIP", "address": "10.3.0.7"},
                                     {"type": "InternalIP", "address": "fd00::7"}],
                       "images": [{"names": ["x"], "sizeBytes": 1}],
                       "capacity": {"pods": "110"}}}));
        assert_eq!(node.name_any(), "n1");
        assert_eq!(node.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(node.resource_version().as_deref(), Some("7"));
        assert_eq!(node.labels().get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            node.annotations().keys().collect::<Vec<_>>(),
            ["sinew.dev/node-state", "sinew.dev/vtep-mac"]
        );
        assert_eq!(node.metadata.creation_timestamp, None);
        assert_eq!(node.metadata.managed_fields, None);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(node.addresses.primary, Some(ip("10.3.0.7")));
        assert_eq!(
            &*node.addresses.all,
            [ip("203.0.113.7"), ip("10.3.0.7"), ip("fd00::7")]
        );
    }

    #[test]
    fn without_an_internal_ip_the_first_address_is_the_nodes() {
        let addresses = |listed: serde_json::Value| {
            kept(serde_json::json!({"metadata": {"name": "n"}, "status": {"addresses": listed}}))
                .addresses
        };
        let external = addresses(serde_json::json!([
            {"type": "ExternalIP", "address": "203.0.113.7"},
            {"type": "ExternalIP", "address": "203.0.113.8"}]));
        assert_eq!(external.primary, "203.0.113.7".parse().ok());
        let hostname_first = addresses(serde_json::json!([
            {"type": "Hostname", "address": "n"},
            {"type": "ExternalIP", "address": "203.0.113.7"}]));
        assert_eq!(
            hostname_first.primary, None,
            "the first address does not parse"
        );
        let bare = kept(serde_json::json!({"metadata": {"name": "n"}}));
        assert_eq!(bare.addresses, NodeAddresses::default());
        assert_eq!(bare.metadata.annotations, None);
    }

    #[test]
    fn heartbeats_do_not_change_the_fingerprint() {
        let node = |rv: &str, heartbeat: &str, mac: &str, ip: &str| {
            fingerprint(&kept(serde_json::json!({
                "metadata": {"name": "n", "resourceVersion": rv,
                             "annotations": {"sinew.dev/vtep-mac": mac}},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                           "conditions": [{"type": "Ready", "status": "True",
                                           "lastHeartbeatTime": heartbeat}]},
            })))
        };
        let before = node(
            "1",
            "2026-01-01T00:00:00Z",
            "02:00:00:00:00:01",
            "192.0.2.1",
        );
        assert!(before.is_some());
        let later = "2026-01-01T00:01:00Z";
        assert_eq!(before, node("2", later, "02:00:00:00:00:01", "192.0.2.1"));
        assert_ne!(before, node("3", later, "02:00:00:00:00:02", "192.0.2.1"));
        assert_ne!(before, node("4", later, "02:00:00:00:00:01", "192.0.2.2"));
    }
}
