//! The `IPPool` reconciler: what the schema cannot check (overlap with other pools), status
//! aggregated from the pool's `IPBlock`s and the nodes' reports, and a finalizer that keeps a
//! pool while addresses of it are still in use.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

use sinew_crds::node::ProblemKind;
use sinew_crds::precedence::creation_order;

use sinew_crds::{Cidr, Family, Forwarding, IPBlock, IPPool, IPPoolStatus, ModePlan, PoolMode};

use crate::context::{
    Context, Error, apply_status, delete_block, ensure_finalizer, remove_finalizer,
};
use crate::{conditions, nodes};

/// Share of the capacity in use from which `Exhausted` is raised, before allocations fail.
pub const EXHAUSTION_THRESHOLD: f64 = 0.9;

/// The first other pool whose CIDR overlaps this one and that was there first (by
/// [`creation_order`], the rule every node agent applies too): the newer pool is the one
/// refused.
pub fn overlapping<'a>(pool: &IPPool, others: &'a [Arc<IPPool>]) -> Option<&'a Arc<IPPool>> {
    let cidr: Cidr = pool.spec.cidr.parse().ok()?;
    let order = creation_order(&pool.metadata);
    others.iter().find(|o| {
        o.name_any() != pool.name_any()
            && o.metadata.deletion_timestamp.is_none()
            && o.spec.cidr.parse::<Cidr>().is_ok_and(|c| c.overlaps(&cidr))
            && creation_order(&o.metadata).precedes(&order)
    })
}

/// Why a pool must not hand out addresses (what only the controller can see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub reason: &'static str,
    pub message: String,
}

/// Reasons of a [`Conflict`]; agents skip pools stalled for one of them.
pub const CONFLICT_REASONS: [&str; 3] = [
    "OverlappingPools",
    "OverlapsServiceCIDR",
    "OverlapsNodeAddresses",
];

/// Pure: the first conflict of `pool` with another (older) pool, a Service CIDR, or a node's
/// address.
pub fn conflict(
    pool: &IPPool,
    pools: &[Arc<IPPool>],
    service_cidrs: &[(String, String)],
    node_addresses: &[(String, std::net::IpAddr)],
) -> Option<Conflict> {
    let cidr: Cidr = pool.spec.cidr.parse().ok()?;
    if let Some(other) = overlapping(pool, pools) {
        return Some(Conflict {
            reason: "OverlappingPools",
            message: format!(
                "cidr {} overlaps pool {} ({}); no new addresses are handed out from this pool until one of them changes",
                pool.spec.cidr,
                other.name_any(),
                other.spec.cidr
            ),
        });
    }
    for (name, service) in service_cidrs {
        if service.parse::<Cidr>().is_ok_and(|s| s.overlaps(&cidr)) {
            return Some(Conflict {
                reason: "OverlapsServiceCIDR",
                message: format!(
                    "cidr {} overlaps the Service CIDR {service} (ServiceCIDR {name}); no new addresses are handed out from this pool",
                    pool.spec.cidr
                ),
            });
        }
    }
    let mut inside: Vec<String> = node_addresses
        .iter()
        .filter(|(_, ip)| cidr.contains(*ip))
        .map(|(node, ip)| format!("{node} ({ip})"))
        .collect();
    inside.sort();
    if !inside.is_empty() {
        return Some(Conflict {
            reason: "OverlapsNodeAddresses",
            message: format!(
                "cidr {} contains the address of node {}; no new addresses are handed out from this pool",
                pool.spec.cidr,
                inside.join(", ")
            ),
        });
    }
    None
}

/// Addresses the pool can hand out: its size, minus reserved addresses, minus (IPv4) its
/// network and broadcast addresses, which the plugin never hands out. Exact (a /48 IPv6 pool
/// holds 2^80); see [`api_integer`] for the status fields.
pub fn capacity(pool: &IPPool) -> (u128, u128) {
    let Ok(cidr) = pool.spec.cidr.parse::<Cidr>() else {
        return (0, 0);
    };
    let size = cidr.size();
    let reserved: u128 = pool
        .spec
        .reserved
        .iter()
        .filter_map(|r| sinew_crds::cidr::parse_ip_or_cidr(r).ok())
        .map(|r| r.size())
        .sum();
    let edges = if cidr.family() == Family::V4 && size > 2 {
        2
    } else {
        0
    };
    (
        size.saturating_sub(reserved).saturating_sub(edges),
        reserved,
    )
}

