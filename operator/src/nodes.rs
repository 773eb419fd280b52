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
pub fn reported(node: &Node) -> Reported {
    match node.annotations().get(NODE_STATE_ANNOTATION) {
        None => Reported::Nothing,
        Some(s) => {
            NodeReport::parse(s).map_or(Reported::Unreadable, |r| Reported::Report(Box::new(r)))
        }
    }
}
