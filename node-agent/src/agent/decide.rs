//! The pure decisions of a pass, from what the pass read: how peers are reached (and where
//! that needs loose reverse-path filtering), and the node state the plugin reads. No effect
//! here: `mod.rs` reads the facts, calls these and carries the result out.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};
use sinew_crds::node::{NodeState, PoolState};
use sinew_crds::node::{Problem, ProblemKind};
use sinew_crds::{Cidr, Family, IPPool, PoolMode};
use sinew_node_lib::consts::VXLAN_DEVICE;

use crate::blocks;
use crate::datapath::Underlay;
use crate::peers::{self, BlockInfo};
use crate::tunnel;
use crate::vetting::PoolFacts;

/// One pass's view of pools and blocks, after the trust checks.
pub struct PoolView {
    /// Every pool, as this pass read them (one snapshot for the whole pass).
    pub all: Vec<Arc<IPPool>>,
    /// The pools that select this node.
    pub selected: Vec<Arc<IPPool>>,
    /// Every judged pool, by name.
    pub facts: BTreeMap<String, PoolFacts>,
    /// Every trusted block (kept between passes while blocks and pools are unchanged).
    pub blocks: Arc<[BlockInfo]>,
}

/// How this node reaches its peers' blocks.
#[derive(Debug)]
pub struct Peering {
    /// The mode of every pool that selects any peer (whose blocks are routed here).
    pub modes: BTreeMap<String, PoolMode>,
    pub plan: peers::Plan,
    /// Devices whose strict reverse-path filtering would drop what sinew forwards, with what
    /// it would drop.
    pub loosen: Vec<(String, &'static str)>,
}

/// The mode of every pool that selects any node of `peer_labels` (every Node, unless a peer
/// selector narrows them): every such pool's blocks are routed on every node, whichever nodes
/// the pool selects, so that a pod of one zone's pool is reachable from everywhere.
pub fn peer_modes<L: std::borrow::Borrow<BTreeMap<String, String>>>(
    pools: &[Arc<IPPool>],
    peer_labels: &[L],
) -> BTreeMap<String, PoolMode> {
    pools
        .iter()
        .filter(|p| {
            peer_labels.iter().any(|labels| {
                sinew_crds::selector::matches(p.spec.node_selector.as_ref(), labels.borrow())
            })
        })
        .map(|p| (p.name_any(), p.spec.mode))
        .collect()
}

/// How this node reaches the blocks of pools in `modes` ([`peer_modes`]). With `peers_only`
/// (a peer selector), blocks of Nodes outside it are another network's.
pub fn peering(
    me: &str,
    underlay: &Underlay,
    modes: BTreeMap<String, PoolMode>,
    peers: &peers::Nodes,
    blocks: &[BlockInfo],
    peers_only: bool,
) -> Peering {
    let routed: Cow<[BlockInfo]> = if peers_only {
        blocks
            .iter()
            .filter(|b| peers.get(&b.node).is_some())
            .cloned()
            .collect()
    } else {
        Cow::Borrowed(blocks)
    };
    let plan = peers::plan(me, &underlay.subnet, peers, &routed, &modes);
    let mut loosen = Vec::new();
    if underlay.ip.is_ipv4() {
        loosen.push((
            VXLAN_DEVICE.to_string(),
            "the probes of peers (and traffic from hosts routed elsewhere)",
        ));
        // Pools of different modes make the paths between two nodes asymmetric (the path is
        // the destination pool's): a reply may arrive on the underlay for a source this node
        // tunnels to, which strict reverse-path filtering drops (decision 85).
        if peers::paths_mixed(me, &underlay.subnet, &peers.list, &routed, &modes, &plan) {
            loosen.push((
                underlay.name.clone(),
                "pod traffic of pools in another mode, which returns over the other path",
            ));
        }
    }
    Peering {
        modes,
        plan,
        loosen,
    }
}

/// The node state the plugin reads: for every pool that selects this node, its mode, pod
/// MTU, reserved addresses and this node's blocks; unjudged, conflicted and disabled pools
/// hand out no new addresses.
pub fn node_state(
    me: &str,
    fixed_mtu: Option<u32>,
    underlay: &Underlay,
    pools: &PoolView,
    exhausted: &BTreeSet<String>,
) -> NodeState {
    let family = Family::of(underlay.ip);
    NodeState {
        node: me.to_string(),
        pools: pools
            .selected
            .iter()
            .map(|p| {
                let name = p.name_any();
                let fact = pools.facts.get(&name);
                PoolState {
                    mode: p.spec.mode,
                    mtu: p.spec.mode.pod_mtu(
                        underlay.mtu,
                        family,
                        fact.map_or(family, |f| f.cidr.family()),
                        fixed_mtu,
                    ),
                    disabled: fact.is_none_or(|f| f.unusable.is_some()),
                    reserved: p.spec.reserved.clone(),
                    blocks: blocks::mine(&pools.blocks, me, &name)
                        .into_iter()
                        .map(Cidr::to_string)
                        .collect(),
                    exhausted: exhausted.contains(&name),
                    cidr: p.spec.cidr.clone(),
                    name,
                }
            })
            .collect(),
        ready_boot: None,
    }
}

/// The blocks of this node (`me`) the VXLAN device's address may come from: those of judged,
/// usable pools that are not disabled, each with its pool's CIDR, mode and reserved ranges.
pub fn tunnel_candidates(me: &str, pools: &PoolView) -> Vec<tunnel::Candidate> {
    pools
        .blocks
        .iter()
        .filter(|b| b.node == me)
        .filter_map(|b| {
            let fact = pools.facts.get(&b.pool)?;
            let pool = pools.all.iter().find(|p| p.name_any() == b.pool)?;
            (fact.unusable.is_none() && !pool.spec.disabled).then(|| tunnel::Candidate {
                block: b.cidr,
                pool_cidr: fact.cidr,
                mode: pool.spec.mode,
                reserved: pool
                    .spec
                    .reserved
                    .iter()
                    .filter_map(|r| sinew_crds::cidr::parse_ip_or_cidr(r).ok())
                    .collect(),
            })
        })
        .collect()
}

/// The pools that select this node and hand out addresses (judged, no conflict): a block of
/// any other pool is given back once it is empty.
pub fn usable_selected(pools: &PoolView) -> BTreeSet<String> {
    pools
        .selected
        .iter()
        .map(|p| p.name_any())
        .filter(|name| pools.facts.get(name).is_some_and(|f| f.unusable.is_none()))
        .collect()
}

/// The Events a node's problems call for, against the kinds (and messages) of the last pass: a
/// Warning when a kind appears or its message changes, a Normal `<Kind>Resolved` when it clears.
/// Returns the kinds to remember with the Events.
pub fn problem_events(
    before: &BTreeMap<ProblemKind, String>,
    problems: &[Problem],
) -> (BTreeMap<ProblemKind, String>, Vec<Event>) {
    let now: BTreeMap<ProblemKind, String> = problems
        .iter()
        .map(|p| (p.kind, p.message.clone()))
        .collect();
    let mut events = Vec::new();
    for (kind, message) in &now {
        if before.get(kind) != Some(message) {
            events.push(Event {
                type_: EventType::Warning,
                reason: kind.to_string(),
                note: Some(message.chars().take(1000).collect()),
                action: "Diagnose".into(),
                secondary: None,
            });
        }
    }
    for kind in before.keys().filter(|k| !now.contains_key(k)) {
        events.push(Event {
            type_: EventType::Normal,
            reason: format!("{kind}Resolved"),
            note: Some(format!("{kind} no longer holds on this node")),
            action: "Diagnose".into(),
            secondary: None,
        });
    }
    (now, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::fixtures::{block, node};
    use kube::api::ObjectMeta;
    use sinew_crds::IPPoolSpec;

    fn pool(name: &str, cidr: &str, mode: &str, selector: Option<(&str, &str)>) -> Arc<IPPool> {
        let mut spec = serde_json::json!({"cidr": cidr, "mode": mode});
        if let Some((k, v)) = selector {
            spec["nodeSelector"] = serde_json::json!({"matchLabels": {k: v}});
        }
        let spec: IPPoolSpec = serde_json::from_value(spec).unwrap();
        Arc::new(IPPool {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        })
    }

    /// Pool `name`'s facts: judged, with `unusable` when it hands out nothing.
    fn fact(name: &str, cidr: &str, unusable: Option<&str>) -> (String, PoolFacts) {
        (
            name.to_string(),
            PoolFacts {
                name: name.into(),
                cidr: cidr.parse().unwrap(),
                block_size: 26,
                unusable: unusable.map(str::to_string),
            },
        )
    }

    fn underlay() -> Underlay {
        Underlay {
            index: 2,
            name: "eth0".into(),
            ip: "192.168.10.1".parse().unwrap(),
            subnet: "192.168.10.0/24".parse().unwrap(),
            mtu: 1500,
        }
    }

    /// Modes and plan from the pools, the peers' labels and the peers, as a pass derives them.
    fn peering(
        me: &str,
        underlay: &Underlay,
        pools: &[Arc<IPPool>],
        peer_labels: &[BTreeMap<String, String>],
        peers: &[peers::NodeInfo],
        blocks: &[BlockInfo],
        peers_only: bool,
    ) -> Peering {
        super::peering(
            me,
            underlay,
            peer_modes(pools, peer_labels),
            &peers::Nodes::new(peers.to_vec()),
            blocks,
            peers_only,
        )
    }

    fn labels(zone: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("zone".to_string(), zone.to_string())])
    }