/// A count as a status integer: the API server stores int64, so larger counts (IPv6 pools of
/// /64 and wider) saturate at `i64::MAX`; the exact figure is in `usage`. Anything above would
/// be refused and leave the pool without status, and agents use no pool without status.
pub fn api_integer(n: u128) -> u64 {
    u64::try_from(n.min(i64::MAX as u128)).unwrap_or(i64::MAX as u64)
}

/// Pools whose status a change of node `name` can change: those selecting it (convergence,
/// mode plans, subnets), those containing one of its `addresses` (conflicts) and those with
/// blocks on it (released when the node goes).
pub fn affected_by_node(
    name: &str,
    labels: &BTreeMap<String, String>,
    addresses: &[std::net::IpAddr],
    pools: &[Arc<IPPool>],
    blocks: &[Arc<IPBlock>],
) -> Vec<ObjectRef<IPPool>> {
    let holding: std::collections::BTreeSet<&str> = blocks
        .iter()
        .filter(|b| b.spec.node == name)
        .map(|b| b.spec.pool.as_str())
        .collect();
    pools
        .iter()
        .filter(|p| {
            holding.contains(p.name_any().as_str())
                || sinew_crds::selector::matches(p.spec.node_selector.as_ref(), labels)
                || p.spec
                    .parsed_cidr()
                    .is_ok_and(|c| addresses.iter().any(|a| c.contains(*a)))
        })
        .map(|p| ObjectRef::from(p.as_ref()))
        .collect()
}

/// The addresses of `node`.
pub fn node_addresses(node: &Node) -> Vec<std::net::IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Pools whose verdict a change of `changed` can change: those it overlaps now, and those
/// currently stalled on a conflict (it may have been the pool they overlapped).
pub fn affected_by_pool(changed: &IPPool, pools: &[Arc<IPPool>]) -> Vec<ObjectRef<IPPool>> {
    let cidr = changed.spec.parsed_cidr().ok();
    pools
        .iter()
        .filter(|p| p.name_any() != changed.name_any())
        .filter(|p| {
            p.is_conflicted()
                || cidr
                    .as_ref()
                    .is_some_and(|c| p.spec.parsed_cidr().is_ok_and(|o| o.overlaps(c)))
        })
        .map(|p| ObjectRef::from(p.as_ref()))
        .collect()
}

