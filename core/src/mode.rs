//! A pool's mode and the one decision both sides make from it: how traffic between two nodes
//! travels and which MTU a new pod gets. The node agent programs what [`PoolMode::forwarding`]
//! says; the operator's mode-switch plan predicts with the same function, so the two cannot
//! disagree.

use serde::{Deserialize, Serialize};

use crate::cidr::Family;

/// How pod traffic crosses between nodes.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PoolMode {
    /// Encapsulate in VXLAN towards every peer (works across any underlay).
    #[serde(rename = "VXLAN")]
    Vxlan,
    /// Route to each peer's blocks via the peer's node address (peers must share an L2 subnet).
    Routed,
    /// Routed towards peers on the same subnet, VXLAN towards the others.
    #[default]
    Auto,
}

/// Bytes VXLAN adds to every packet: outer IP + UDP + VXLAN headers + inner Ethernet.
pub fn vxlan_overhead(underlay: Family) -> u32 {
    match underlay {
        Family::V4 => 50,
        Family::V6 => 70,
    }
}

/// How traffic between two nodes of a pool travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Forwarding {
    Routed,
    Vxlan,
    /// `Routed` between nodes on different subnets: nothing is programmed.
    Unreachable,
}

impl PoolMode {
    /// How a block of family `block` travels to a peer over an underlay of family `underlay`,
    /// the peer being on this node's underlay subnet or not. A plain route needs a gateway of
    /// the block's own family, so a block of the other family always goes through VXLAN
    /// (an IPv6 pool over an IPv4 underlay), whatever the mode says.
    pub fn forwarding(self, same_subnet: bool, block: Family, underlay: Family) -> Forwarding {
        let routable = block == underlay;
        match self {
            PoolMode::Vxlan => Forwarding::Vxlan,
            PoolMode::Auto if same_subnet && routable => Forwarding::Routed,
            PoolMode::Auto => Forwarding::Vxlan,
            PoolMode::Routed if !routable => Forwarding::Vxlan,
            PoolMode::Routed if same_subnet => Forwarding::Routed,
            PoolMode::Routed => Forwarding::Unreachable,
        }
    }

    /// The MTU new pod interfaces of a pool of family `block` get on a node whose underlay has
    /// `underlay_mtu` (unless the `ClusterNetwork` fixes one): the full underlay MTU only when
    /// every path [`PoolMode::forwarding`] can choose is a plain route; otherwise room for the
    /// VXLAN headers, since the pod's packets may be encapsulated.
    pub fn pod_mtu(
        self,
        underlay_mtu: u32,
        underlay: Family,
        block: Family,
        fixed: Option<u32>,
    ) -> u32 {
        let always_routed = self == PoolMode::Routed && block == underlay;
        fixed.unwrap_or(if always_routed {
            underlay_mtu
        } else {
            underlay_mtu.saturating_sub(vxlan_overhead(underlay))
        })
    }
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Vxlan => "VXLAN",
            PoolMode::Routed => "Routed",
            PoolMode::Auto => "Auto",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Family::{V4, V6};

    #[test]
    fn one_decision_for_paths_and_mtu() {
        use Forwarding::*;
        // Same family: the mode decides.
        assert_eq!(PoolMode::Routed.forwarding(true, V4, V4), Routed);
        assert_eq!(PoolMode::Routed.forwarding(false, V4, V4), Unreachable);
        assert_eq!(PoolMode::Auto.forwarding(true, V4, V4), Routed);
        assert_eq!(PoolMode::Auto.forwarding(false, V4, V4), Vxlan);
        assert_eq!(PoolMode::Vxlan.forwarding(true, V4, V4), Vxlan);
        // An IPv6 pool over an IPv4 underlay is tunnelled in every mode...
        for mode in [PoolMode::Routed, PoolMode::Auto, PoolMode::Vxlan] {
            assert_eq!(mode.forwarding(true, V6, V4), Vxlan, "{mode}");
        }
        // ...so its pods leave room for the tunnel even in Routed mode.
        assert_eq!(PoolMode::Routed.pod_mtu(1500, V4, V6, None), 1450);
        assert_eq!(PoolMode::Routed.pod_mtu(1500, V4, V4, None), 1500);
        assert_eq!(PoolMode::Auto.pod_mtu(1500, V6, V6, None), 1430);
        assert_eq!(PoolMode::Auto.pod_mtu(1500, V4, V4, Some(1400)), 1400);
    }
}
