//! What this node must program towards its peers, computed from cluster state (pure).
//!
//! For every block owned by another node, the pool's mode decides the path:
//! - `Routed`: a route to the block via the peer's node address on the underlay;
//! - `VXLAN`: a route to the block via a per-peer gateway address, `onlink`, on the VXLAN
//!   device, with a permanent neighbour entry gateway -> peer VTEP MAC and an FDB entry peer
//!   VTEP MAC -> peer node address (no multicast, no learning);
//! - `Auto`: `Routed` when the peer's address is inside this node's underlay subnet, `VXLAN`
//!   otherwise.
//!
//! A peer's VTEP MAC is the one its Node publishes, taken only when it is a unicast address
//! that no other node publishes and that no other node's name derives
//! ([`vtep_mac`](sinew_node_lib::consts::vtep_mac), what every agent of this version
//! publishes): a node cannot draw another node's tunnel traffic by publishing its MAC, and
//! two nodes cloned from one image (one machine-id, one udev MAC) are reported, not
//! programmed half-way.
//!
//! The gateway of an IPv4 block over VXLAN is the peer's node address itself (it only has to
//! be unique per peer on the VXLAN device); for an IPv6 block it is the link-local address
//! derived from the peer's VTEP MAC (EUI-64), so IPv6 pools work over an IPv4 underlay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use sinew_crds::{Cidr, Family, Forwarding, PoolMode};

/// What the agent knows about one node (itself or a peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Underlay address (the Node's InternalIP).
    pub ip: IpAddr,
    /// MAC of the node's VXLAN device, once the node published it.
    pub vtep_mac: Option<[u8; 6]>,
}

/// One claimed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub cidr: Cidr,
    pub node: String,
    pub pool: String,
}

/// How a peer block is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerPath {
    Routed,
    Vxlan,
}

/// One route towards a peer block.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub dst: Cidr,
    pub via: IpAddr,
    pub path: PeerPath,
    pub peer: String,
}

/// Everything to program, and what could not be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: Vec<PeerRoute>,
    /// Permanent neighbours on the VXLAN device: gateway -> peer VTEP MAC.
    pub neighbors: BTreeMap<IpAddr, [u8; 6]>,
    /// FDB entries on the VXLAN device: peer VTEP MAC -> peer node address.
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
    /// Peers whose blocks cannot be programmed yet or at all, with the reason.
    pub problems: Vec<String>,
    /// VTEP MACs refused because two nodes claim them (one line per clash).
    pub vtep_conflicts: Vec<String>,
}

impl Plan {
    pub fn needs_vxlan(&self) -> bool {
        self.routes.iter().any(|r| r.path == PeerPath::Vxlan)
    }
}

/// The IPv6 link-local address derived from a MAC (modified EUI-64).
pub fn link_local_from_mac(mac: [u8; 6]) -> IpAddr {
    let b = [
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    IpAddr::V6(Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]),
    ))
}

/// The VTEP MAC of each node that may have one: published, unicast, not all zeros, claimed by
/// no other node and derived from no other node's name. The refused claims, one line each.
pub fn trusted_vtep_macs(nodes: &[NodeInfo]) -> (BTreeMap<String, [u8; 6]>, Vec<String>) {
    let mut claims: BTreeMap<[u8; 6], Vec<&str>> = BTreeMap::new();
    for n in nodes {
        if let Some(mac) = n.vtep_mac {
            claims.entry(mac).or_default().push(&n.name);
        }
    }
    let derived: BTreeMap<[u8; 6], &str> = nodes
        .iter()
        .map(|n| (sinew_node_lib::consts::vtep_mac(&n.name), n.name.as_str()))
        .collect();
    let mut trusted = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (mac, claimants) in claims {
        let shown = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        if mac == [0; 6] || mac[0] & 0x01 != 0 {
            for n in claimants {
                conflicts.push(format!(
                    "node {n} publishes {shown}, which is not a unicast MAC: not programmed"
                ));
            }
            continue;
        }
        match derived.get(&mac) {
            // The node whose name derives the MAC keeps it; whoever else claims it does not.
            Some(owner) => {
                for n in claimants.iter().filter(|n| *n != owner) {
                    conflicts.push(format!(
                        "node {n} publishes VTEP MAC {shown}, which belongs to node {owner}: not programmed (a node impersonating another)"
                    ));
                }
                if claimants.contains(owner) {
                    trusted.insert(owner.to_string(), mac);
                }
            }
            None if claimants.len() > 1 => conflicts.push(format!(
                "nodes {} all publish VTEP MAC {shown}: none of them is given VXLAN traffic (nodes cloned from one image, or a node impersonating another)",
                claimants.join(", ")
            )),
            None => {
                trusted.insert(claimants[0].to_string(), mac);
            }
        }
    }
    (trusted, conflicts)
}

