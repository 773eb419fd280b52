//! A deleted pool's drain. sinew's finalizer holds the pool until no address of it is in use
//! (blocks of departed nodes are released on the way) and every node holding one of its blocks
//! has confirmed it hands out no more; then its blocks are deleted and the finalizer removed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use sinew_crds::{IPBlock, IPBlockUsage, IPPool};

use super::departed::{Departed, release_if_departed};
use super::write_status;
use crate::conditions;
use crate::context::{Context, Error, delete_block, remove_finalizer};
use crate::nodes;
use sinew_runtime::node::NodeFacts;

/// Drains the deleted `pool`: waits (with a `Draining` condition) or deletes its blocks and
/// removes the finalizer.
pub(super) async fn drain(pool: &IPPool, ctx: &Context) -> Result<Action, Error> {
    let name = pool.name_any();
    // Read live, not from the cache: a stale cache must not free blocks still in use.
    let block_api: Api<IPBlock> = Api::all(ctx.client.clone());
    let mut live = block_api
        .list(&ListParams::default().fields(&format!("spec.pool={name}")))
        .await?
        .items;
    let usage_api: Api<IPBlockUsage> = Api::all(ctx.client.clone());
    let usages = usage_api
        .list(&ListParams::default().fields(&format!("spec.pool={name}")))
        .await?
        .items;
    let usage = sinew_crds::usage_by_block(&live, &usages);
    let allocated = |b: &IPBlock| u64::from(usage.get(&b.name_any()).map_or(0, |u| u.allocated));
    // No agent drains the addresses of a node that is gone: release its blocks once none
    // of their pods exists (as for a pool that stays), or they would hold the pool forever.
    let nodes: BTreeSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    let mut released = Vec::new();
    for b in live.iter().filter(|b| allocated(b) > 0) {
        let used = usage.get(&b.name_any());
        if release_if_departed(pool, ctx, b, used, &nodes).await? == Departed::Released {
            released.push(b.name_any());
        }
    }
    live.retain(|b| !released.contains(&b.name_any()));
    let in_use: u64 = live.iter().map(allocated).sum();
    let unconfirmed = unconfirmed_nodes(&name, &live, &ctx.nodes.state());
    if let Some(message) = waiting_for(in_use, &unconfirmed) {
        let mut st = pool.status.clone().unwrap_or_default();
        conditions::set(
            &mut st.conditions,
            "Ready",
            false,
            "Draining",
            message,
            pool.metadata.generation,
        );
        write_status(pool, ctx, &st).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    for b in &live {
        delete_block(&block_api, b).await?;
    }
    let api: Api<IPPool> = Api::all(ctx.client.clone());
    remove_finalizer(&api, pool).await?;
    ctx.metrics.pool(&name, None);
    ctx.usage.forget(&name);
    ctx.status_writes.forget(&name);
    Ok(Action::await_change())
}

/// What a deleted pool still waits for (the message of its `Draining` condition), given the
/// addresses of it `in_use` and the `unconfirmed` nodes; `None` once it can go.
pub fn waiting_for(in_use: u64, unconfirmed: &[String]) -> Option<String> {
    if in_use > 0 {
        return Some(format!(
            "{in_use} addresses of this pool are still in use; the pool is removed once its pods are gone"
        ));
    }
    // A block's status shows every address in use only once its node has stopped handing
    // them out and written it after that: wait for each such node to say so.
    (!unconfirmed.is_empty()).then(|| {
        format!(
            "waiting for node {} to confirm it hands out no more addresses of this pool (its agent reports it once the pool's blocks there are retired and their status written)",
            unconfirmed.join(", ")
        )
    })
}

/// The nodes (existing ones, by the cache) holding one of `blocks` of the deleted pool `pool`
/// whose agent has not yet reported the pool drained (`NodeReport::drained`): until it has, a
/// block's status may miss an address it handed out last. A node that is gone hands out
/// nothing (its blocks go as a departed node's).
pub fn unconfirmed_nodes(pool: &str, blocks: &[IPBlock], nodes: &[Arc<NodeFacts>]) -> Vec<String> {
    let holding: BTreeSet<&str> = blocks.iter().map(|b| b.spec.node.as_str()).collect();
    nodes
        .iter()
        .filter(|n| holding.contains(n.name_any().as_str()))
        .filter(|n| nodes::report(n).is_none_or(|r| !r.drained.iter().any(|p| p == pool)))
        .map(|n| n.name_any())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::fixtures::{block, with_addresses};
    use crate::scenarios::{kept, node};
    use sinew_crds::node::NodeReport;

    #[test]
    fn addresses_in_use_are_waited_for_first_then_the_nodes_word() {
        let nodes = ["a".to_string(), "b".to_string()];
        let in_use = waiting_for(3, &nodes).unwrap();
        assert!(
            in_use.starts_with("3 addresses of this pool are still in use"),
            "{in_use}"
        );
        let unconfirmed = waiting_for(0, &nodes).unwrap();
        assert!(
            unconfirmed.starts_with("waiting for node a, b to confirm"),
            "{unconfirmed}"
        );
        assert_eq!(waiting_for(0, &[]), None, "drained: the pool can go");
    }

    #[test]
    fn only_existing_nodes_holding_a_block_must_confirm_the_drain() {
        let drained = |name: &str, pools: &[&str]| {
            Arc::new(kept(&node(
                name,
                Some(NodeReport {
                    drained: pools.iter().map(|p| p.to_string()).collect(),
                    ..NodeReport::default()
                }),
            )))
        };
        let blocks: Vec<IPBlock> = [
            block("p", "10.0.0.0/26", "confirmed"),
            block("p", "10.0.0.64/26", "other-pool-drained"),
            block("p", "10.0.0.128/26", "silent"),
            block("p", "10.0.0.192/26", "gone"),
        ]
        .iter()
        .map(|b| b.as_ref().clone())
        .collect();
        let nodes = [
            drained("confirmed", &["p"]),
            drained("other-pool-drained", &["q"]),
            with_addresses("silent", &[]),
            drained("holding-nothing", &[]),
        ];
        assert_eq!(
            unconfirmed_nodes("p", &blocks, &nodes),
            ["other-pool-drained", "silent"]
        );
    }
}
