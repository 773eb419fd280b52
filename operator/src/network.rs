//! The `ClusterNetwork` reconciler: rolls out the node agent DaemonSet and aggregates the
//! nodes' reports into status; on deletion, holds a finalizer until every agent has cleaned
//! its node, then removes the DaemonSet.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sinew_crds::cluster_network::{NodeCounts, NodeProblem};
use sinew_crds::node::ProblemKind;
use sinew_crds::{ClusterNetwork, ClusterNetworkStatus, NetworkPolicyMode};
use tracing::info;

use crate::context::{
    Context, Error, FIELD_MANAGER, apply_status, delete_if_present, ensure_finalizer,
    remove_finalizer,
};
use crate::nodes;
use crate::{conditions, daemonset};
use sinew_runtime::node::NodeFacts;

/// Pure: the status for `network` given the nodes the agent should run on.
pub fn status(
    network: &ClusterNetwork,
    nodes: &[Arc<NodeFacts>],
    previous: &ClusterNetworkStatus,
) -> ClusterNetworkStatus {
    let hash = network.spec.config_hash();
    let selected: Vec<&Arc<NodeFacts>> = nodes
        .iter()
        .filter(|n| {
            network
                .spec
                .installer
                .node_selector
                .iter()
                .all(|(k, v)| n.labels().get(k) == Some(v))
        })
        .collect();
    let mut counts = NodeCounts {
        desired: selected.len() as u32,
        policy_programmed: (network.spec.network_policy == NetworkPolicyMode::Enabled).then_some(0),
        ..NodeCounts::default()
    };
    let mut problems = Vec::new();
    let mut omitted = 0usize;
    for node in &selected {
        let Some(report) = nodes::report(node) else {
            continue;
        };
        if let Some(install) = &report.install {
            counts.installed += 1;
            // Agents report it themselves (with evidence and fix); derived here for agents
            // that do not.
            let reported = report
                .problems
                .iter()
                .any(|p| p.kind == ProblemKind::ConflistShadowed);
            if install.shadowed() && !reported {
                problems.push((
                    ProblemKind::ConflistShadowed.severity(),
                    NodeProblem {
                        node: node.name_any(),
                        reason: ProblemKind::ConflistShadowed.to_string(),
                        message: format!(
                            "the runtime loads {} instead of {} (shadowed by {:?})",
                            install.chosen.clone().unwrap_or_default(),
                            install.conflist.clone().unwrap_or_default(),
                            install.shadowing
                        ),
                    },
                ));
            }
        }
        if report.ready {
            counts.ready += 1;
        }
        if report.spec_hash.as_deref() == Some(hash.as_str()) {
            counts.up_to_date += 1;
        }
        if let Some(n) = counts.policy_programmed.as_mut()
            && report.policy.as_ref().is_some_and(|p| p.programmed)
        {
            *n += 1;
        }
        omitted += report.problem_count() - report.problems.len();
        for p in &report.problems {
            problems.push((
                p.kind.severity(),
                NodeProblem {
                    node: node.name_any(),
                    reason: p.kind.to_string(),
                    message: p.message.clone(),
                },
            ));
        }
    }
    // The most severe first; store order is arbitrary, so the rest is sorted too and an
    // unchanged cluster never rewrites status.
    problems.sort_by(|(sa, a), (sb, b)| {
        (sa, &a.node, &a.reason, &a.message).cmp(&(sb, &b.node, &b.reason, &b.message))
    });
    // Judged on every problem, before the list is cut.
    let shadowed_on: Vec<String> = problems
        .iter()
        .filter(|(_, p)| p.reason == ProblemKind::ConflistShadowed.as_str())
        .map(|(_, p)| p.node.clone())
        .collect();
    let listed = problems.len().min(STATUS_PROBLEMS);
    omitted += problems.len() - listed;
    let problems: Vec<NodeProblem> = problems.into_iter().take(listed).map(|(_, p)| p).collect();
    counts.summary = format!("{}/{}", counts.ready, counts.desired);
    let generation = network.metadata.generation;
    let mut conds = previous.conditions.clone();
    let converged = counts.ready == counts.desired && counts.up_to_date == counts.desired;
    let shadowed = !shadowed_on.is_empty();
    // kstatus: Stalled and Reconciling are never both True (a stall is not progress).
    conditions::set(
        &mut conds,
        "Reconciling",
        !converged && !shadowed,
        if shadowed {
            "Stalled"
        } else if converged {
            "Converged"
        } else {
            "RollingOut"
        },
        format!(
            "{} of {} nodes ready, {} running configuration {hash}",
            counts.ready, counts.desired, counts.up_to_date
        ),
        generation,
    );
    conditions::set(
        &mut conds,
        "Stalled",
        shadowed,
        if shadowed {
            "ForeignConflistWins"
        } else {
            "Progressing"
        },
        if shadowed {
            format!(
                "another CNI configuration wins on: {}",
                some_of(shadowed_on.iter().map(String::as_str))
            )
        } else {
            "no node reports a blocking problem".into()
        },
        generation,
    );
    let ready = converged && !shadowed && counts.desired > 0;
    conditions::set(
        &mut conds,
        "Ready",
        ready,
        if ready {
            "AllNodesReady"
        } else if counts.desired == 0 {
            "NoNodes"
        } else {
            "NodesNotReady"
        },
        format!("{} of {} nodes serve pods", counts.ready, counts.desired),
        generation,
    );
    ClusterNetworkStatus {
        observed_generation: generation,
        conditions: conds,
        config_hash: Some(hash),
        nodes: Some(counts),
        problems,
        omitted_problems: (omitted > 0).then(|| u32::try_from(omitted).unwrap_or(u32::MAX)),
    }
}

