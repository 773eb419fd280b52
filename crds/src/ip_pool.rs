//! `IPPool`: a range of pod addresses, how it is cut into per-node blocks and how traffic
//! between nodes is forwarded.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::cidr::{Cidr, Family};
use sinew_core::PoolMode;

/// A range of pod addresses, cut into blocks that nodes claim, and the forwarding mode used
/// between nodes for traffic of this pool.
// The derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sinew.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    shortname = "ipp",
    category = "sinew",
    status = "IPPoolStatus",
    derive = "PartialEq",
    doc = "A range of pod addresses, cut into per-node blocks, with the forwarding mode used between nodes.",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Allocated/Capacity",
        type_ = "string",
        json_path = ".status.usage",
        description = "Addresses handed out to pods / addresses the pool can hand out"
    ),
    printcolumn(
        name = "Converged",
        type_ = "string",
        json_path = ".status.modeConvergence",
        description = "Nodes programmed for the current mode / nodes using the pool"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.blockSize) || !isCIDR(self.cidr) || self.blockSize >= cidr(self.cidr).prefixLength()")
        .message("blockSize must not be shorter than the prefix length of cidr")
        .field_path(".blockSize"),
    validation = Rule::new("!has(self.blockSize) || !isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? (self.blockSize >= 20 && self.blockSize <= 32) : (self.blockSize >= 116 && self.blockSize <= 128))")
        .message("blockSize must be between 20 and 32 for an IPv4 pool, between 116 and 128 for an IPv6 pool")
        .field_path(".blockSize"),
    validation = Rule::new("has(self.blockSize) == has(oldSelf.blockSize)")
        .message("blockSize is immutable")
        .field_path(".blockSize"),
    validation = Rule::new("!has(self.reserved) || !isCIDR(self.cidr) || self.reserved.all(r, isCIDR(r) ? cidr(self.cidr).containsCIDR(r) : (isIP(r) && cidr(self.cidr).containsIP(r)))")
        .message("every reserved entry must be an address or CIDR inside cidr")
        .field_path(".reserved")
)]
pub struct IPPoolSpec {
    /// The pool's address range, as a network address with prefix (e.g. `10.244.0.0/16` or
    /// `fd00:10:244::/56`). At least /8 for IPv4 and /32 for IPv6, and clear of loopback,
    /// link-local, multicast, unspecified and broadcast addresses. Immutable.
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("must be a CIDR such as 10.244.0.0/16 or fd00:10:244::/56"),
        validation = Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message("must be a network address: host bits must be zero"),
        validation = Rule::new("self == oldSelf").message("cidr is immutable"),
        validation = Rule::new("!isCIDR(self) || cidr(self).prefixLength() >= (cidr(self).ip().family() == 4 ? 8 : 32)")
            .message("the prefix length must be at least 8 for IPv4 and at least 32 for IPv6: a shorter pool (such as 0.0.0.0/0 or ::/0) would claim addresses of the rest of the network"),
        validation = Rule::new(special_range_rule(&["127.0.0.0/8", "::1/128"]))
            .message("must not overlap the loopback addresses 127.0.0.0/8 and ::1/128"),
        validation = Rule::new(special_range_rule(&["169.254.0.0/16", "fe80::/10"]))
            .message("must not overlap the link-local ranges 169.254.0.0/16 and fe80::/10 (pods use 169.254.1.1 and fe80::1 as their gateway)"),
        validation = Rule::new(special_range_rule(&["224.0.0.0/4", "ff00::/8"]))
            .message("must not overlap the multicast ranges 224.0.0.0/4 and ff00::/8"),
        validation = Rule::new(special_range_rule(&["0.0.0.0/8", "::/128", "255.255.255.255/32"]))
            .message("must not contain the unspecified addresses 0.0.0.0/8 and ::, or the broadcast address 255.255.255.255")
    )]
    #[schemars(length(min = 3, max = 43))]
    pub cidr: String,

    /// Prefix length of the blocks nodes claim from this pool. Defaults to 26 (64 addresses)
    /// for IPv4 and 122 for IPv6. Between 20 and 32 (IPv4) or 116 and 128 (IPv6), and not
    /// shorter than the pool's own prefix. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("blockSize is immutable"))]
    #[schemars(range(min = 0, max = 128))]
    pub block_size: Option<u8>,

    /// Forwarding between nodes: `VXLAN`, `Routed` (peers must share an L2 subnet) or `Auto`
    /// (routed to same-subnet peers, VXLAN to the rest). Can be changed on a live pool.
    #[serde(default)]
    pub mode: PoolMode,

    /// Masquerade traffic from this pool's pods to destinations outside every pool.
    #[serde(default = "default_true")]
    pub nat_outgoing: bool,

    /// Nodes that take blocks from this pool; all nodes when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// Stop handing out new addresses (existing pods keep theirs). Used to drain a pool.
    #[serde(default)]
    pub disabled: bool,

    /// Addresses (`10.244.0.10`) or CIDRs (`10.244.0.0/28`) inside the pool that are never
    /// handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 2, max = 43)))]
    pub reserved: Vec<String>,
}

