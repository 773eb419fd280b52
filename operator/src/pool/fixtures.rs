//! Objects the pool modules' unit tests build.

use std::sync::Arc;

use sinew_crds::{IPBlock, IPPool, IPPoolSpec};

use sinew_runtime::node::NodeFacts;

/// Pool `name` of `cidr` with `reserved` ranges (the CRD's defaults otherwise), generation 1.
pub fn pool(name: &str, cidr: &str, reserved: &[&str]) -> IPPool {
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
pub fn reporting(name: &str, subnet: &str, mode: &str) -> Arc<NodeFacts> {
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

/// A node with `labels` and `addresses` and no report.
pub fn labelled(name: &str, labels: &[(&str, &str)], addresses: &[&str]) -> Arc<NodeFacts> {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let addresses: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| serde_json::json!({"type": "InternalIP", "address": a}))
        .collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "status": {"addresses": addresses},
        }))
        .unwrap(),
    )
}

/// A node with `addresses`, no labels and no report.
pub fn with_addresses(name: &str, addresses: &[&str]) -> Arc<NodeFacts> {
    labelled(name, &[], addresses)
}

/// Block `cidr` of pool `pool` on `node`.
pub fn block(pool: &str, cidr: &str, node: &str) -> Arc<IPBlock> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
            "metadata": {"name": cidr.replace(['.', '/', ':'], "-")},
            "spec": {"pool": pool, "cidr": cidr, "node": node},
        }))
        .unwrap(),
    )
}

/// The usage of each of `blocks`: its name and how many addresses are in use (no details).
pub fn usage(blocks: &[(&Arc<IPBlock>, u32)]) -> crate::context::Usages {
    blocks
        .iter()
        .map(|(b, allocated)| {
            let name = kube::ResourceExt::name_any(b.as_ref());
            let mut u =
                sinew_crds::IPBlockUsage::new(&name, sinew_crds::IPBlockUsageSpec::of(&b.spec));
            u.status = Some(sinew_crds::IPBlockUsageStatus {
                allocated: *allocated,
                allocations: Vec::new(),
            });
            (name, Arc::new(u))
        })
        .collect()
}
