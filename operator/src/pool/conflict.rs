//! What the schema cannot check of a pool (pure): whether its CIDR overlaps an older pool, a
//! Service CIDR or a node's address. Such a pool is stalled and hands out no new addresses.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::ResourceExt;
use sinew_crds::precedence::creation_order;
use sinew_crds::{Cidr, IPPool};

use sinew_runtime::node::NodeFacts;

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
    /// One of [`sinew_crds::ip_pool::CONFLICT_REASONS`]: agents skip pools stalled for one.
    pub reason: &'static str,
    pub message: String,
}

/// The first conflict of `pool` with another (older) pool, a Service CIDR or a node's address.
pub fn conflict(
    pool: &IPPool,
    pools: &[Arc<IPPool>],
    service_cidrs: &[(String, String)],
    node_addresses: &[(String, IpAddr)],
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

/// Every CIDR of the cluster's `ServiceCIDR` objects, with the object's name.
pub fn service_cidrs(objects: &[Arc<ServiceCIDR>]) -> Vec<(String, String)> {
    objects
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
        .collect()
}

/// Every address of every node, with the node's name.
pub fn addresses_of_nodes(nodes: &[Arc<NodeFacts>]) -> Vec<(String, IpAddr)> {
    nodes
        .iter()
        .flat_map(|n| {
            let name = n.name_any();
            n.addresses.all.iter().map(move |a| (name.clone(), *a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions;
    use crate::pool::fixtures::{pool, with_addresses};
    use crate::pool::status::status;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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
        let st = status(&b, &[], &Default::default(), &[], Some(&c), None);
        assert!(!conditions::is_true(&st.conditions, "Ready"));
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "OverlappingPools");
        assert!(ready.message.contains("pool a (10.0.0.0/16)"));
    }

    #[test]
    fn the_newer_pool_is_the_later_instant_even_within_one_second() {
        // The same pools as the agent's `vetting` test: both sides must refuse the same one.
        let created = |name: &str, cidr: &str, at: &str| {
            let mut p = pool(name, cidr, &[]);
            p.metadata.creation_timestamp = Some(Time(at.parse().unwrap()));
            Arc::new(p)
        };
        let first = created("first", "10.244.0.0/16", "2026-01-01T00:00:00Z");
        let later = created("later", "10.244.0.0/24", "2026-01-01T00:00:00.5Z");
        let all = vec![later.clone(), first.clone()];
        assert_eq!(
            overlapping(&later, &all).map(|p| p.name_any()),
            Some("first".into())
        );
        assert!(overlapping(&first, &all).is_none());
    }

    #[test]
    fn a_pool_being_deleted_refuses_no_other() {
        let mut old = pool("old", "10.0.0.0/16", &[]);
        old.metadata.deletion_timestamp = Some(crate::scenarios::deleted(Default::default()));
        let new = Arc::new(pool("new", "10.0.5.0/24", &[]));
        assert!(overlapping(&new, &[Arc::new(old), new.clone()]).is_none());
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

    #[test]
    fn every_conflict_reason_is_one_agents_skip() {
        // No creation times: the name decides, "a" is the older.
        let old = Arc::new(pool("a", "10.0.0.0/16", &[]));
        let new = Arc::new(pool("b", "10.0.5.0/24", &[]));
        let svc = [("s".to_string(), "10.0.0.0/24".to_string())];
        let node = [("n".to_string(), "10.0.0.1".parse().unwrap())];
        let reasons = [
            conflict(&new, &[old.clone(), new.clone()], &[], &[]),
            conflict(&old, &[], &svc, &[]),
            conflict(&old, &[], &[], &node),
        ]
        .map(|c| c.expect("a conflict").reason);
        assert_eq!(reasons, sinew_crds::ip_pool::CONFLICT_REASONS);
    }

    #[test]
    fn the_inputs_are_every_service_cidr_and_every_parsable_node_address() {
        let svc: ServiceCIDR = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": ["10.96.0.0/16", "fd00:96::/112"]},
        }))
        .unwrap();
        assert_eq!(
            service_cidrs(&[Arc::new(svc)]),
            [
                ("kubernetes".to_string(), "10.96.0.0/16".to_string()),
                ("kubernetes".to_string(), "fd00:96::/112".to_string()),
            ]
        );
        let nodes = [
            with_addresses("a", &["10.99.0.1", "fd00:99::1"]),
            with_addresses("b", &["node-b.example", "10.99.0.2"]),
        ];
        assert_eq!(
            addresses_of_nodes(&nodes),
            [
                ("a".to_string(), "10.99.0.1".parse().unwrap()),
                ("a".to_string(), "fd00:99::1".parse().unwrap()),
                ("b".to_string(), "10.99.0.2".parse().unwrap()),
            ]
        );
    }
}