    #[test]
    fn a_zone_pool_is_routed_on_nodes_it_does_not_select() {
        let pools = [
            pool("a", "10.1.0.0/16", "VXLAN", Some(("zone", "a"))),
            pool("nowhere", "10.9.0.0/16", "VXLAN", Some(("zone", "z"))),
        ];
        let peers = [node("me", "192.168.10.1", 1), node("b", "192.168.10.2", 2)];
        let blocks = [block("10.1.0.0/26", "b", "a")];
        // "me" is in zone b: pool "a" does not select it, but selects a peer.
        let p = peering(
            "me",
            &underlay(),
            &pools,
            &[labels("b"), labels("a")],
            &peers,
            &blocks,
            false,
        );
        assert_eq!(
            p.modes,
            BTreeMap::from([("a".to_string(), PoolMode::Vxlan)]),
            "a pool that selects no node routes nothing"
        );
        assert_eq!(p.plan.routes.len(), 1);
        assert_eq!(p.plan.routes[0].dst, "10.1.0.0/26".parse().unwrap());
        assert_eq!(p.plan.routes[0].path, peers::PeerPath::Vxlan);
    }

    #[test]
    fn blocks_of_nodes_outside_the_peer_selector_are_not_routed() {
        let pools = [pool("a", "10.1.0.0/16", "Routed", None)];
        let peers = [node("me", "192.168.10.1", 1), node("b", "192.168.10.2", 2)];
        let blocks = [
            block("10.1.0.0/26", "b", "a"),
            block("10.1.0.64/26", "elsewhere", "a"),
        ];
        let args = |only| {
            peering(
                "me",
                &underlay(),
                &pools,
                &[labels("a")],
                &peers,
                &blocks,
                only,
            )
        };
        let narrowed = args(true);
        assert_eq!(narrowed.plan.routes.len(), 1);
        assert!(
            narrowed.plan.problems.is_empty(),
            "{:?}",
            narrowed.plan.problems
        );
        assert!(
            !args(false).plan.problems.is_empty(),
            "without a selector, a block of an unknown node is a problem"
        );
    }

