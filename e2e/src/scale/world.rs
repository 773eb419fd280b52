//! The synthetic cluster (`bench scale`): what the benchmark put into the API server, kept
//! here so that later changes (a pod stopped, another started) are written as an agent would
//! write them, without reading the objects back.
//!
//! Node `n` (`node-NNNN`) is in rack `n % pools`, served by pool `pool-<rack>`
//! (10.<rack+1>.0.0/16, /26 blocks), and holds that pool's `(n / pools)`-th block; its address
//! is 192.168.<n / 250>.<n % 250 + 1>, its VTEP MAC the one its name derives (what an agent of
//! this version publishes). Its pods hold the block's first addresses.

use std::collections::VecDeque;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sinew_crds::{IPBlock, IPBlockUsage};

use super::{BoxError, Scale};

/// Label of the synthetic nodes' rack, which the pools select.
pub const RACK_LABEL: &str = "bench.sinew.dev/rack";

/// One pod's address on its node.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub pod: String,
    pub uid: String,
    pub ip: String,
    pub container: String,
}

impl Allocation {
    fn to_json(&self) -> Value {
        json!({"ip": self.ip, "containerId": self.container, "interface": "eth0",
               "podNamespace": "default", "podName": self.pod, "podUid": self.uid, "generation": 1})
    }
}

/// One synthetic node.
#[derive(Debug, Clone)]
pub struct SynthNode {
    pub index: usize,
    pub name: String,
    pub pool: String,
    pub cidr: String,
    /// Its pods, oldest first.
    pub allocations: VecDeque<Allocation>,
    /// Pods started on it so far (names of new pods).
    pub started: usize,
}

impl SynthNode {
    /// The name of its block (and of the block's usage).
    pub fn block(&self) -> String {
        self.cidr.replace(['.', '/'], "-")
    }

    /// The `i`-th address of its block (1-based host part).
    pub fn address(&self, i: usize) -> String {
        let (net, _) = self.cidr.split_once('/').unwrap_or((&self.cidr, ""));
        let mut octets: Vec<u32> = net.split('.').filter_map(|o| o.parse().ok()).collect();
        if let Some(last) = octets.last_mut() {
            *last += i as u32;
        }
        octets
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Rack (and pool index) of node `n`.
pub fn rack(n: usize, scale: &Scale) -> usize {
    n % scale.pools
}

/// The CIDR of the `index`-th /26 of pool `rack`.
pub fn block_cidr(rack: usize, index: usize) -> String {
    let base = index * 64;
    format!("10.{}.{}.{}/26", rack + 1, base / 256, base % 256)
}

pub fn node_name(n: usize) -> String {
    format!("node-{n:04}")
}

pub fn node_address(n: usize) -> String {
    format!("192.168.{}.{}", n / 250, n % 250 + 1)
}

/// The nodes as loaded (no pods yet).
pub fn nodes(scale: &Scale) -> Vec<SynthNode> {
    (0..scale.nodes)
        .map(|n| SynthNode {
            index: n,
            name: node_name(n),
            pool: format!("pool-{}", rack(n, scale)),
            cidr: block_cidr(rack(n, scale), n / scale.pools),
            allocations: VecDeque::new(),
            started: 0,
        })
        .collect()
}

/// Pods per pool once loaded (`pools[p]`).
pub fn expected_allocated(scale: &Scale) -> Vec<u64> {
    let mut per = vec![0u64; scale.pools];
    for n in 0..scale.nodes {
        per[rack(n, scale)] += scale.pods_per_node as u64;
    }
    per
}

/// Writes `node`'s allocations as its agent reports them: the status of its block's
/// `IPBlockUsage`.
pub async fn write_allocations(client: &kube::Client, node: &SynthNode) -> Result<(), BoxError> {
    let allocations: Vec<Value> = node.allocations.iter().map(Allocation::to_json).collect();
    let name = node.block();
    let status = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": name},
                        "status": {"allocated": allocations.len(), "allocations": allocations}});
    Api::<IPBlockUsage>::all(client.clone())
        .patch_status(
            &name,
            &PatchParams::apply("sinew-bench").force(),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(())
}

/// Creates block `cidr` of `pool` for `node`, labelled as an agent's claim, and its (empty)
/// `IPBlockUsage`, owned by the block, as the agent creates it.
pub async fn create_block(
    client: &kube::Client,
    node: &str,
    pool: &str,
    cidr: &str,
) -> Result<(), BoxError> {
    let name = cidr.replace(['.', '/'], "-");
    let params = PatchParams::apply("sinew-bench").force();
    let block = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
                       "metadata": {"name": name, "labels": {"sinew.dev/node": node, "sinew.dev/pool": pool}},
                       "spec": {"pool": pool, "cidr": cidr, "node": node}});
    let block = Api::<IPBlock>::all(client.clone())
        .patch(&name, &params, &Patch::Apply(&block))
        .await?;
    let usage = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
        "metadata": {"name": name, "ownerReferences": [{"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
                     "name": name, "uid": block.metadata.uid, "controller": true}]},
        "spec": {"pool": pool, "cidr": cidr, "node": node}});
    Api::<IPBlockUsage>::all(client.clone())
        .patch(&name, &params, &Patch::Apply(&usage))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_node_has_a_block_and_an_address_of_its_own() {
        let scale = Scale::default();
        let nodes = nodes(&scale);
        let cidrs: BTreeSet<&str> = nodes.iter().map(|n| n.cidr.as_str()).collect();
        let addresses: BTreeSet<String> = (0..scale.nodes).map(node_address).collect();
        assert_eq!((cidrs.len(), addresses.len()), (scale.nodes, scale.nodes));
        for n in &nodes {
            let cidr: sinew_crds::Cidr = n.cidr.parse().unwrap();
            let pool: sinew_crds::Cidr = format!("10.{}.0.0/16", rack(n.index, &scale) + 1)
                .parse()
                .unwrap();
            assert!(pool.contains(n.address(1).parse().unwrap()));
            assert!(cidr.contains(n.address(scale.pods_per_node).parse().unwrap()));
        }
        assert_eq!(
            expected_allocated(&scale).iter().sum::<u64>(),
            (scale.nodes * scale.pods_per_node) as u64
        );
    }
}
