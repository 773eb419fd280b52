//! `IPBlockUsage`: the allocations of one `IPBlock`, written by the block's node.
//!
//! Kept apart from the block because of who reads what (decision 95): every agent watches
//! every `IPBlock` (each is a route on every node), while allocations change with every pod
//! start and stop and only the operator (pool status, leak collection) and users read them.
//! Were they in the block's status, every pod anywhere would be an event to every agent.
//!
//! Same name as its block, owned by it (`metadata.ownerReferences`, so the garbage collector
//! deletes it with the block; the chart's admission policy refuses one without that owner),
//! and written only by the block's node (the same policy). Readers take a usage only when its
//! spec agrees with its block ([`IPBlockUsage::describes`]).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::ip_block::{Allocation, IPBlock, IPBlockSpec};

/// The allocations of one block. Written by its node's agent; not meant to be edited.
// The derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[kube(
    group = "sinew.dev",
    version = "v1alpha1",
    kind = "IPBlockUsage",
    plural = "ipblockusages",
    singular = "ipblockusage",
    shortname = "ipbu",
    category = "sinew",
    status = "IPBlockUsageStatus",
    derive = "PartialEq",
    doc = "The allocations of the IPBlock of the same name, written by its node (managed by sinew).",
    selectable = ".spec.node",
    selectable = ".spec.pool",
    validation = Rule::new(IPBlockSpec::CANONICAL_NAME_RULE)
        .message(Message::Expression(IPBlockSpec::CANONICAL_NAME_MESSAGE.into())),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Allocated", type_ = "integer", json_path = ".status.allocated"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("an IPBlockUsage's spec is immutable: it is its block's"))]
pub struct IPBlockUsageSpec {
    /// Name of the `IPPool` of the block.
    #[schemars(length(min = 1, max = 253))]
    pub pool: String,

    /// The block's addresses.
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self) == cidr(self).masked()").message("must be a network address in CIDR form"))]
    #[schemars(length(min = 3, max = 43))]
    pub cidr: String,

    /// Node that owns the block.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
}

/// The block's allocations, written only by its node's agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPBlockUsageStatus {
    /// Number of addresses in use.
    #[serde(default)]
    pub allocated: u32,

    /// One entry per address in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    pub allocations: Vec<Allocation>,
}

impl IPBlockUsageSpec {
    /// The spec of the usage of `block`.
    pub fn of(block: &IPBlockSpec) -> Self {
        IPBlockUsageSpec {
            pool: block.pool.clone(),
            cidr: block.cidr.clone(),
            node: block.node.clone(),
        }
    }
}

impl IPBlockUsage {
    /// Whether this is the usage of `block`: the same name, pool, CIDR and node. A usage that
    /// disagrees with its block (written by another node under the block's name) is ignored.
    pub fn describes(&self, block: &IPBlock) -> bool {
        self.name_any() == block.name_any() && self.spec == IPBlockUsageSpec::of(&block.spec)
    }
}

/// The usage of each of `blocks` that has one agreeing with it, by block name.
pub fn usage_by_block<'a, B, U>(blocks: B, usages: U) -> BTreeMap<String, IPBlockUsageStatus>
where
    B: IntoIterator<Item = &'a IPBlock>,
    U: IntoIterator<Item = &'a IPBlockUsage>,
{
    let by_name: BTreeMap<String, &IPBlockUsage> =
        usages.into_iter().map(|u| (u.name_any(), u)).collect();
    blocks
        .into_iter()
        .filter_map(|b| {
            let usage = by_name.get(&b.name_any())?;
            let status = usage.status.as_ref()?;
            usage.describes(b).then(|| (b.name_any(), status.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(name: &str, node: &str) -> IPBlock {
        IPBlock::new(
            name,
            IPBlockSpec {
                pool: "p".into(),
                cidr: "10.0.0.0/26".into(),
                node: node.into(),
            },
        )
    }

    fn usage(name: &str, node: &str, allocated: u32) -> IPBlockUsage {
        let mut u = IPBlockUsage::new(
            name,
            IPBlockUsageSpec {
                pool: "p".into(),
                cidr: "10.0.0.0/26".into(),
                node: node.into(),
            },
        );
        u.status = Some(IPBlockUsageStatus {
            allocated,
            allocations: Vec::new(),
        });
        u
    }

    #[test]
    fn a_usage_counts_only_for_the_block_it_describes() {
        let blocks = [block("10-0-0-0-26", "a")];
        let mine = usage("10-0-0-0-26", "a", 3);
        assert_eq!(
            usage_by_block(&blocks, [&mine])
                .get("10-0-0-0-26")
                .map(|s| s.allocated),
            Some(3)
        );
        // Another node writing under the block's name is not the block's usage.
        let forged = usage("10-0-0-0-26", "b", 60);
        assert!(usage_by_block(&blocks, [&forged]).is_empty());
        // Nor is a usage without its block, or one not yet written.
        assert!(usage_by_block(&[], [&mine]).is_empty());
        let mut empty = usage("10-0-0-0-26", "a", 0);
        empty.status = None;
        assert!(usage_by_block(&blocks, [&empty]).is_empty());
    }

    #[test]
    fn what_every_agent_watches_carries_no_allocations() {
        // Every agent watches every IPBlock: were allocations there, every pod anywhere would
        // be an event to every node (decision 95).
        use kube::CustomResourceExt;
        let crd = IPBlock::crd();
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .is_none_or(|s| s.status.is_none())
        );
        let properties = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .unwrap();
        assert!(!properties.contains_key("status"));
        let spec: Vec<&String> = properties["spec"]
            .properties
            .as_ref()
            .map(|p| p.keys().collect())
            .unwrap_or_default();
        assert_eq!(spec, ["cidr", "node", "pool"]);
    }
}