/// Pure: the plan of a mode switch of `pool` across `selected` nodes (every reporting node) (None when every node
/// runs `spec.mode`, or when no node ran another mode: nodes still joining are not a switch).
/// A plan already in `previous` for the same target keeps its `from` and its node list, so
/// the status shows the whole switch while `pending` shrinks.
pub fn mode_plan(
    pool: &IPPool,
    selected: &[&Arc<Node>],
    previous: Option<&ModePlan>,
    fixed_mtu: Option<u32>,
) -> Option<ModePlan> {
    let name = pool.name_any();
    let to = pool.spec.mode;
    let block_family = pool.spec.parsed_cidr().ok()?.family();
    let mut reports: Vec<(String, nodes::NodeReport)> = selected
        .iter()
        .filter_map(|n| Some((n.name_any(), nodes::report(n)?)))
        .collect();
    let running = |r: &nodes::NodeReport| -> Option<PoolMode> { r.modes.get(&name).copied() };
    reports.sort_by(|a, b| a.0.cmp(&b.0));
    let pending: Vec<String> = reports
        .iter()
        .filter(|(_, r)| running(r).is_some_and(|m| m != to))
        .map(|(n, _)| n.clone())
        .collect();
    if pending.is_empty() {
        return None;
    }
    let previous = previous.filter(|p| p.to == to.to_string());
    let from = match previous {
        Some(p) => serde_json::from_value(serde_json::Value::String(p.from.clone())).ok()?,
        None => {
            let mut counts: BTreeMap<PoolMode, usize> = BTreeMap::new();
            for (_, r) in &reports {
                if let Some(m) = running(r).filter(|m| *m != to) {
                    *counts.entry(m).or_default() += 1;
                }
            }
            counts.into_iter().max_by_key(|(_, c)| *c)?.0
        }
    };
    let mut affected: std::collections::BTreeSet<String> = pending.iter().cloned().collect();
    if let Some(p) = previous {
        affected.extend(p.nodes.iter().cloned());
    }
    let (mut to_routed, mut to_vxlan, mut unreachable) = (0, 0, 0);
    for (i, (_, a)) in reports.iter().enumerate() {
        for (_, b) in &reports[i + 1..] {
            let (Some(sa), Some(sb)) = (&a.underlay, &b.underlay) else {
                continue;
            };
            let same = sa == sb;
            let Ok(underlay) = sa.parse::<Cidr>().map(|c| c.family()) else {
                continue;
            };
            let (before, after) = (
                from.forwarding(same, block_family, underlay),
                to.forwarding(same, block_family, underlay),
            );
            if before == after {
                continue;
            }
            match after {
                Forwarding::Routed => to_routed += 1,
                Forwarding::Vxlan => to_vxlan += 1,
                Forwarding::Unreachable => unreachable += 1,
            }
        }
    }
    let mtu_changes = reports
        .iter()
        .filter(|(n, _)| affected.contains(n))
        .filter_map(|(n, r)| {
            let family = r.underlay.as_ref()?.parse::<Cidr>().ok()?.family();
            let mtu = r.underlay_mtu?;
            let (old, new) = (
                from.pod_mtu(mtu, family, block_family, fixed_mtu),
                to.pod_mtu(mtu, family, block_family, fixed_mtu),
            );
            (old != new).then(|| format!("{n}: {old} -> {new}"))
        })
        .collect();
    Some(ModePlan {
        from: from.to_string(),
        to: to.to_string(),
        nodes: affected.into_iter().collect(),
        pending,
        peers_to_routed: to_routed,
        peers_to_vxlan: to_vxlan,
        peers_unreachable: unreachable,
        mtu_changes,
    })
}

