//! `kubectl sinew ipam check`: the nodes' stores (as their agents mirror them into the blocks'
//! `IPBlockUsage`s) against the `IPBlock`s, the pools and the Pods. Read-only: nothing is locked, and
//! `--release-leaks` only asks the agents through the evidence handshake the operator uses
//! (`sinew.dev/release`: address, slot generation, pod UID; the agent frees an allocation only
//! if all three still match).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use sinew_crds::node::Severity;
use sinew_crds::{Cidr, IPBlock, IPBlockUsage, IPPool, ReleaseRequest};

use crate::finding::Finding;

/// Annotations under which a mirror pod names its static pod (whose UID the runtime used).
const MIRROR_ANNOTATIONS: [&str; 2] = ["kubernetes.io/config.mirror", "kubernetes.io/config.hash"];

/// The findings, and the release requests for leaked allocations (per block).
pub fn check(
    blocks: &[IPBlock],
    usages: &[IPBlockUsage],
    pools: &[IPPool],
    pods: &[Pod],
    nodes: &[Node],
    now: &str,
) -> (Vec<Finding>, BTreeMap<String, Vec<ReleaseRequest>>) {
    let mut out = Vec::new();
    let mut releases: BTreeMap<String, Vec<ReleaseRequest>> = BTreeMap::new();
    let live: BTreeSet<String> = pods
        .iter()
        .flat_map(|p| {
            let mut uids: Vec<String> = p.uid().into_iter().collect();
            for key in MIRROR_ANNOTATIONS {
                uids.extend(p.annotations().get(key).cloned());
            }
            uids
        })
        .collect();
    let node_names: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let pool_names: BTreeSet<String> = pools.iter().map(|p| p.name_any()).collect();
    let usage = sinew_crds::usage_by_block(blocks, usages);
    let mut holders: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for block in blocks {
        let name = block.name_any();
        let scope = format!("ipblock/{name}");
        if !node_names.contains(&block.spec.node) {
            out.push(
                Finding::new(
                    Severity::Warning,
                    scope.clone(),
                    "OrphanedBlock",
                    format!("its node {} does not exist", block.spec.node),
                )
                .fix("the operator releases it once none of its pods exists; if it stays, check the operator's logs"),
            );
        }
        if !pool_names.contains(&block.spec.pool) {
            out.push(Finding::new(
                Severity::Warning,
                scope.clone(),
                "OrphanedBlock",
                format!("its pool {} does not exist", block.spec.pool),
            ));
        }
        let Some(status) = usage.get(&name) else {
            continue;
        };
        for a in &status.allocations {
            let pod = format!(
                "{}/{}",
                a.pod_namespace.as_deref().unwrap_or("?"),
                a.pod_name.as_deref().unwrap_or("?")
            );
            holders
                .entry(a.ip.as_str())
                .or_default()
                .push(format!("{pod} in {name} (container {})", a.container_id));
            let Some(uid) = &a.pod_uid else { continue };
            if !live.contains(uid) {
                out.push(
                    Finding::new(
                        Severity::Warning,
                        scope.clone(),
                        "LeakedAddress",
                        format!("{} is held for pod {pod} (UID {uid}), which no longer exists", a.ip),
                    )
                    .fix("the operator's leak GC releases it after its grace period; `kubectl sinew ipam check --release-leaks` asks the node now"),
                );
                releases
                    .entry(name.clone())
                    .or_default()
                    .push(ReleaseRequest {
                        ip: a.ip.clone(),
                        generation: a.generation,
                        pod_uid: uid.clone(),
                        pod: pod.clone(),
                        missing_since: now.to_string(),
                    });
            }
        }
    }
    for (ip, who) in &holders {
        if who.len() > 1 {
            out.push(
                Finding::new(
                    Severity::Critical,
                    format!("ip/{ip}"),
                    "DuplicateAddress",
                    format!("{ip} is allocated {} times", who.len()),
                )
                .evidence(who.clone())
                .fix("delete and recreate all but one of these pods"),
            );
        }
    }
    let cidrs: Vec<Cidr> = pools
        .iter()
        .filter_map(|p| p.spec.parsed_cidr().ok())
        .collect();
    for pod in pods {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let running = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Running");
        if host_network || !running {
            continue;
        }
        let ips = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ips.clone())
            .unwrap_or_default();
        for ip in ips {
            let Ok(addr) = ip.ip.parse() else { continue };
            if cidrs.iter().any(|c| c.contains(addr)) && !holders.contains_key(ip.ip.as_str()) {
                out.push(Finding::new(
                    Severity::Warning,
                    format!(
                        "pod/{}/{}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    ),
                    "UntrackedAddress",
                    format!("{} is in a pool but in no IPBlock's allocations (status lags, or the node's store lost it)", ip.ip),
                ));
            }
        }
    }
    (out, releases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_crds::{Allocation, IPBlockSpec, IPBlockUsageSpec, IPBlockUsageStatus, IPPoolSpec};

    fn block(name: &str, node: &str, allocations: Vec<(&str, &str)>) -> (IPBlock, IPBlockUsage) {
        let b = IPBlock::new(
            name,
            IPBlockSpec {
                pool: "p".into(),
                cidr: "10.244.0.0/26".into(),
                node: node.into(),
            },
        );
        let mut u = IPBlockUsage::new(name, IPBlockUsageSpec::of(&b.spec));
        u.status = Some(IPBlockUsageStatus {
            allocated: allocations.len() as u32,
            allocations: allocations
                .into_iter()
                .map(|(ip, uid)| Allocation {
                    ip: ip.into(),
                    container_id: format!("c-{uid}"),
                    interface: "eth0".into(),
                    pod_namespace: Some("default".into()),
                    pod_name: Some(format!("pod-{uid}")),
                    pod_uid: Some(uid.into()),
                    generation: 3,
                })
                .collect(),
        });
        (b, u)
    }

    fn pod(uid: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(format!("pod-{uid}"));
        p.metadata.uid = Some(uid.into());
        p
    }

    fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n
    }

    #[test]
    fn leaks_duplicates_and_orphans_are_found() {
        let pool = IPPool::new(
            "p",
            serde_json::from_value::<IPPoolSpec>(serde_json::json!({"cidr": "10.244.0.0/16"}))
                .unwrap(),
        );
        let (blocks, usages): (Vec<_>, Vec<_>) = [
            block(
                "b1",
                "n1",
                vec![("10.244.0.1", "u1"), ("10.244.0.2", "gone")],
            ),
            block("b2", "n9", vec![("10.244.0.1", "u3")]),
        ]
        .into_iter()
        .unzip();
        let (f, releases) = check(
            &blocks,
            &usages,
            &[pool],
            &[pod("u1"), pod("u3")],
            &[node("n1")],
            "t",
        );
        let kinds: Vec<&str> = f.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec!["LeakedAddress", "OrphanedBlock", "DuplicateAddress"],
            "{f:?}"
        );
        assert_eq!(releases["b1"][0].pod_uid, "gone");
        assert_eq!(releases["b1"][0].generation, 3);
        assert_eq!(releases.len(), 1);
    }
}