/// CEL on `spec.cidr`: the pool shares no address with any of `ranges` (two prefixes overlap
/// exactly when one contains the other's network address; prefixes of the other family never
/// do).
fn special_range_rule(ranges: &[&str]) -> String {
    let list = ranges
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "!isCIDR(self) || ![{list}].exists(r, cidr(r).containsIP(cidr(self).masked().ip()) || cidr(self).masked().containsIP(cidr(r).ip()))"
    )
}

fn default_true() -> bool {
    true
}

/// Reasons of a `Stalled` pool that must hand out no new addresses (a conflict with another
/// pool, a Service CIDR or a node address): agents claim no new blocks from such a pool.
pub const CONFLICT_REASONS: [&str; 3] = [
    "OverlappingPools",
    "OverlapsServiceCIDR",
    "OverlapsNodeAddresses",
];

impl IPPool {
    /// Whether the operator stalled this pool for a conflict (see [`CONFLICT_REASONS`]).
    pub fn is_conflicted(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Stalled"
                    && c.status == "True"
                    && CONFLICT_REASONS.contains(&c.reason.as_str())
            })
        })
    }
}

/// Observed state of a pool, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled` and `Exhausted`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Addresses the pool can hand out (its size minus reserved addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,

    /// Addresses currently held by pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u64>,

    /// Addresses never handed out because the spec reserves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,

    /// Blocks claimed by nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,

    /// The block prefix length in effect (the spec's, or the family default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,

    /// `allocated/capacity`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,

    /// `converged/total` nodes programmed for the current mode, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_convergence: Option<String>,

    /// While a mode switch rolls out: what it changes, and which nodes are still to switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_plan: Option<ModePlan>,
}

/// The plan of a mode switch, shown from the moment `spec.mode` changes until every node of
/// the pool runs the new mode.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModePlan {
    /// Mode the nodes ran before the switch.
    pub from: String,
    /// Mode they switch to (`spec.mode`).
    pub to: String,
    /// Nodes that have to reprogram their routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Of those, the ones that have not switched yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// Node pairs whose traffic moves from VXLAN to direct routes.
    #[serde(default)]
    pub peers_to_routed: u32,
    /// Node pairs whose traffic moves from direct routes to VXLAN.
    #[serde(default)]
    pub peers_to_vxlan: u32,
    /// Node pairs left without a path (`Routed` across subnets).
    #[serde(default)]
    pub peers_unreachable: u32,
    /// MTU of new pod interfaces per node, where it changes (`node: old -> new`). Running
    /// pods keep the MTU they were created with until they restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mtu_changes: Vec<String>,
}

impl IPPoolSpec {
    /// The parsed `cidr`.
    pub fn parsed_cidr(&self) -> Result<Cidr, crate::cidr::CidrError> {
        self.cidr.parse()
    }

    /// The block prefix length in effect for a pool of `family`.
    pub fn effective_block_size(&self, family: Family) -> u8 {
        self.block_size
            .unwrap_or_else(|| family.default_block_size())
    }
}
