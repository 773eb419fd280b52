//! What each node agent reports on its Node (the [`NODE_STATE_ANNOTATION`] annotation), as
//! the operator reads it. The type is the one the agent writes (`sinew_core::node`).

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

pub use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport};

/// The node's report, if its agent has written a readable one.
pub fn report(node: &Node) -> Option<NodeReport> {
    node.annotations()
        .get(NODE_STATE_ANNOTATION)
        .and_then(|s| NodeReport::parse(s))
}