/// Pure: the status of `pool` from its blocks, the nodes and the conflict check.
pub fn status(
    pool: &IPPool,
    blocks: &[Arc<IPBlock>],
    nodes: &[Arc<Node>],
    conflict: Option<&Conflict>,
    fixed_mtu: Option<u32>,
) -> IPPoolStatus {
    let name = pool.name_any();
    let generation = pool.metadata.generation;
    let mine: Vec<&Arc<IPBlock>> = blocks.iter().filter(|b| b.spec.pool == name).collect();
    let allocated: u64 = mine
        .iter()
        .map(|b| u64::from(b.status.as_ref().map_or(0, |s| s.allocated)))
        .sum();
    let (capacity, reserved) = capacity(pool);
    let family = pool
        .spec
        .parsed_cidr()
        .map(|c| c.family())
        .unwrap_or(Family::V4);
    // Every node routes every pool's blocks in the pool's mode, whichever nodes the pool
    // selects for its pods: convergence and the shared-segment check count every node whose
    // agent programs the pool (all of sinew's nodes; its report lists the pool).
    let selected: Vec<&Arc<Node>> = nodes
        .iter()
        .filter(|n| nodes::report(n).is_some_and(|r| r.modes.contains_key(&name)))
        .collect();
    let mode = pool.spec.mode;
    let converged = selected
        .iter()
        .filter(|n| nodes::report(n).is_some_and(|r| r.modes.get(&name) == Some(&mode)))
        .count();
    let mut conds = pool.status.clone().unwrap_or_default().conditions;
    let usage = if capacity == 0 {
        0.0
    } else {
        allocated as f64 / capacity as f64
    };
    let allocated_wide = u128::from(allocated);
    conditions::set(
        &mut conds,
        "Exhausted",
        usage >= EXHAUSTION_THRESHOLD,
        if allocated_wide >= capacity && capacity > 0 {
            "Exhausted"
        } else if usage >= EXHAUSTION_THRESHOLD {
            "NearlyExhausted"
        } else {
            "AddressesAvailable"
        },
        format!(
            "{allocated} of {capacity} addresses in use ({:.0}%)",
            usage * 100.0
        ),
        generation,
    );
    let all_converged = converged == selected.len();
    // Routed forwarding needs every node of the pool on one L2 segment: name the groups.
    let mut subnets: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    if pool.spec.mode == sinew_crds::PoolMode::Routed {
        for n in &selected {
            if let Some(u) = nodes::report(n).and_then(|r| r.underlay) {
                subnets.entry(u).or_default().push(n.name_any());
            }
        }
    }
    subnets.values_mut().for_each(|names| names.sort());
    let split = subnets.len() > 1;
    let stalled = conflict.is_some() || split;
    // kstatus: Stalled and Reconciling are never both True (a stall is not progress).
    conditions::set(
        &mut conds,
        "Reconciling",
        !all_converged && !stalled,
        if stalled {
            "Stalled"
        } else if all_converged {
            "Converged"
        } else {
            "ModeRollingOut"
        },
        format!(
            "{converged} of {} nodes programmed for mode {mode}",
            selected.len()
        ),
        generation,
    );
    let (ready, reason, message) = match conflict {
        Some(c) => (false, c.reason, c.message.clone()),
        None if split => (
            false,
            "RoutedAcrossSubnets",
            format!(
                "mode Routed needs the pool's nodes on one L2 subnet, but they are on {}: traffic between those groups is not programmed; use Auto or VXLAN",
                subnets
                    .iter()
                    .map(|(s, n)| format!("{s} ({})", n.join(", ")))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ),
        None if !all_converged => (
            false,
            "ModeRollingOut",
            format!("{converged}/{} nodes on mode {mode}", selected.len()),
        ),
        None => (
            true,
            "Ready",
            format!(
                "{} blocks, {allocated}/{capacity} addresses in use",
                mine.len()
            ),
        ),
    };
    conditions::set(
        &mut conds,
        "Stalled",
        stalled,
        if stalled { reason } else { "Progressing" },
        message.clone(),
        generation,
    );
    conditions::set(&mut conds, "Ready", ready, reason, message, generation);
    IPPoolStatus {
        observed_generation: generation,
        conditions: conds,
        capacity: Some(api_integer(capacity)),
        allocated: Some(allocated),
        reserved: Some(api_integer(reserved)),
        blocks: Some(mine.len() as u64),
        block_size: Some(pool.spec.effective_block_size(family)),
        usage: Some(format!("{allocated}/{capacity}")),
        mode_convergence: Some(format!("{converged}/{}", selected.len())),
        mode_plan: mode_plan(
            pool,
            &selected,
            pool.status.as_ref().and_then(|s| s.mode_plan.as_ref()),
            fixed_mtu,
        ),
    }
}

/// Reconciles one `IPPool`.
pub async fn reconcile(pool: Arc<IPPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<IPPool> = Api::all(ctx.client.clone());
    let name = pool.name_any();
    let blocks = ctx.blocks.state();
    if pool.meta().deletion_timestamp.is_some() {
        // Read live, not from the cache: a stale cache must not free blocks still in use.
        let block_api: Api<IPBlock> = Api::all(ctx.client.clone());
        let mut live = block_api
            .list(&ListParams::default().fields(&format!("spec.pool={name}")))
            .await?
            .items;
        // No agent drains the addresses of a node that is gone: release its blocks once none
        // of their pods exists (as for a pool that stays), or they would hold the pool forever.
        let nodes: std::collections::BTreeSet<String> =
            ctx.nodes.state().iter().map(|n| n.name_any()).collect();
        let mut released = Vec::new();
        for b in live.iter().filter(|b| allocated(b) > 0) {
            if release_if_departed(&pool, &ctx, b, &nodes).await? == Departed::Released {
                released.push(b.name_any());
            }
        }
        live.retain(|b| !released.contains(&b.name_any()));
        let in_use: u64 = live.iter().map(allocated).sum();
        // A block's status shows every address in use only once its node has stopped handing
        // them out and written it after that: wait for each such node to say so.
        let unconfirmed = unconfirmed_nodes(&name, &live, &ctx.nodes.state());
        if in_use == 0 && !unconfirmed.is_empty() {
            let mut st = pool.status.clone().unwrap_or_default();
            conditions::set(
                &mut st.conditions,
                "Ready",
                false,
                "Draining",
                format!(
                    "waiting for node {} to confirm it hands out no more addresses of this pool (its agent reports it once the pool's blocks there are retired and their status written)",
                    unconfirmed.join(", ")
                ),
                pool.metadata.generation,
            );
            write_status(&pool, &ctx, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        if in_use > 0 {
            let mut st = pool.status.clone().unwrap_or_default();
            conditions::set(
                &mut st.conditions,
                "Ready",
                false,
                "Draining",
                format!(
                    "{in_use} addresses of this pool are still in use; the pool is removed once its pods are gone"
                ),
                pool.metadata.generation,
            );
            write_status(&pool, &ctx, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        for b in &live {
            delete_block(&block_api, b).await?;
        }
        remove_finalizer(&api, pool.as_ref()).await?;
        ctx.metrics.pool(&name, None);
        ctx.usage.forget(&name);
        return Ok(Action::await_change());
    }
    ensure_finalizer(&api, pool.as_ref()).await?;
    let waiting = release_blocks_of_departed_nodes(&pool, &ctx).await?;
    let pools = ctx.pools.state();
    let nodes = ctx.nodes.state();
    let services: Vec<(String, String)> = ctx
        .service_cidrs
        .state()
        .iter()
        .flat_map(|s| {
            let name = s.name_any();
            s.spec
                .as_ref()
                .and_then(|spec| spec.cidrs.clone())
                .unwrap_or_default()
                .into_iter()
                .map(move |c| (name.clone(), c))
        })
        .collect();
    let addresses: Vec<(String, std::net::IpAddr)> = nodes
        .iter()
        .flat_map(|n| {
            let name = n.name_any();
            n.status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |a| Some((name.clone(), a.address.parse().ok()?)))
        })
        .collect();
    let found = conflict(&pool, &pools, &services, &addresses);
    let fixed_mtu = ctx
        .networks
        .get(&kube::runtime::reflector::ObjectRef::new(
            sinew_crds::CLUSTER_NETWORK_NAME,
        ))
        .and_then(|n| n.spec.fixed_mtu());
    let mut st = status(&pool, &blocks, &nodes, found.as_ref(), fixed_mtu);
    let rate = ctx
        .usage
        .record(&name, std::time::Instant::now(), st.allocated.unwrap_or(0));
    let was_nearly_exhausted = pool.status.as_ref().is_some_and(nearly_exhausted);
    if nearly_exhausted(&st) {
        let free = u128::from(st.capacity.unwrap_or(0))
            .saturating_sub(u128::from(st.allocated.unwrap_or(0)));
        let trend = crate::trend::forecast(free, rate);
        if let Some(c) = st.conditions.iter_mut().find(|c| c.type_ == "Exhausted") {
            c.message = format!("{}; {trend}", c.message);
        }
        if !was_nearly_exhausted {
            let event = Event {
                type_: EventType::Warning,
                reason: ProblemKind::PoolNearlyExhausted.to_string(),
                note: Some(format!("{name}: {free} addresses left; {trend}")),
                action: "Allocate".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
                tracing::warn!(pool = %name, error = %e, "recording an Event failed");
            }
        }
    }
    write_status(&pool, &ctx, &st).await?;
    ctx.metrics.pool(
        &name,
        Some(crate::http::PoolUsage {
            capacity: st.capacity.unwrap_or(0),
            allocated: st.allocated.unwrap_or(0),
            blocks: st.blocks.unwrap_or(0),
        }),
    );
    Ok(Action::requeue(Duration::from_secs(if waiting {
        3
    } else {
        30
    })))
}

/// The pool is at or above [`EXHAUSTION_THRESHOLD`] (its `Exhausted` condition is True).
pub fn nearly_exhausted(status: &IPPoolStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Exhausted" && c.status == "True")
}

/// Pure: whether a block of a node that no longer exists can be released. Only when no pod of
/// its allocations exists any more; an allocation without a pod UID could belong to anything,
/// so it keeps the block. A block whose node never reported on it is released once it is
/// older than a minute (its agent had every chance to report).
pub fn releasable(block: &IPBlock, node_exists: bool, pod_exists: impl Fn(&str) -> bool) -> bool {
    if node_exists {
        return false;
    }
    let Some(status) = block.status.as_ref() else {
        let age = block
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0));
        return age.is_none_or(|a| a > k8s_openapi::jiff::SignedDuration::from_secs(60));
    };
    // A count the details do not account for means owners we cannot check: keep the block.
    status.allocations.len() >= status.allocated as usize
        && status
            .allocations
            .iter()
            .all(|a| a.pod_uid.as_deref().is_some_and(|uid| !pod_exists(uid)))
}

/// Live re-check of what the caches said about a departed node's block: the Node is gone and
/// none of the block's pods exists (by UID, a mirror pod counting for its static pod). Any
/// doubt (an API error) keeps the block.
async fn departed_live(ctx: &Context, block: &IPBlock) -> bool {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    match nodes.get_opt(&block.spec.node).await {
        Ok(None) => {}
        Ok(Some(_)) => return false,
        Err(e) => {
            tracing::warn!(error = %e, node = %block.spec.node, "live node check failed; keeping the block");
            return false;
        }
    }
    for a in block.status.iter().flat_map(|s| s.allocations.iter()) {
        let (Some(ns), Some(name), Some(uid)) = (&a.pod_namespace, &a.pod_name, &a.pod_uid) else {
            continue;
        };
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ctx.client.clone(), ns);
        if crate::gc::pod_exists_live(&pods, name, uid).await {
            return false;
        }
    }
    true
}

/// Pure: the nodes (existing ones, by the cache) holding one of `blocks` of the deleted pool
/// `pool` whose agent has not yet reported the pool drained (`NodeReport::drained`): until it
/// has, a block's status may miss an address it handed out last. A node that is gone hands
/// out nothing (its blocks go as a departed node's).
pub fn unconfirmed_nodes(pool: &str, blocks: &[IPBlock], nodes: &[Arc<Node>]) -> Vec<String> {
    let holding: std::collections::BTreeSet<&str> =
        blocks.iter().map(|b| b.spec.node.as_str()).collect();
    nodes
        .iter()
        .filter(|n| holding.contains(n.name_any().as_str()))
        .filter(|n| nodes::report(n).is_none_or(|r| !r.drained.iter().any(|p| p == pool)))
        .map(|n| n.name_any())
        .collect()
}

/// Addresses of `block` in use, as its status says.
fn allocated(block: &IPBlock) -> u64 {
    u64::from(block.status.as_ref().map_or(0, |s| s.allocated))
}

/// Deletes this pool's blocks whose node is gone and none of whose pods exists; returns
/// whether some are still waiting for their pods.
async fn release_blocks_of_departed_nodes(pool: &IPPool, ctx: &Context) -> Result<bool, Error> {
    let name = pool.name_any();
    let nodes: std::collections::BTreeSet<String> =
        ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    let mut waiting = false;
    for block in ctx.blocks.state().iter().filter(|b| b.spec.pool == name) {
        waiting |= release_if_departed(pool, ctx, block, &nodes).await? == Departed::Waiting;
    }
    Ok(waiting)
}

/// What became of a block in [`release_if_departed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departed {
    /// Its node exists.
    NodeExists,
    /// Its node is gone but a pod of it may still exist (or the live check said otherwise).
    Waiting,
    /// Its node and pods are gone: the block is released.
    Released,
}

