//! The `ClusterNetwork` reconciler: rolls out the node agent DaemonSet and aggregates the
//! nodes' reports into status; on deletion, holds a finalizer until every agent has cleaned
//! its node, then removes the DaemonSet.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sinew_crds::cluster_network::{NodeCounts, NodeProblem};
use sinew_crds::node::ProblemKind;
use sinew_crds::{ClusterNetwork, ClusterNetworkStatus};
use tracing::info;

use crate::context::{
    Context, Error, FIELD_MANAGER, apply_status, delete_if_present, ensure_finalizer,
    remove_finalizer,
};
use crate::{conditions, daemonset, nodes};

/// Pure: the status for `network` given the nodes the agent should run on.
pub fn status(
    network: &ClusterNetwork,
    nodes: &[Arc<Node>],
    previous: &ClusterNetworkStatus,
) -> ClusterNetworkStatus {
    let hash = network.spec.config_hash();
    let selected: Vec<&Arc<Node>> = nodes
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
        ..NodeCounts::default()
    };
    let mut problems = Vec::new();
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
                problems.push(NodeProblem {
                    node: node.name_any(),
                    reason: ProblemKind::ConflistShadowed.to_string(),
                    message: format!(
                        "the runtime loads {} instead of {} (shadowed by {:?})",
                        install.chosen.clone().unwrap_or_default(),
                        install.conflist.clone().unwrap_or_default(),
                        install.shadowing
                    ),
                });
            }
        }
        if report.ready {
            counts.ready += 1;
        }
        if report.spec_hash.as_deref() == Some(hash.as_str()) {
            counts.up_to_date += 1;
        }
        for p in &report.problems {
            problems.push(NodeProblem {
                node: node.name_any(),
                reason: p.kind.to_string(),
                message: p.message.clone(),
            });
        }
    }
    // Store order is arbitrary: sort, so an unchanged cluster never rewrites status.
    problems
        .sort_by(|a, b| (&a.node, &a.reason, &a.message).cmp(&(&b.node, &b.reason, &b.message)));
    counts.summary = format!("{}/{}", counts.ready, counts.desired);
    let generation = network.metadata.generation;
    let mut conds = previous.conditions.clone();
    let converged = counts.ready == counts.desired && counts.up_to_date == counts.desired;
    let shadowed = problems
        .iter()
        .any(|p| p.reason == ProblemKind::ConflistShadowed.as_str());
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
                problems
                    .iter()
                    .filter(|p| p.reason == ProblemKind::ConflistShadowed.as_str())
                    .map(|p| p.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
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
    }
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
