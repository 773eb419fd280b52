//! The plan of a pool's mode switch (pure): which nodes still run the old mode, how many
//! peer pairs change path, and whose pod MTU changes. The forwarding and MTU decisions are
//! `sinew_core::mode`'s, the ones the agents program, so the plan cannot disagree with them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube::ResourceExt;
use sinew_crds::node::NodeReport;
use sinew_crds::{Cidr, Family, Forwarding, IPPool, ModePlan, PoolMode};

/// The plan of a mode switch of `pool` across `reports` (every node whose agent reports the
/// pool, by name, each report read once by the caller): None when every node runs
/// `spec.mode`, or when no node ran another mode (nodes still joining are not a switch).
/// A plan already in `previous` for the same target keeps its `from` and its node list, so
/// the status shows the whole switch while `pending` shrinks.
pub fn mode_plan(
    pool: &IPPool,
    reports: &[(String, NodeReport)],
    previous: Option<&ModePlan>,
    fixed_mtu: Option<u32>,
) -> Option<ModePlan> {
    let name = pool.name_any();
    let to = pool.spec.mode;
    let block_family = pool.spec.parsed_cidr().ok()?.family();
    let mut reports: Vec<&(String, NodeReport)> = reports.iter().collect();
    let running = |r: &NodeReport| -> Option<PoolMode> { r.modes.get(&name).copied() };
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
    let mut affected: BTreeSet<String> = pending.iter().cloned().collect();
    if let Some(p) = previous {
        affected.extend(p.nodes.iter().cloned());
    }
    let underlays: Vec<Option<&str>> = reports.iter().map(|(_, r)| r.underlay.as_deref()).collect();
    let (mut to_routed, mut to_vxlan, mut unreachable) = (0, 0, 0);
    for (pair, count) in pair_kinds(&underlays) {
        let (same, underlay) = pair;
        let (before, after) = (
            from.forwarding(same, block_family, underlay),
            to.forwarding(same, block_family, underlay),
        );
        if before == after {
            continue;
        }
        match after {
            Forwarding::Routed => to_routed += count,
            Forwarding::Vxlan => to_vxlan += count,
            Forwarding::Unreachable => unreachable += count,
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
        peers_to_routed: saturated(to_routed),
        peers_to_vxlan: saturated(to_vxlan),
        peers_unreachable: saturated(unreachable),
        mtu_changes,
    })
}

