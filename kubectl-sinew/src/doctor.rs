//! `kubectl sinew doctor [NODE]`: every current problem, from the agents' reports on their
//! Nodes (with evidence and fix), the `ClusterNetwork` and the pools' conditions.

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport, Severity};
use sinew_crds::{ClusterNetwork, IPPool};

use crate::finding::Finding;

/// The findings for the cluster (or only node `only`).
pub fn findings(
    network: Option<&ClusterNetwork>,
    pools: &[IPPool],
    nodes: &[Node],
    only: Option<&str>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(network) = network else {
        out.push(
            Finding::new(
                Severity::Critical,
                "cluster".into(),
                "NotInstalled",
                "there is no ClusterNetwork `default`: sinew is not installed or is being removed"
                    .into(),
            )
            .fix("helm install sinew charts/sinew (see the README)"),
        );
        return out;
    };
    for node in nodes {
        let name = node.name_any();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let scope = format!("node/{name}");
        let report = node
            .annotations()
            .get(NODE_STATE_ANNOTATION)
            .and_then(|a| NodeReport::parse(a));
        let Some(report) = report else {
            out.push(
                Finding::new(
                    Severity::Critical,
                    scope,
                    "NoAgentReport",
                    "the sinew agent has not reported on this node: it is not running there, or cannot reach the API server".into(),
                )
                .fix("kubectl -n sinew-system get pods -l app.kubernetes.io/name=sinew-node -o wide; look at that node's pod and its logs"),
            );
            continue;
        };
        for p in &report.problems {
            out.push(Finding::from_problem(scope.clone(), p));
        }
        for o in &report.omitted {
            out.push(Finding::new(
                o.kind.severity(),
                scope.clone(),
                o.kind.as_str(),
                format!(
                    "{} more problem(s) of this kind; a report carries the {} most severe",
                    o.count,
                    sinew_crds::node::REPORT_PROBLEMS
                ),
            )
            .fix(format!(
                "kubectl -n sinew-system logs the sinew-node pod on {name}; its metrics count every problem (sinew_node_problem)"
            )));
        }
        if !report.ready && report.problems.is_empty() && !report.cleaned_up {
            out.push(Finding::new(
                Severity::Warning,
                scope,
                "NotReady",
                "the node does not serve pods yet (no block claimed, or its first pass has not completed)".into(),
            ));
        }
    }
    if only.is_none() {
        let status = network.status.clone().unwrap_or_default();
        for c in &status.conditions {
            if c.type_ == "Stalled" && c.status == "True" {
                out.push(Finding::new(
                    Severity::Critical,
                    "clusternetwork/default".into(),
                    &c.reason,
                    c.message.clone(),
                ));
            }
        }
        for pool in pools {
            let scope = format!("pool/{}", pool.name_any());
            let status = pool.status.clone().unwrap_or_default();
            for c in &status.conditions {
                match (c.type_.as_str(), c.status.as_str()) {
                    ("Exhausted", "True") => out.push(
                        Finding::new(
                            if c.reason == "Exhausted" {
                                Severity::Critical
                            } else {
                                Severity::Warning
                            },
                            scope.clone(),
                            "PoolNearlyExhausted",
                            c.message.clone(),
                        )
                        .fix("add a pool (or widen this one's selector to fewer nodes), or free addresses"),
                    ),
                    ("Stalled", "True") => out.push(Finding::new(
                        Severity::Critical,
                        scope.clone(),
                        &c.reason,
                        c.message.clone(),
                    )),
                    _ => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_crds::node::{Problem, ProblemKind};

    fn node(name: &str, report: Option<NodeReport>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        if let Some(r) = report {
            n.metadata.annotations = Some(
                [(NODE_STATE_ANNOTATION.to_string(), r.to_annotation())]
                    .into_iter()
                    .collect(),
            );
        }
        n
    }

    #[test]
    fn problems_of_agents_and_missing_agents_are_found() {
        let network = ClusterNetwork::new("default", Default::default());
        let bad = NodeReport {
            ready: true,
            problems: vec![
                Problem::new(ProblemKind::RouteConflict, "a route").with_fix("delete it"),
            ],
            ..NodeReport::default()
        };
        let good = NodeReport {
            ready: true,
            ..NodeReport::default()
        };
        let nodes = [node("a", Some(bad)), node("b", Some(good)), node("c", None)];
        let f = findings(Some(&network), &[], &nodes, None);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            (f[0].scope.as_str(), f[0].kind.as_str()),
            ("node/a", "RouteConflict")
        );
        assert_eq!(f[0].fix.as_deref(), Some("delete it"));
        assert_eq!(f[1].kind, "NoAgentReport");
        assert!(findings(Some(&network), &[], &nodes, Some("b")).is_empty());
        assert_eq!(findings(None, &[], &nodes, None)[0].kind, "NotInstalled");
    }

    /// A node with more problems than its report carries: the rest are counted, not lost.
    #[test]
    fn problems_left_out_of_a_report_are_counted() {
        let network = ClusterNetwork::new("default", Default::default());
        let report = NodeReport {
            ready: true,
            problems: (0..20)
                .map(|i| Problem::new(ProblemKind::PeerUnreachable, format!("peer {i}")))
                .collect(),
            ..NodeReport::default()
        };
        let f = findings(Some(&network), &[], &[node("a", Some(report))], None);
        assert_eq!(f.len(), sinew_crds::node::REPORT_PROBLEMS + 1, "{f:?}");
        let last = &f[f.len() - 1];
        assert_eq!(last.kind, "PeerUnreachable");
        assert!(
            last.message.starts_with("4 more problem(s)"),
            "{}",
            last.message
        );
    }
}