/// Releases `block` of `pool` if its node (not in `nodes`, the cached node names) is gone and
/// none of its pods exists, by the caches and then live, with an Event.
async fn release_if_departed(
    pool: &IPPool,
    ctx: &Context,
    block: &IPBlock,
    nodes: &std::collections::BTreeSet<String>,
) -> Result<Departed, Error> {
    let node_exists = nodes.contains(&block.spec.node);
    if node_exists {
        return Ok(Departed::NodeExists);
    }
    if !releasable(block, node_exists, |uid| ctx.pods.contains(uid)) {
        return Ok(Departed::Waiting);
    }
    // The caches said so; the API server must say so too, right before the release.
    if !departed_live(ctx, block).await {
        return Ok(Departed::Waiting);
    }
    let api: Api<IPBlock> = Api::all(ctx.client.clone());
    if !delete_block(&api, block).await? {
        return Ok(Departed::Released);
    }
    ctx.metrics.block_releases.inc();
    let name = pool.name_any();
    tracing::info!(pool = %name, block = %block.spec.cidr, node = %block.spec.node, "released the block of a departed node");
    let event = Event {
        type_: EventType::Normal,
        reason: "BlockReleased".into(),
        note: Some(format!(
            "block {} of node {} released: the node is gone and no pod of the block exists",
            block.spec.cidr, block.spec.node
        )),
        action: "Release".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
        tracing::warn!(error = %e, "recording an Event failed");
    }
    Ok(Departed::Released)
}