fn saturated(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The pairs of nodes by what decides their path: (same underlay subnet, the underlay family
/// of the pair's first node), with how many pairs are of each kind. `underlays` are the
/// nodes' underlay subnets in name order; a pair counts when both nodes have one and the
/// first's parses. Counted in one sweep by subnet and family (a mode switch at 5,000 nodes
/// has 12.5 million pairs).
fn pair_kinds(underlays: &[Option<&str>]) -> BTreeMap<(bool, Family), u64> {
    let mut kinds: BTreeMap<(bool, Family), u64> = BTreeMap::new();
    // Earlier nodes with a parsed subnet: by subnet (with its family), and by family.
    let mut by_subnet: HashMap<&str, (Family, u64)> = HashMap::new();
    let mut by_family: BTreeMap<Family, u64> = BTreeMap::new();
    for subnet in underlays.iter().flatten() {
        let same = by_subnet.get(subnet).copied();
        if let Some((family, n)) = same {
            *kinds.entry((true, family)).or_default() += n;
        }
        for (family, n) in &by_family {
            let other = n - same.filter(|(f, _)| f == family).map_or(0, |(_, n)| n);
            if other > 0 {
                *kinds.entry((false, *family)).or_default() += other;
            }
        }
        if let Ok(cidr) = subnet.parse::<Cidr>() {
            let family = cidr.family();
            by_subnet.entry(subnet).or_insert((family, 0)).1 += 1;
            *by_family.entry(family).or_default() += 1;
        }
    }
    kinds
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::nodes;
    use crate::pool::fixtures::{pool, reporting};
    use sinew_runtime::node::NodeFacts;

    /// What the pool's status hands over: each node's report, read once.
    fn read(nodes: &[Arc<NodeFacts>]) -> Vec<(String, NodeReport)> {
        nodes
            .iter()
            .filter_map(|n| Some((n.name_any(), nodes::report(n)?)))
            .collect()
    }

    #[test]
    fn pairs_are_counted_as_one_by_one_would() {
        let subnets = ["10.0.0.0/24", "10.0.1.0/24", "fd00::/64", "garbled"];
        // Every sequence of up to 7 nodes over those subnets (or none), checked against the
        // definition: every pair (i < j), both with a subnet, the first's parsing.
        let mut seed = 7u64;
        for _ in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 60) as usize % 8;
            let underlays: Vec<Option<&str>> = (0..len)
                .map(|i| {
                    let pick = (seed >> (i * 3 + 8)) as usize % 5;
                    subnets.get(pick).copied()
                })
                .collect();
            let mut want: BTreeMap<(bool, Family), u64> = BTreeMap::new();
            for (i, a) in underlays.iter().enumerate() {
                for b in &underlays[i + 1..] {
                    let (Some(a), Some(b)) = (a, b) else { continue };
                    let Ok(family) = a.parse::<Cidr>().map(|c| c.family()) else {
                        continue;
                    };
                    *want.entry((a == b, family)).or_default() += 1;
                }
            }
            assert_eq!(pair_kinds(&underlays), want, "{underlays:?}");
        }
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
        let selected = read(&nodes);
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
        let selected2 = read(&nodes2);
        let later = mode_plan(&p, &selected2, Some(&plan), None).unwrap();
        assert_eq!(later.nodes, ["a", "b", "c"]);
        assert_eq!(later.pending, ["b", "c"]);
        assert_eq!(later.from, "VXLAN");
        // Everyone switched: no plan.
        let done: Vec<Arc<NodeFacts>> = ["a", "b", "c"]
            .iter()
            .map(|n| reporting(n, "10.99.0.0/24", "Routed"))
            .collect();
        let selected3 = read(&done);
        assert_eq!(mode_plan(&p, &selected3, Some(&later), None), None);
        // Auto from VXLAN: same-subnet pairs go direct, no MTU change.
        p.spec.mode = PoolMode::Auto;
        let auto = mode_plan(&p, &selected, None, None).unwrap();
        assert_eq!((auto.peers_to_routed, auto.peers_to_vxlan), (1, 0));
        assert!(auto.mtu_changes.is_empty());
    }

    #[test]
    fn nodes_still_joining_are_not_a_switch_and_a_plan_for_another_target_is_dropped() {
        let mut p = pool("p", "10.0.0.0/16", &[]);
        p.spec.mode = PoolMode::Routed;
        // Reports that do not list the pool yet: no node runs another mode.
        let joining = [
            reporting("a", "10.99.0.0/24", "Routed"),
            Arc::new(crate::scenarios::kept(&crate::scenarios::node(
                "b",
                Some(nodes::NodeReport {
                    ready: true,
                    ..Default::default()
                }),
            ))),
        ];
        let selected = read(&joining);
        assert_eq!(mode_plan(&p, &selected, None, None), None);
        // A plan towards VXLAN (the target has changed since): `from` is what nodes run now.
        let old = ModePlan {
            from: "Auto".into(),
            to: "VXLAN".into(),
            nodes: vec!["z".into()],
            ..ModePlan::default()
        };
        let vxlan = [reporting("a", "10.99.0.0/24", "VXLAN")];
        let selected = read(&vxlan);
        let plan = mode_plan(&p, &selected, Some(&old), None).unwrap();
        assert_eq!(plan.from, "VXLAN");
        assert_eq!(
            plan.nodes,
            ["a"],
            "the old plan's nodes are not carried over"
        );
    }
}
