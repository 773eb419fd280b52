//! What each node agent reports on its Node (the [`NODE_STATE_ANNOTATION`] annotation), as
//! the operator reads it. The type is the one the agent writes (`sinew_core::node`).

use kube::ResourceExt;
use sinew_runtime::node::NodeFacts;

pub use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport};

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
    fn a_garbled_report_is_not_the_same_as_none() {
        let node = |annotations: serde_json::Value| -> NodeFacts {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "n", "annotations": annotations}}),
            )
            .unwrap()
        };
        assert_eq!(reported(&node(serde_json::json!({}))), Reported::Nothing);
        assert_eq!(
            reported(&node(serde_json::json!({NODE_STATE_ANNOTATION: "garbled"}))),
            Reported::Unreadable
        );
        let written = NodeReport {
            ready: true,
            ..NodeReport::default()
        };
        assert_eq!(
            reported(&node(
                serde_json::json!({NODE_STATE_ANNOTATION: written.to_annotation()})
            )),
            Reported::Report(Box::new(written))
        );
    }
}