/// The nodes a plan reads, sorted by name, each with the VTEP MAC it may be given
/// ([`trusted_vtep_macs`]): worked out once per change of the nodes, not once per pass.
#[derive(Debug, Default)]
pub struct Nodes {
    pub list: Vec<NodeInfo>,
    /// Beside `list`: each node's trusted VTEP MAC.
    macs: Vec<Option<[u8; 6]>>,
    vtep_conflicts: Vec<String>,
}

impl Nodes {
    pub fn new(mut list: Vec<NodeInfo>) -> Nodes {
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let (trusted, vtep_conflicts) = trusted_vtep_macs(&list);
        let macs = list.iter().map(|n| trusted.get(&n.name).copied()).collect();
        Nodes {
            list,
            macs,
            vtep_conflicts,
        }
    }

    /// Node `name`, and the VTEP MAC it may be given.
    pub fn find(&self, name: &str) -> Option<(&NodeInfo, Option<[u8; 6]>)> {
        let i = self
            .list
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()?;
        Some((self.list.get(i)?, *self.macs.get(i)?))
    }

    pub fn get(&self, name: &str) -> Option<&NodeInfo> {
        self.find(name).map(|(node, _)| node)
    }
}

/// Computes the plan for node `me` whose underlay subnet is `underlay`.
pub fn plan(
    me: &str,
    underlay: &Cidr,
    nodes: &Nodes,
    blocks: &[BlockInfo],
    modes: &BTreeMap<String, PoolMode>,
) -> Plan {
    let mut plan = Plan {
        vtep_conflicts: nodes.vtep_conflicts.clone(),
        ..Plan::default()
    };
    let mut problems = BTreeSet::new();
    for block in blocks.iter().filter(|b| b.node != me) {
        let Some(mode) = modes.get(&block.pool) else {
            continue;
        };
        let Some((peer, trusted_mac)) = nodes.find(&block.node) else {
            problems.insert(format!(
                "block {} belongs to unknown node {}",
                block.cidr, block.node
            ));
            continue;
        };
        let family = block.cidr.family();
        // The one decision the operator's mode plan makes too (`PoolMode::forwarding`).
        let path = match mode.forwarding(underlay.contains(peer.ip), family, Family::of(peer.ip)) {
            Forwarding::Routed => PeerPath::Routed,
            Forwarding::Vxlan => PeerPath::Vxlan,
            Forwarding::Unreachable => {
                // A route via an off-link gateway would be refused (or black-hole): say so.
                problems.insert(format!(
                    "pool {} is Routed but node {} ({}) is not on this node's subnet {underlay}: Routed needs a shared L2 segment (use Auto or VXLAN)",
                    block.pool, peer.name, peer.ip
                ));
                continue;
            }
        };
        let via = match path {
            PeerPath::Routed => peer.ip,
            PeerPath::Vxlan => {
                let Some(mac) = trusted_mac else {
                    if peer.vtep_mac.is_none() {
                        problems
                            .insert(format!("node {} has not published its VTEP yet", peer.name));
                    }
                    continue;
                };
                let gateway = match family {
                    Family::V4 if peer.ip.is_ipv4() => peer.ip,
                    Family::V4 => {
                        problems.insert(format!(
                            "IPv4 block {} over an IPv6 underlay to {} is not supported",
                            block.cidr, peer.name
                        ));
                        continue;
                    }
                    Family::V6 => link_local_from_mac(mac),
                };
                plan.neighbors.insert(gateway, mac);
                // The peer's own address too, whatever the block's family: the probe mesh
                // sends to it into the VXLAN device (`probe`).
                plan.neighbors.insert(peer.ip, mac);
                plan.fdb.insert(mac, peer.ip);
                gateway
            }
        };
        plan.routes.push(PeerRoute {
            dst: block.cidr,
            via,
            path,
            peer: peer.name.clone(),
        });
    }
    plan.routes.sort();
    plan.problems = problems.into_iter().collect();
    plan
}