async fn write_status(pool: &IPPool, ctx: &Context, status: &IPPoolStatus) -> Result<(), Error> {
    apply_status::<IPPool, _>(ctx, &pool.name_any(), pool.status.as_ref(), status).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_crds::IPPoolSpec;

    fn pool(name: &str, cidr: &str, reserved: &[&str]) -> IPPool {
        let mut p = IPPool::new(
            name,
            IPPoolSpec {
                reserved: reserved.iter().map(|r| r.to_string()).collect(),
                ..crate::scenarios::pool_spec(cidr)
            },
        );
        p.metadata.generation = Some(1);
        p
    }

    /// A node whose agent reports running `mode` for pool `p` on `subnet` (MTU 1500).
    fn reporting(name: &str, subnet: &str, mode: &str) -> Arc<Node> {
        let report = serde_json::json!({"ready": true, "underlay": subnet, "underlayMtu": 1500,
                                        "modes": {"p": mode}});
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {"sinew.dev/node-state": report.to_string()}},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_mode_switch_plan_names_nodes_pairs_and_mtus_and_shrinks_as_nodes_switch() {
        let mut p = pool("p", "10.0.0.0/16", &[]);
        p.spec.mode = PoolMode::Routed;
        // a and b share a subnet, c is behind a router; all still run VXLAN.
        let nodes = [
            reporting("a", "10.99.0.0/24", "VXLAN"),
            reporting("b", "10.99.0.0/24", "VXLAN"),
            reporting("c", "10.99.1.0/24", "VXLAN"),
        ];
        let selected: Vec<&Arc<Node>> = nodes.iter().collect();
        let plan = mode_plan(&p, &selected, None, None).unwrap();
        assert_eq!((plan.from.as_str(), plan.to.as_str()), ("VXLAN", "Routed"));
        assert_eq!(plan.nodes, ["a", "b", "c"]);
        assert_eq!(plan.pending, ["a", "b", "c"]);
        assert_eq!(plan.peers_to_routed, 1, "a-b");
        assert_eq!(plan.peers_unreachable, 2, "a-c and b-c");
        assert_eq!(
            plan.mtu_changes,
            ["a: 1450 -> 1500", "b: 1450 -> 1500", "c: 1450 -> 1500"]
        );
        // A fixed MTU does not change.
        assert!(
            mode_plan(&p, &selected, None, Some(1400))
                .unwrap()
                .mtu_changes
                .is_empty()
        );
        // a has switched: the plan still lists it, pending shrinks.
        let nodes2 = [
            reporting("a", "10.99.0.0/24", "Routed"),
            nodes[1].clone(),
            nodes[2].clone(),
        ];
        let selected2: Vec<&Arc<Node>> = nodes2.iter().collect();
        let later = mode_plan(&p, &selected2, Some(&plan), None).unwrap();
        assert_eq!(later.nodes, ["a", "b", "c"]);
        assert_eq!(later.pending, ["b", "c"]);
        assert_eq!(later.from, "VXLAN");
        // Everyone switched: no plan.
        let done: Vec<Arc<Node>> = ["a", "b", "c"]
            .iter()
            .map(|n| reporting(n, "10.99.0.0/24", "Routed"))
            .collect();
        let selected3: Vec<&Arc<Node>> = done.iter().collect();
        assert_eq!(mode_plan(&p, &selected3, Some(&later), None), None);
        // Auto from VXLAN: same-subnet pairs go direct, no MTU change.
        p.spec.mode = PoolMode::Auto;
        let auto = mode_plan(&p, &selected, None, None).unwrap();
        assert_eq!((auto.peers_to_routed, auto.peers_to_vxlan), (1, 0));
        assert!(auto.mtu_changes.is_empty());
    }

    fn block(allocations: serde_json::Value) -> IPBlock {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock", "metadata": {"name": "b"},
            "spec": {"pool": "p", "cidr": "10.0.0.0/26", "node": "n"},
            "status": {"allocated": 1, "allocations": allocations},
        }))
        .unwrap()
    }

    #[test]
    fn a_departed_nodes_block_goes_only_when_its_pods_are_gone() {
        let live = |uid: &str| uid == "alive";
        let a = |uid: Option<&str>| serde_json::json!([{"ip": "10.0.0.1", "containerId": "c", "interface": "eth0", "generation": 1, "podUid": uid}]);
        assert!(
            !releasable(&block(a(Some("dead"))), true, live),
            "the node still exists"
        );
        assert!(releasable(&block(a(Some("dead"))), false, live));
        assert!(!releasable(&block(a(Some("alive"))), false, live));
        assert!(
            !releasable(&block(a(None)), false, live),
            "an unknown owner keeps the block"
        );
        assert!(
            !releasable(&block(serde_json::json!([])), false, live),
            "allocated 1 without details"
        );
    }

    #[test]
    fn capacity_excludes_reserved_and_ipv4_edges() {
        assert_eq!(capacity(&pool("a", "10.0.0.0/24", &[])), (254, 0));
        assert_eq!(
            capacity(&pool("a", "10.0.0.0/24", &["10.0.0.0/28", "10.0.0.100"])),
            (237, 17)
        );
        assert_eq!(capacity(&pool("a", "fd00::/120", &[])), (256, 0));
        assert_eq!(capacity(&pool("a", "fd00:48::/48", &[])), (1 << 80, 0));
        assert_eq!(
            api_integer(1 << 80),
            i64::MAX as u64,
            "an int64 the API server stores"
        );
        assert_eq!(api_integer(254), 254);
    }

    #[test]
    fn the_newer_of_two_overlapping_pools_is_refused() {
        let a = Arc::new(pool("a", "10.0.0.0/16", &[]));
        let b = Arc::new(pool("b", "10.0.5.0/24", &[]));
        let c = Arc::new(pool("c", "10.1.0.0/16", &[]));
        let all = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(
            overlapping(&b, &all).map(|p| p.name_any()),
            Some("a".into())
        );
        assert!(
            overlapping(&a, &all).is_none(),
            "the first pool keeps working"
        );
        assert!(overlapping(&c, &all).is_none());
        let c = conflict(&b, &all, &[], &[]).expect("a conflict");
        let st = status(&b, &[], &[], Some(&c), None);
        assert!(!conditions::is_true(&st.conditions, "Ready"));
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "OverlappingPools");
        assert!(ready.message.contains("pool a (10.0.0.0/16)"));
    }

    #[test]
    fn service_cidrs_and_node_addresses_are_conflicts() {
        let p = Arc::new(pool("p", "10.96.0.0/12", &[]));
        let all = vec![p.clone()];
        let svc = [("kubernetes".to_string(), "10.96.0.0/16".to_string())];
        let c = conflict(&p, &all, &svc, &[]).unwrap();
        assert_eq!(c.reason, "OverlapsServiceCIDR");
        assert!(
            c.message.contains("10.96.0.0/16 (ServiceCIDR kubernetes)"),
            "{}",
            c.message
        );
        let nodes = [("n1".to_string(), "10.100.0.5".parse().unwrap())];
        let q = Arc::new(pool("q", "10.100.0.0/24", &[]));
        let c = conflict(&q, std::slice::from_ref(&q), &svc, &nodes).unwrap();
        assert_eq!(c.reason, "OverlapsNodeAddresses");
        assert!(c.message.contains("n1 (10.100.0.5)"));
        assert!(conflict(&pool("r", "10.200.0.0/24", &[]), &[], &svc, &nodes).is_none());
    }
}