/// The most problems `ClusterNetwork` status lists: one object for the whole cluster (etcd
/// refuses objects over 1.5 MiB), each problem bounded by the node report's bounds.
pub const STATUS_PROBLEMS: usize = 64;

/// The first names of a list, then how many more.
fn some_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    const SHOWN: usize = 10;
    let names: Vec<&str> = names.collect();
    let mut text = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

async fn write_status(
    network: &ClusterNetwork,
    ctx: &Context,
    status: &ClusterNetworkStatus,
) -> Result<(), Error> {
    apply_status::<ClusterNetwork, _>(ctx, &network.name_any(), network.status.as_ref(), status)
        .await
}

/// Reconciles the `ClusterNetwork`.
pub async fn reconcile(network: Arc<ClusterNetwork>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<ClusterNetwork> = Api::all(ctx.client.clone());
    let nodes = ctx.nodes.state();
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    if network.meta().deletion_timestamp.is_some() {
        // Agents clean their nodes when they see the deletion; wait for all of them. A report
        // that cannot be read does not say the node is clean: wait for that node too.
        let mut pending: Vec<String> = nodes
            .iter()
            .filter_map(|n| match nodes::reported(n) {
                nodes::Reported::Nothing => None,
                nodes::Reported::Report(r) if r.cleaned_up => None,
                nodes::Reported::Report(_) => Some(n.name_any()),
                nodes::Reported::Unreadable => {
                    Some(format!("{} (unreadable report)", n.name_any()))
                }
            })
            .collect();
        // Store order is arbitrary: sorted, so an unchanged wait never rewrites status.
        pending.sort();
        if !pending.is_empty() {
            let mut st = network.status.clone().unwrap_or_default();
            conditions::set(
                &mut st.conditions,
                "Ready",
                false,
                "CleaningUp",
                format!(
                    "waiting for {} node(s) to clean up: {}",
                    pending.len(),
                    pending.join(", ")
                ),
                network.metadata.generation,
            );
            write_status(&network, &ctx, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        if delete_if_present(&daemonsets, daemonset::NAME).await? {
            info!("node agent DaemonSet deleted");
        }
        remove_finalizer(&api, network.as_ref()).await?;
        info!("every node cleaned; ClusterNetwork released");
        return Ok(Action::await_change());
    }
    ensure_finalizer(&api, network.as_ref()).await?;
    let ds = daemonset::render(&network, &ctx.settings.daemonset).map_err(Error::Render)?;
    daemonsets
        .patch(
            daemonset::NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&ds),
        )
        .await?;
    let st = status(
        &network,
        &nodes,
        &network.status.clone().unwrap_or_default(),
    );
    write_status(&network, &ctx, &st).await?;
    Ok(Action::requeue(Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use kube::api::ObjectMeta;
    use sinew_crds::ClusterNetworkSpec;
    use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport, Problem};
    use sinew_runtime::node::NodeFacts;

    fn node(name: &str, problems: Vec<Problem>) -> Arc<NodeFacts> {
        let report = NodeReport {
            ready: true,
            problems,
            ..NodeReport::default()
        };
        Arc::new(NodeFacts {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    [(NODE_STATE_ANNOTATION.to_string(), report.to_annotation())].into(),
                ),
                ..ObjectMeta::default()
            },
            ..NodeFacts::default()
        })
    }

    fn network() -> ClusterNetwork {
        ClusterNetwork::new("default", ClusterNetworkSpec::default())
    }

    /// Every node of a 5,000-node cluster failing against its peers: status stays one small
    /// object, lists the worst problems first and counts the rest.
    #[test]
    fn status_does_not_grow_with_the_nodes_problems() {
        let long = "y".repeat(4096);
        let mut nodes: Vec<Arc<NodeFacts>> = (0..5_000)
            .map(|i| {
                node(
                    &format!("n{i:04}"),
                    (0..40)
                        .map(|p| {
                            Problem::new(ProblemKind::PeersIncomplete, format!("peer {p}: {long}"))
                        })
                        .collect(),
                )
            })
            .collect();
        nodes.push(node(
            "z-critical",
            vec![Problem::new(ProblemKind::ForwardingOff, "ip_forward=0")],
        ));
        let st = status(&network(), &nodes, &ClusterNetworkStatus::default());
        assert_eq!(st.problems.len(), STATUS_PROBLEMS);
        assert_eq!(st.problems[0].node, "z-critical", "the most severe first");
        assert_eq!(
            st.omitted_problems,
            Some(5_000 * 40 + 1 - STATUS_PROBLEMS as u32)
        );
        let size = serde_json::to_vec(&st).unwrap().len();
        assert!(size < 128 * 1024, "{size} bytes");
    }

    #[test]
    fn a_quiet_cluster_lists_no_problems() {
        let nodes = vec![node("n1", vec![]), node("n2", vec![])];
        let st = status(&network(), &nodes, &ClusterNetworkStatus::default());
        assert!(st.problems.is_empty());
        assert_eq!(st.omitted_problems, None);
    }

    /// With policy on, status counts the nodes whose table is in line; with it off, nothing.
    #[test]
    fn nodes_with_policy_programmed_are_counted() {
        let mut programmed = NodeReport {
            ready: true,
            policy: Some(sinew_crds::node::PolicyReport {
                programmed: true,
                classes: 2,
            }),
            ..NodeReport::default()
        };
        let with = |name: &str, r: &NodeReport| {
            Arc::new(NodeFacts {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    annotations: Some(
                        [(NODE_STATE_ANNOTATION.to_string(), r.to_annotation())].into(),
                    ),
                    ..ObjectMeta::default()
                },
                ..NodeFacts::default()
            })
        };
        let mut nodes = vec![with("n1", &programmed)];
        programmed.policy = Some(sinew_crds::node::PolicyReport::default());
        nodes.push(with("n2", &programmed));
        let st = status(&network(), &nodes, &ClusterNetworkStatus::default());
        assert_eq!(st.nodes.unwrap().policy_programmed, Some(1));
        let mut off = network();
        off.spec.network_policy = NetworkPolicyMode::Disabled;
        let st = status(&off, &nodes, &ClusterNetworkStatus::default());
        assert_eq!(st.nodes.unwrap().policy_programmed, None);
    }

    #[test]
    fn long_lists_of_names_are_cut() {
        let names: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
        assert_eq!(
            some_of(names.iter().map(String::as_str)),
            "n0, n1, n2, n3, n4, n5, n6, n7, n8, n9 and 2 more"
        );
        assert_eq!(some_of(["a", "b"].into_iter()), "a, b");
    }
}