/// Whether IPv4 pod traffic between this node and one of its peers takes both paths, the
/// underlay and the tunnel: this node's routes to the peer's blocks (`plan`), and the peer's
/// paths to this node's own blocks (the same decision, [`PoolMode::forwarding`], made from its
/// side). Then a reply can arrive on the underlay from a source this node tunnels to, or the
/// other way round. Each pair on its own: one `Auto` pool over two subnets routes to one peer
/// and tunnels to another, but each pair's traffic takes one path both ways.
pub fn paths_mixed(
    me: &str,
    underlay: &Cidr,
    nodes: &[NodeInfo],
    blocks: &[BlockInfo],
    modes: &BTreeMap<String, PoolMode>,
    plan: &Plan,
) -> bool {
    // Per peer, the paths taken (a bit each).
    let bit = |path| match path {
        PeerPath::Routed => 1u8,
        PeerPath::Vxlan => 2,
    };
    let mut per_peer: HashMap<&str, u8> = HashMap::new();
    for r in plan.routes.iter().filter(|r| r.dst.family() == Family::V4) {
        *per_peer.entry(r.peer.as_str()).or_default() |= bit(r.path);
    }
    for block in blocks
        .iter()
        .filter(|b| b.node == me && b.cidr.family() == Family::V4)
    {
        let Some(mode) = modes.get(&block.pool) else {
            continue;
        };
        for peer in nodes.iter().filter(|n| n.name != me) {
            let path = match mode.forwarding(
                underlay.contains(peer.ip),
                Family::V4,
                Family::of(peer.ip),
            ) {
                Forwarding::Routed => PeerPath::Routed,
                Forwarding::Vxlan => PeerPath::Vxlan,
                Forwarding::Unreachable => continue,
            };
            *per_peer.entry(peer.name.as_str()).or_default() |= bit(path);
        }
    }
    per_peer.values().any(|&paths| paths == 3)
}