    #[test]
    fn reverse_path_filtering_is_loosened_on_the_underlay_only_where_paths_mix() {
        let peers = [node("me", "192.168.10.1", 1), node("b", "192.168.10.2", 2)];
        let blocks = [
            block("10.1.0.0/26", "b", "routed"),
            block("10.2.0.0/26", "b", "vxlan"),
        ];
        let devices = |pools: &[Arc<IPPool>]| -> Vec<String> {
            peering(
                "me",
                &underlay(),
                pools,
                &[labels("a")],
                &peers,
                &blocks,
                false,
            )
            .loosen
            .into_iter()
            .map(|(d, _)| d)
            .collect()
        };
        let one_mode = [pool("routed", "10.1.0.0/16", "Routed", None)];
        assert_eq!(devices(&one_mode), ["sinew.vxlan"]);
        let mixed = [
            pool("routed", "10.1.0.0/16", "Routed", None),
            pool("vxlan", "10.2.0.0/16", "VXLAN", None),
        ];
        assert_eq!(devices(&mixed), ["sinew.vxlan", "eth0"]);
        let v6 = Underlay {
            ip: "fd00::1".parse().unwrap(),
            subnet: "fd00::/64".parse().unwrap(),
            ..underlay()
        };
        assert!(
            peering("me", &v6, &mixed, &[labels("a")], &peers, &blocks, false)
                .loosen
                .is_empty(),
            "IPv6 has no reverse-path filter"
        );
    }

