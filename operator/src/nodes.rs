//! What each node agent reports on its Node (`sinew.dev/node-state` annotation), as the
//! operator reads it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use serde::Deserialize;

/// Annotation the agents write (see the node agent's docs).
pub const NODE_STATE_ANNOTATION: &str = "sinew.dev/node-state";

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstallReport {
    #[serde(default)]
    pub conflist: Option<String>,
    #[serde(default)]
    pub chosen: Option<String>,
    #[serde(default)]
    pub shadowing: Vec<String>,
}

/// One node's report.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub spec_hash: Option<String>,
    #[serde(default)]
    pub install: Option<InstallReport>,
    /// Pool -> mode the node has programmed.
    #[serde(default)]
    pub modes: BTreeMap<String, String>,
    #[serde(default)]
    pub problems: Vec<String>,
    #[serde(default)]
    pub cleaned_up: bool,
    /// MTU of the node's underlay interface.
    #[serde(default)]
    pub underlay_mtu: Option<u32>,
    /// The node's underlay subnet (CIDR of the interface holding its address).
    #[serde(default)]
    pub underlay: Option<String>,
}

/// The node's report, if its agent has written a readable one.
pub fn report(node: &Node) -> Option<NodeReport> {
    node.annotations()
        .get(NODE_STATE_ANNOTATION)
        .and_then(|s| serde_json::from_str(s).ok())
}