/// Peers and blocks for tests, here and in the agent's decisions.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{BlockInfo, NodeInfo};

    pub fn node(name: &str, ip: &str, mac: u8) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ip: ip.parse().unwrap(),
            vtep_mac: Some([0x02, 0, 0, 0, 0, mac]),
        }
    }

    pub fn block(cidr: &str, node: &str, pool: &str) -> BlockInfo {
        BlockInfo {
            cidr: cidr.parse().unwrap(),
            node: node.into(),
            pool: pool.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{block, node};
    use super::*;

    fn setup() -> (Cidr, Vec<NodeInfo>, Vec<BlockInfo>) {
        let underlay: Cidr = "192.168.10.0/24".parse().unwrap();
        let nodes = vec![
            node("a", "192.168.10.1", 1),
            node("b", "192.168.10.2", 2),
            node("c", "192.168.20.3", 3),
        ];
        let blocks = vec![
            block("10.244.0.0/26", "a", "p"),
            block("10.244.0.64/26", "b", "p"),
            block("10.244.0.128/26", "c", "p"),
            block("fd00::40/122", "b", "p6"),
        ];
        (underlay, nodes, blocks)
    }

    /// The plan from the peers as a list (indexed as a pass indexes them).
    fn plan(
        me: &str,
        underlay: &Cidr,
        nodes: &[NodeInfo],
        blocks: &[BlockInfo],
        modes: &BTreeMap<String, PoolMode>,
    ) -> Plan {
        super::plan(me, underlay, &Nodes::new(nodes.to_vec()), blocks, modes)
    }

    fn modes(m: PoolMode) -> BTreeMap<String, PoolMode> {
        [("p".to_string(), m), ("p6".to_string(), m)]
            .into_iter()
            .collect()
    }

    #[test]
    fn nodes_are_found_by_name_in_any_order_with_the_mac_each_may_have() {
        let (_, n, _) = setup();
        let mut unsorted: Vec<NodeInfo> = n.iter().rev().cloned().collect();
        // c (first now) publishes b's MAC.
        unsorted[0].vtep_mac = unsorted[1].vtep_mac;
        let nodes = Nodes::new(unsorted);
        for peer in &n {
            assert_eq!(nodes.get(&peer.name).map(|p| p.ip), Some(peer.ip));
        }
        assert_eq!(nodes.get("d"), None);
        let mac = |name| nodes.find(name).and_then(|(_, mac)| mac);
        assert_eq!(mac("a"), n[0].vtep_mac);
        assert_eq!(mac("b"), None, "b and c publish one MAC");
        assert_eq!(mac("c"), None);
        assert_eq!(mac("d"), None);
    }

    #[test]
    fn auto_routes_same_subnet_peers_and_tunnels_the_rest() {
        let (u, n, b) = setup();
        let p = plan("a", &u, &n, &b, &modes(PoolMode::Auto));
        let paths: Vec<(String, PeerPath)> = p
            .routes
            .iter()
            .map(|r| (r.dst.to_string(), r.path))
            .collect();
        assert_eq!(
            paths,
            [
                ("10.244.0.64/26".into(), PeerPath::Routed),
                ("10.244.0.128/26".into(), PeerPath::Vxlan),
                ("fd00::40/122".into(), PeerPath::Vxlan),
            ]
        );
        assert_eq!(p.fdb.len(), 2, "one FDB entry per tunnelled peer");
        assert!(p.neighbors.contains_key(&"192.168.20.3".parse().unwrap()));
        assert!(
            p.routes.iter().all(|r| r.peer != "a"),
            "own blocks are never routed"
        );
    }

    #[test]
    fn vxlan_and_routed_modes_are_uniform() {
        let (u, n, b) = setup();
        let v = plan("a", &u, &n, &b, &modes(PoolMode::Vxlan));
        assert!(v.routes.iter().all(|r| r.path == PeerPath::Vxlan));
        let r = plan("a", &u, &n, &b, &modes(PoolMode::Routed));
        assert!(
            r.routes
                .iter()
                .filter(|r| r.dst.family() == Family::V4)
                .all(|r| r.path == PeerPath::Routed)
        );
        assert!(
            r.needs_vxlan(),
            "IPv6 blocks over an IPv4 underlay still need the tunnel"
        );
    }

    #[test]
    fn peers_without_a_vtep_are_reported_not_guessed() {
        let (u, mut n, b) = setup();
        n[2].vtep_mac = None;
        let p = plan("a", &u, &n, &b, &modes(PoolMode::Vxlan));
        assert!(p.routes.iter().all(|r| r.peer != "c"));
        assert_eq!(
            p.problems,
            vec!["node c has not published its VTEP yet".to_string()]
        );
    }

    /// A node publishing a peer's MAC (derived from the peer's name) or the same MAC as
    /// another (cloned images) gets no FDB entry; neither does an all-zero or multicast MAC
    /// (an all-zero FDB entry is the device's default destination).
    #[test]
    fn hijacked_cloned_and_invalid_vtep_macs_are_refused_and_reported() {
        let (u, mut n, b) = setup();
        // Every node of this version publishes its derived MAC.
        for node in &mut n {
            node.vtep_mac = Some(sinew_node_lib::consts::vtep_mac(&node.name));
        }
        let honest = plan("a", &u, &n, &b, &modes(PoolMode::Vxlan));
        assert!(honest.vtep_conflicts.is_empty());
        assert_eq!(honest.fdb.len(), 2);

        // c claims b's MAC: b keeps it, c gets nothing.
        let mut hijack = n.clone();
        hijack[2].vtep_mac = hijack[1].vtep_mac;
        let p = plan("a", &u, &hijack, &b, &modes(PoolMode::Vxlan));
        assert!(p.routes.iter().all(|r| r.peer != "c"), "{:?}", p.routes);
        assert_eq!(p.fdb.values().collect::<Vec<_>>(), vec![&hijack[1].ip]);
        assert_eq!(p.vtep_conflicts.len(), 1, "{:?}", p.vtep_conflicts);

        // Two older agents with one cloned MAC: neither is programmed.
        let mut cloned = n.clone();
        cloned[1].vtep_mac = Some([0x02, 0x42, 0, 0, 0, 9]);
        cloned[2].vtep_mac = Some([0x02, 0x42, 0, 0, 0, 9]);
        let p = plan("a", &u, &cloned, &b, &modes(PoolMode::Vxlan));
        assert!(p.fdb.is_empty(), "{:?}", p.fdb);
        assert!(
            p.vtep_conflicts[0].contains("b, c"),
            "{:?}",
            p.vtep_conflicts
        );

        let mut zero = n.clone();
        zero[2].vtep_mac = Some([0; 6]);
        zero[1].vtep_mac = Some([0x03, 0, 0, 0, 0, 1]);
        let p = plan("a", &u, &zero, &b, &modes(PoolMode::Vxlan));
        assert!(p.fdb.is_empty(), "{:?}", p.fdb);
        assert_eq!(p.vtep_conflicts.len(), 2);
    }

    /// One pool per mode: a's routes are all routed (p on one subnet), but its own block of a
    /// VXLAN pool is tunnelled to by its peers, so replies to a's routed pods can come back
    /// through the tunnel and the other way round.
    #[test]
    fn paths_are_mixed_when_any_direction_takes_the_other_path() {
        let u: Cidr = "192.168.10.0/24".parse().unwrap();
        let nodes = vec![node("a", "192.168.10.1", 1), node("b", "192.168.10.2", 2)];
        let mut blocks = vec![block("10.244.0.64/26", "b", "p")];
        let mut modes = BTreeMap::from([("p".to_string(), PoolMode::Auto)]);
        let p = plan("a", &u, &nodes, &blocks, &modes);
        assert!(
            !paths_mixed("a", &u, &nodes, &blocks, &modes, &p),
            "one mode"
        );
        blocks.push(block("10.245.0.0/26", "a", "zone"));
        modes.insert("zone".into(), PoolMode::Vxlan);
        let p = plan("a", &u, &nodes, &blocks, &modes);
        assert!(p.routes.iter().all(|r| r.path == PeerPath::Routed));
        assert!(paths_mixed("a", &u, &nodes, &blocks, &modes, &p));
        let p = plan("b", &u, &nodes, &blocks, &modes);
        assert!(paths_mixed("b", &u, &nodes, &blocks, &modes, &p));
    }

    /// One `Auto` pool over two subnets routes to the peer beside it and tunnels to the one
    /// behind the router, but each pair's traffic takes one path both ways: nothing to loosen.
    #[test]
    fn one_auto_pool_over_two_subnets_is_not_mixed() {
        let (u, n, b) = setup();
        let modes = modes(PoolMode::Auto);
        let p = plan("a", &u, &n, &b, &modes);
        let paths: BTreeSet<PeerPath> = p.routes.iter().map(|r| r.path).collect();
        assert_eq!(paths.len(), 2, "both paths are in use: {:?}", p.routes);
        assert!(!paths_mixed("a", &u, &n, &b, &modes, &p));
        // A pool of another mode with a block on the routed peer: that pair mixes.
        let mut b = b;
        b.push(block("10.245.0.0/26", "b", "tunnelled"));
        let mut modes = modes;
        modes.insert("tunnelled".into(), PoolMode::Vxlan);
        let p = plan("a", &u, &n, &b, &modes);
        assert!(paths_mixed("a", &u, &n, &b, &modes, &p));
    }

    #[test]
    fn eui64_link_local() {
        assert_eq!(
            link_local_from_mac([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]).to_string(),
            "fe80::42:acff:fe11:2"
        );
    }
}
