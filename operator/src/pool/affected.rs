//! Which pools a change of another object re-reconciles (the controller's watch mappers,
//! pure): a Node's change can change the status of the pools it runs, holds blocks of or sits
//! inside; a pool's change can change the verdict on the pools it overlaps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use sinew_crds::{IPBlock, IPPool};

/// Pools whose status a change of node `name` can change: those selecting it (convergence,
/// mode plans, subnets), those containing one of its `addresses` (conflicts) and those with
/// blocks on it (released when the node goes).
pub fn by_node(
    name: &str,
    labels: &BTreeMap<String, String>,
    addresses: &[IpAddr],
    pools: &[Arc<IPPool>],
    blocks: &[Arc<IPBlock>],
) -> Vec<ObjectRef<IPPool>> {
    let holding: BTreeSet<&str> = blocks
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

/// Pools whose verdict a change of `changed` can change: those it overlaps now, and those
/// currently stalled on a conflict (it may have been the pool they overlapped).
pub fn by_pool(changed: &IPPool, pools: &[Arc<IPPool>]) -> Vec<ObjectRef<IPPool>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::conflict::Conflict;
    use crate::pool::fixtures::{block, pool};
    use crate::pool::status::status;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn names(refs: Vec<ObjectRef<IPPool>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    fn selecting(name: &str, cidr: &str, zone: &str) -> Arc<IPPool> {
        let mut p = pool(name, cidr, &[]);
        p.spec.node_selector = Some(LabelSelector {
            match_labels: Some([("zone".to_string(), zone.to_string())].into()),
            ..LabelSelector::default()
        });
        Arc::new(p)
    }

    #[test]
    fn a_node_affects_the_pools_selecting_it_holding_blocks_on_it_or_containing_it() {
        let pools = [
            selecting("selects", "10.1.0.0/16", "a"),
            selecting("holds", "10.2.0.0/16", "b"),
            selecting("contains", "10.3.0.0/16", "b"),
            selecting("unrelated", "10.4.0.0/16", "b"),
            Arc::new(pool("everywhere", "10.5.0.0/16", &[])),
        ];
        let blocks = [
            block("holds", "10.2.0.0/26", "n"),
            block("unrelated", "10.4.0.0/26", "other"),
        ];
        let labels = [("zone".to_string(), "a".to_string())].into();
        let addresses = ["10.3.0.7".parse().unwrap()];
        assert_eq!(
            names(by_node("n", &labels, &addresses, &pools, &blocks)),
            ["selects", "holds", "contains", "everywhere"]
        );
    }

    #[test]
    fn a_pool_affects_the_pools_it_overlaps_and_those_stalled_on_a_conflict() {
        let changed = pool("changed", "10.0.0.0/16", &[]);
        let mut stalled = pool("stalled", "10.9.0.0/16", &[]);
        stalled.status = Some(status(
            &stalled,
            &[],
            &Default::default(),
            &[],
            Some(&Conflict {
                reason: "OverlappingPools",
                message: "overlaps".into(),
            }),
            None,
        ));
        let pools = [
            Arc::new(changed.clone()),
            Arc::new(pool("inside", "10.0.5.0/24", &[])),
            Arc::new(stalled),
            Arc::new(pool("apart", "10.1.0.0/16", &[])),
        ];
        assert_eq!(names(by_pool(&changed, &pools)), ["inside", "stalled"]);
        let mut unparsable = changed.clone();
        unparsable.spec.cidr = "nonsense".into();
        assert_eq!(
            names(by_pool(&unparsable, &pools)),
            ["stalled"],
            "an unparsable CIDR overlaps nothing"
        );
    }
}
