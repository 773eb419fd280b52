//! A pool's status (pure): usage and capacity, convergence of its mode across the nodes, the
//! mode-switch plan, and the kstatus conditions `Ready`, `Reconciling`, `Stalled` (a conflict,
//! or a `Routed` pool across subnets) and `Exhausted`.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use sinew_crds::node::NodeReport;
use sinew_crds::{Family, IPBlock, IPPool, IPPoolStatus, PoolMode};

use super::capacity::{api_integer, capacity, exhaustion};
use super::conflict::Conflict;
use super::mode_plan::mode_plan;
use crate::conditions;
use crate::nodes;
use sinew_runtime::node::NodeFacts;

/// The status of `pool` from its blocks and their usage, the nodes and the conflict check.
pub fn status(
    pool: &IPPool,
    blocks: &[Arc<IPBlock>],
    usage: &crate::context::Usages,
    nodes: &[Arc<NodeFacts>],
    conflict: Option<&Conflict>,
    fixed_mtu: Option<u32>,
) -> IPPoolStatus {
    let name = pool.name_any();
    let generation = pool.metadata.generation;
    let mine: Vec<&Arc<IPBlock>> = blocks.iter().filter(|b| b.spec.pool == name).collect();
    let allocated: u64 = mine
        .iter()
        .map(|b| {
            let status = usage.get(&b.name_any()).and_then(|u| u.status.as_ref());
            u64::from(status.map_or(0, |s| s.allocated))
        })
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
    // Each node's report read once (a reconcile of each of 50 pools reads 5,000 of them).
    let selected: Vec<(String, NodeReport)> = nodes
        .iter()
        .filter_map(|n| Some((n.name_any(), nodes::report(n)?)))
        .filter(|(_, r)| r.modes.contains_key(&name))
        .collect();
    let mode = pool.spec.mode;
    let converged = selected
        .iter()
        .filter(|(_, r)| r.modes.get(&name) == Some(&mode))
        .count();
    let mut conds = pool.status.clone().unwrap_or_default().conditions;
    let (exhausted, reason, message) = exhaustion(allocated, capacity);
    conditions::set(
        &mut conds,
        "Exhausted",
        exhausted,
        reason,
        message,
        generation,
    );
    let all_converged = converged == selected.len();
    // Routed forwarding needs every node of the pool on one L2 segment: name the groups.
    let mut subnets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if pool.spec.mode == PoolMode::Routed {
        for (n, r) in &selected {
            if let Some(u) = &r.underlay {
                subnets.entry(u.clone()).or_default().push(n.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::fixtures::{block, pool, reporting, usage, with_addresses};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn condition<'a>(st: &'a IPPoolStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
        let c: &Condition = st
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {st:#?}"));
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn a_converged_pool_is_ready_and_counts_only_its_own_blocks() {
        let p = pool("p", "10.0.0.0/24", &[]);
        let blocks = [
            block("p", "10.0.0.0/26", "a"),
            block("p", "10.0.0.64/26", "b"),
            block("q", "10.1.0.0/26", "a"),
        ];
        let used = usage(&[(&blocks[0], 3), (&blocks[1], 2), (&blocks[2], 7)]);
        // c's agent has not reported the pool: it is not counted.
        let nodes = [
            reporting("a", "10.99.0.0/24", "Auto"),
            reporting("b", "10.99.1.0/24", "Auto"),
            with_addresses("c", &[]),
        ];
        let st = status(&p, &blocks, &used, &nodes, None, None);
        assert_eq!(
            condition(&st, "Ready"),
            ("True", "Ready", "2 blocks, 5/254 addresses in use")
        );
        assert_eq!(condition(&st, "Reconciling").0, "False");
        assert_eq!(condition(&st, "Reconciling").1, "Converged");
        assert_eq!(condition(&st, "Stalled").0, "False");
        assert_eq!(condition(&st, "Exhausted").0, "False");
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(
            (st.capacity, st.allocated, st.reserved, st.blocks),
            (Some(254), Some(5), Some(0), Some(2))
        );
        assert_eq!(st.usage.as_deref(), Some("5/254"));
        assert_eq!(st.mode_convergence.as_deref(), Some("2/2"));
        assert_eq!(st.block_size, Some(26));
        assert_eq!(st.mode_plan, None);
    }

    #[test]
    fn a_mode_still_rolling_out_is_progress_not_a_stall() {
        let mut p = pool("p", "10.0.0.0/24", &[]);
        p.spec.mode = PoolMode::Routed;
        let nodes = [
            reporting("a", "10.99.0.0/24", "Routed"),
            reporting("b", "10.99.0.0/24", "VXLAN"),
        ];
        let st = status(&p, &[], &BTreeMap::new(), &nodes, None, None);
        assert_eq!(
            condition(&st, "Reconciling"),
            (
                "True",
                "ModeRollingOut",
                "1 of 2 nodes programmed for mode Routed"
            )
        );
        assert_eq!(
            condition(&st, "Ready"),
            ("False", "ModeRollingOut", "1/2 nodes on mode Routed")
        );
        assert_eq!(condition(&st, "Stalled").0, "False");
        assert_eq!(st.mode_convergence.as_deref(), Some("1/2"));
        assert_eq!(st.mode_plan.map(|m| m.pending), Some(vec!["b".to_string()]));
    }

    #[test]
    fn a_routed_pool_across_subnets_is_stalled_naming_the_groups() {
        let mut p = pool("p", "10.0.0.0/24", &[]);
        p.spec.mode = PoolMode::Routed;
        let nodes = [
            reporting("b", "10.99.1.0/24", "Routed"),
            reporting("c", "10.99.0.0/24", "Routed"),
            reporting("a", "10.99.0.0/24", "Routed"),
        ];
        let st = status(&p, &[], &BTreeMap::new(), &nodes, None, None);
        let (ready, reason, message) = condition(&st, "Ready");
        assert_eq!((ready, reason), ("False", "RoutedAcrossSubnets"));
        assert!(
            message.contains("on 10.99.0.0/24 (a, c) and 10.99.1.0/24 (b)"),
            "{message}"
        );
        assert_eq!(condition(&st, "Stalled").0, "True");
        assert_eq!(condition(&st, "Stalled").1, "RoutedAcrossSubnets");
        // kstatus: a stall is not progress.
        assert_eq!(condition(&st, "Reconciling").0, "False");
        assert_eq!(condition(&st, "Reconciling").1, "Stalled");
        // Auto routes within a subnet and tunnels across: no stall.
        p.spec.mode = PoolMode::Auto;
        let auto = [
            reporting("a", "10.99.0.0/24", "Auto"),
            reporting("b", "10.99.1.0/24", "Auto"),
        ];
        let st = status(&p, &[], &BTreeMap::new(), &auto, None, None);
        assert_eq!(condition(&st, "Stalled").0, "False");
        assert_eq!(condition(&st, "Ready").0, "True");
    }

    #[test]
    fn a_conflict_stalls_the_pool_with_its_reason() {
        let p = pool("p", "10.0.0.0/24", &[]);
        let found = Conflict {
            reason: "OverlapsServiceCIDR",
            message: "overlaps".into(),
        };
        let nodes = [reporting("a", "10.99.0.0/24", "VXLAN")];
        let st = status(&p, &[], &BTreeMap::new(), &nodes, Some(&found), None);
        assert_eq!(
            condition(&st, "Ready"),
            ("False", "OverlapsServiceCIDR", "overlaps")
        );
        assert_eq!(
            condition(&st, "Stalled"),
            ("True", "OverlapsServiceCIDR", "overlaps")
        );
        assert_eq!(condition(&st, "Reconciling").0, "False");
        assert!(p.status.is_none());
        let stalled = IPPool {
            status: Some(st),
            ..p
        };
        assert!(stalled.is_conflicted(), "agents skip it");
    }
}
