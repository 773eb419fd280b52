//! The reference evaluator: the Kubernetes NetworkPolicy v1 rules written down as directly as
//! possible, one packet at a time. It is the oracle the compiled plan is tested against, and
//! what the trace uses to name the peer that matched; it is never used to program a node.

use std::net::IpAddr;

use crate::selector::matches;
use crate::view::{
    Direction, NamespaceScope, ObjectKey, Peer, PodView, PolicyView, PortMatch, PortView, Protocol,
};
use crate::world::World;

/// A packet as policy sees it (after Service translation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    /// The destination port (ignored for protocols without ports).
    pub port: u16,
}

/// Which part of which policy allowed a packet: the rule of the direction, the peer (`None`:
/// the rule has no peers, so every peer) and the port entry (`None`: no ports, so all traffic).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub policy: ObjectKey,
    pub rule: usize,
    pub peer: Option<usize>,
    pub port: Option<usize>,
}

/// The verdict in one direction at one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// No policy selects the pod for this direction: everything passes.
    NotIsolated,
    /// Allowed, by each of these (sorted, at least one).
    Allowed(Vec<Grant>),
    /// Isolated by these policies (sorted), and none of their rules allows the packet.
    Denied(Vec<ObjectKey>),
}

impl Judgement {
    pub fn passes(&self) -> bool {
        !matches!(self, Judgement::Denied(_))
    }
}

/// Both verdicts on a packet: egress at the source pod and ingress at the destination pod,
/// each only where that address is a pod policy applies to (`None` otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub egress: Option<(ObjectKey, Judgement)>,
    pub ingress: Option<(ObjectKey, Judgement)>,
}

impl Decision {
    pub fn passes(&self) -> bool {
        [&self.egress, &self.ingress]
            .into_iter()
            .flatten()
            .all(|(_, j)| j.passes())
    }
}

/// The pod policy applies to at `addr`, if any (the first by name if several claim it).
pub fn pod_at(world: &World, addr: IpAddr) -> Option<&PodView> {
    world.live_pods_at(addr).next()
}

pub fn decide(world: &World, packet: &Packet) -> Decision {
    let at = |addr, direction, peer| {
        pod_at(world, addr).map(|pod| {
            (
                pod.key(),
                judge(world, pod, direction, peer, packet.protocol, packet.port),
            )
        })
    };
    Decision {
        egress: at(packet.src, Direction::Egress, packet.dst),
        ingress: at(packet.dst, Direction::Ingress, packet.src),
    }
}

/// Whether `policy` selects `pod` for `direction`: same namespace, selector matches, the
/// policy isolates that direction, and policy applies to the pod at all.
pub fn selects(policy: &PolicyView, pod: &PodView, direction: Direction) -> bool {
    pod.is_policy_pod()
        && policy.namespace == pod.namespace
        && policy.isolates(direction)
        && matches(Some(&policy.pod_selector), &pod.labels)
}

/// The verdict at `pod` for traffic in `direction` with the other end at `peer`.
pub fn judge(
    world: &World,
    pod: &PodView,
    direction: Direction,
    peer: IpAddr,
    protocol: Protocol,
    port: u16,
) -> Judgement {
    let isolating: Vec<&PolicyView> = world
        .policies()
        .filter(|p| selects(p, pod, direction))
        .collect();
    if isolating.is_empty() {
        return Judgement::NotIsolated;
    }
    let mut grants = Vec::new();
    for policy in &isolating {
        for (r, rule) in policy.rules(direction).iter().enumerate() {
            let peers: Vec<Option<usize>> = if rule.peers.is_empty() {
                vec![None]
            } else {
                (0..rule.peers.len())
                    .filter(|&i| peer_admits(world, policy, &rule.peers[i], peer))
                    .map(Some)
                    .collect()
            };
            let ports: Vec<Option<usize>> = if rule.ports.is_empty() {
                vec![None]
            } else {
                (0..rule.ports.len())
                    .filter(|&i| {
                        port_admits(world, pod, direction, peer, &rule.ports[i], protocol, port)
                    })
                    .map(Some)
                    .collect()
            };
            for pe in &peers {
                for po in &ports {
                    grants.push(Grant {
                        policy: policy.key(),
                        rule: r,
                        peer: *pe,
                        port: *po,
                    });
                }
            }
        }
    }
    if grants.is_empty() {
        Judgement::Denied(isolating.iter().map(|p| p.key()).collect())
    } else {
        grants.sort();
        Judgement::Allowed(grants)
    }
}

/// Whether `peer` of a rule of `policy` covers the address `addr`.
pub fn peer_admits(world: &World, policy: &PolicyView, peer: &Peer, addr: IpAddr) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => world.live_pods_at(addr).any(|x| {
            let ns_ok = match namespaces {
                NamespaceScope::Own => x.namespace == policy.namespace,
                NamespaceScope::Selector(s) => {
                    matches(Some(s), world.namespace_labels(&x.namespace))
                }
            };
            ns_ok && matches(Some(pods), &x.labels)
        }),
        Peer::Block { cidr, except } => {
            cidr.contains(addr) && !except.iter().any(|e| e.contains(addr))
        }
        Peer::Invalid(_) => false,
    }
}

/// Whether a port entry covers the packet. A named port is looked up on the destination pod:
/// the selected pod itself for ingress, the pod(s) at the peer address for egress (a named
/// port never matches an address that is not a pod).
pub fn port_admits(
    world: &World,
    pod: &PodView,
    direction: Direction,
    peer: IpAddr,
    entry: &PortView,
    protocol: Protocol,
    port: u16,
) -> bool {
    if entry.protocol != protocol {
        return false;
    }
    match &entry.port {
        PortMatch::All => true,
        PortMatch::Range { lo, hi } => (*lo..=*hi).contains(&port),
        PortMatch::Named(name) => match direction {
            Direction::Ingress => pod.resolve(name, protocol).any(|p| p == port),
            Direction::Egress => world
                .live_pods_at(peer)
                .any(|x| x.resolve(name, protocol).any(|p| p == port)),
        },
        PortMatch::Invalid(_) => false,
    }
}