    #[test]
    fn node_state_hands_out_only_judged_usable_pools() {
        let selected = vec![
            pool("usable", "10.1.0.0/16", "VXLAN", None),
            pool("conflicted", "10.2.0.0/16", "Routed", None),
            pool("unjudged", "10.3.0.0/16", "Routed", None),
        ];
        let view = PoolView {
            all: selected.clone(),
            selected,
            facts: BTreeMap::from([
                fact("usable", "10.1.0.0/16", None),
                fact("conflicted", "10.2.0.0/16", Some("overlaps pool usable")),
            ]),
            blocks: vec![
                block("10.1.0.64/26", "me", "usable"),
                block("10.1.0.0/26", "me", "usable"),
                block("10.1.0.128/26", "b", "usable"),
            ]
            .into(),
        };
        let exhausted = BTreeSet::from(["usable".to_string()]);
        let st = node_state("me", None, &underlay(), &view, &exhausted);
        assert_eq!(st.node, "me");
        let usable = &st.pools[0];
        assert!(!usable.disabled);
        assert!(usable.exhausted);
        assert_eq!(
            usable.blocks,
            ["10.1.0.0/26", "10.1.0.64/26"],
            "own blocks, sorted"
        );
        assert_eq!(usable.mtu, 1450, "VXLAN over IPv4 costs 50 bytes");
        assert!(st.pools[1].disabled && st.pools[2].disabled);
        assert_eq!(st.pools[1].mtu, 1500);
        assert_eq!(
            node_state("me", Some(1400), &underlay(), &view, &BTreeSet::new()).pools[0].mtu,
            1400,
            "a fixed MTU wins"
        );
    }

    #[test]
    fn the_tunnel_address_and_kept_blocks_come_only_from_usable_pools() {
        let mut disabled = (*pool("disabled", "10.4.0.0/16", "VXLAN", None)).clone();
        disabled.spec.disabled = true;
        let mut reserving = (*pool("usable", "10.1.0.0/16", "Auto", None)).clone();
        reserving.spec.reserved = vec!["10.1.0.1".into(), "10.1.0.8/29".into(), "bad".into()];
        let selected = vec![
            Arc::new(reserving),
            pool("conflicted", "10.2.0.0/16", "VXLAN", None),
            pool("unjudged", "10.3.0.0/16", "VXLAN", None),
            Arc::new(disabled),
        ];
        let view = PoolView {
            all: selected.clone(),
            selected: selected[..3].to_vec(),
            facts: BTreeMap::from([
                fact("usable", "10.1.0.0/16", None),
                fact("conflicted", "10.2.0.0/16", Some("overlaps pool usable")),
                fact("disabled", "10.4.0.0/16", None),
            ]),
            blocks: vec![
                block("10.1.0.0/26", "me", "usable"),
                block("10.1.0.64/26", "b", "usable"),
                block("10.2.0.0/26", "me", "conflicted"),
                block("10.3.0.0/26", "me", "unjudged"),
                block("10.4.0.0/26", "me", "disabled"),
            ]
            .into(),
        };
        let candidates = tunnel_candidates("me", &view);
        assert_eq!(candidates.len(), 1, "{candidates:?}");
        let c = &candidates[0];
        assert_eq!(c.block, "10.1.0.0/26".parse().unwrap());
        assert_eq!(
            (c.pool_cidr, c.mode),
            ("10.1.0.0/16".parse().unwrap(), PoolMode::Auto)
        );
        assert_eq!(
            c.reserved,
            [
                "10.1.0.1/32".parse().unwrap(),
                "10.1.0.8/29".parse().unwrap()
            ],
            "what cannot be read reserves nothing"
        );
        assert_eq!(
            usable_selected(&view),
            BTreeSet::from(["usable".to_string()]),
            "a conflicted, an unjudged and an unselected pool's blocks are given back"
        );
    }

    #[test]
    fn events_follow_problems_appearing_changing_and_clearing() {
        let reasons = |events: &[Event]| -> Vec<(String, bool)> {
            events
                .iter()
                .map(|e| (e.reason.clone(), e.type_ == EventType::Warning))
                .collect()
        };
        let off = Problem::new(ProblemKind::ForwardingOff, "net.ipv4.ip_forward is 0");
        let (kinds, events) = problem_events(&BTreeMap::new(), std::slice::from_ref(&off));
        assert_eq!(reasons(&events), [("ForwardingOff".to_string(), true)]);
        let (kinds, events) = problem_events(&kinds, std::slice::from_ref(&off));
        assert!(events.is_empty(), "said once while it holds");
        let worse = Problem::new(
            ProblemKind::ForwardingOff,
            "net.ipv6.conf.all.forwarding is 0",
        );
        let (kinds, events) = problem_events(&kinds, &[worse]);
        assert_eq!(
            reasons(&events),
            [("ForwardingOff".to_string(), true)],
            "a new message is a new Warning"
        );
        let (kinds, events) = problem_events(&kinds, &[]);
        assert_eq!(
            reasons(&events),
            [("ForwardingOffResolved".to_string(), false)]
        );
        assert!(kinds.is_empty());
        let long = Problem::new(ProblemKind::RouteConflict, "x".repeat(5000));
        let (_, events) = problem_events(&kinds, &[long]);
        assert_eq!(
            events[0].note.as_ref().map(String::len),
            Some(1000),
            "notes are bounded"
        );
    }
}
