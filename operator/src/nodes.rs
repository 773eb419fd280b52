//! The Nodes as the operator keeps them ([`NodeFacts`]), and what each node agent reports on
//! its Node (the [`NODE_STATE_ANNOTATION`] annotation), as the operator reads it. The report's
//! type is the one the agent writes (`sinew_core::node`).

use std::borrow::Cow;
use std::net::IpAddr;

use kube::ResourceExt;
use kube::api::ObjectMeta;
use serde::Deserialize;

pub use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport};

/// What the operator reads of a Node: its name and labels (selectors), the agent's report
/// and the node's addresses (the conflict check). Read from the API's Node JSON, skipping
/// the rest as it is parsed: a `k8s_openapi` Node is 1.5 KiB before any of its text (its
/// status alone 920 bytes), and at 5,000 nodes the cache of them was the largest thing the
/// operator held (decision 102).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NodeFacts {
    pub metadata: ObjectMeta,
    /// The addresses in `status.addresses` that parse as IPs.
    #[serde(rename = "status", default, deserialize_with = "addresses")]
    pub addresses: Box<[IpAddr]>,
}

/// `status.addresses[*].address` of a Node, the ones that parse.
fn addresses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<[IpAddr]>, D::Error> {
    #[derive(Deserialize)]
    struct Address {
        address: String,
    }
    #[derive(Deserialize, Default)]
    struct Status {
        #[serde(default)]
        addresses: Option<Vec<Address>>,
    }
    let status = Option::<Status>::deserialize(d)?.unwrap_or_default();
    Ok(status
        .addresses
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.address.parse().ok())
        .collect())
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

/// Keeps of a Node's metadata what the operator reads: the name, the labels and the agent's
/// report.
pub fn prune(node: &mut NodeFacts) {
    let ObjectMeta {
        name,
        labels,
        annotations,
        ..
    } = std::mem::take(&mut node.metadata);
    let report = annotations.and_then(|mut a| {
        a.remove_entry(NODE_STATE_ANNOTATION)
            .map(|kv| [kv].into_iter().collect())
    });
    node.metadata = ObjectMeta {
        name,
        labels,
        annotations: report,
        ..ObjectMeta::default()
    };
}

/// What wakes the `ClusterNetwork`: a change to anything kept.
pub fn fingerprint(node: &NodeFacts) -> Option<u64> {
    sinew_runtime::watch::fingerprint(&node.metadata, &node.addresses)
}

/// The node's report, if its agent has written a readable one.
pub fn report(node: &NodeFacts) -> Option<NodeReport> {
    node.annotations()
        .get(NODE_STATE_ANNOTATION)
        .and_then(|s| NodeReport::parse(s))
}

/// What a node's agent has said, as far as the operator can tell.
#[derive(Debug, Clone, PartialEq)]
pub enum Reported {
    /// No report: no agent has run on the node.
    Nothing,
    /// A report this build cannot read (garbled, or written by an incompatible agent): the
    /// node's state is unknown, which is not the same as clean.
    Unreadable,
    Report(Box<NodeReport>),
}

/// What the node's agent has said (see [`Reported`]).
pub fn reported(node: &NodeFacts) -> Reported {
    match node.annotations().get(NODE_STATE_ANNOTATION) {
        None => Reported::Nothing,
        Some(s) => {
            NodeReport::parse(s).map_or(Reported::Unreadable, |r| Reported::Report(Box::new(r)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubelets_node_is_kept_as_what_the_operator_reads() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u", "resourceVersion": "7",
                         "labels": {"zone": "a"},
                         "annotations": {NODE_STATE_ANNOTATION: "garbled", "sinew.dev/vtep-mac": "m",
                                         "node.alpha.kubernetes.io/ttl": "0"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.3.0.7"},
                                     {"type": "Hostname", "address": "n1"},
                                     {"type": "InternalIP", "address": "fd00::7"}],
                       "images": [{"names": ["x"], "sizeBytes": 1}],
                       "capacity": {"pods": "110"}}});
        let mut node: NodeFacts = serde_json::from_value(json).unwrap();
        prune(&mut node);
        assert_eq!(node.name_any(), "n1");
        assert_eq!(node.labels().get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            node.annotations().keys().collect::<Vec<_>>(),
            [NODE_STATE_ANNOTATION]
        );
        assert_eq!(node.metadata.uid, None);
        assert_eq!(node.metadata.managed_fields, None);
        assert_eq!(
            &*node.addresses,
            [
                "10.3.0.7".parse::<IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        assert_eq!(reported(&node), Reported::Unreadable);

        let bare: NodeFacts =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).unwrap();
        assert!(bare.addresses.is_empty());
        assert_eq!(reported(&bare), Reported::Nothing);
    }

    #[test]
    fn the_fingerprint_follows_what_is_kept() {
        let node = |labels: serde_json::Value, address: &str| -> NodeFacts {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n", "labels": labels},
                "status": {"addresses": [{"type": "InternalIP", "address": address}]}}))
            .unwrap()
        };
        let a = node(serde_json::json!({"zone": "a"}), "10.0.0.1");
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&node(serde_json::json!({"zone": "b"}), "10.0.0.1"))
        );
        assert_ne!(
            fingerprint(&a),
            fingerprint(&node(serde_json::json!({"zone": "a"}), "10.0.0.2"))
        );
    }
}
