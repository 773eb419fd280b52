//! The compiler: (world, node) -> the node's [`Plan`] (decision 91).
//!
//! Per direction, each pod of the node that policy applies to is keyed by the policies that
//! isolate it (and, for ingress, its named ports when those policies use port names: they
//! resolve on the pod itself). Each distinct key is compiled once: every (rule, peer, port
//! entry) of its policies becomes items (address range x ports), cut into disjoint sorted
//! elements per family. Pods whose compiled bodies are equal share one class.
//!
//! Fail closed: a key whose items or elements exceed [`Limits`] compiles to a class with no
//! elements (deny-all in that direction) and the plan carries a [`Problem`] naming its
//! policies; a class is never half a policy. Deterministic: the world is keyed by name, so
//! the same world gives the same plan whatever order its objects arrived in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sinew_core::{Cidr, Family};

use crate::disjoint::{Interner, Item, Piece, PortKey, disjoint};
use crate::plan::{
    AddrRange, AnyElement, Class, Elements, Limits, Plan, PortElement, Problem, Reason,
};
use crate::selector::matches;
use crate::semantics::selects;
use crate::view::{
    Direction, NamedPort, NamespaceScope, ObjectKey, Peer, PodView, PolicyView, PortMatch,
};
use crate::world::World;

pub fn compile(world: &World, node: &str) -> Plan {
    compile_with(world, node, &Limits::default())
}

pub fn compile_with(world: &World, node: &str, limits: &Limits) -> Plan {
    let mut c = Compiler {
        world,
        limits,
        policies: world.policies().collect(),
        pod_namespaces: world.pod_namespaces(),
        peers: HashMap::new(),
    };
    let node_pods: Vec<&PodView> = world
        .pods()
        .filter(|p| p.is_policy_pod() && p.node.as_deref() == Some(node))
        .collect();
    let ingress = c.direction(&node_pods, Direction::Ingress);
    let egress = c.direction(&node_pods, Direction::Egress);

    // Renumber policies to the ones this plan names, keeping their order.
    let mut used = BTreeSet::new();
    for (body, _) in ingress.iter().chain(&egress) {
        used.extend(body.policies.iter().copied());
        used.extend(body.reasons.iter().flatten().map(|r| r.policy));
    }
    let renumber: HashMap<u32, u32> = used
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, i as u32))
        .collect();
    let policies: Vec<ObjectKey> = used
        .iter()
        .filter_map(|p| c.policies.get(*p as usize).map(|p| p.key()))
        .collect();
    let mut problems = Vec::new();
    let mut finish = |direction, groups: Vec<(Body, Vec<ObjectKey>)>| {
        let mut classes: Vec<Class> = groups
            .into_iter()
            .map(|(body, pods)| {
                if let Some(message) = &body.failure {
                    problems.push(Problem {
                        direction,
                        pods: pods.clone(),
                        policies: body
                            .policies
                            .iter()
                            .filter_map(|p| c.policies.get(*p as usize).map(|p| p.key()))
                            .collect(),
                        message: message.clone(),
                    });
                }
                body.into_class(pods, &renumber)
            })
            .collect();
        classes.sort_by(|a, b| a.pods.first().cmp(&b.pods.first()));
        classes
    };
    let ingress = finish(Direction::Ingress, ingress);
    let egress = finish(Direction::Egress, egress);
    problems.sort_by(|a, b| (a.direction, &a.pods).cmp(&(b.direction, &b.pods)));
    Plan {
        node: node.to_string(),
        policies,
        ingress,
        egress,
        problems,
    }
}

/// A class before renumbering: policies and reasons index the world's policies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Body {
    policies: Vec<u32>,
    v4: Elements,
    v6: Elements,
    reasons: Vec<Vec<Reason>>,
    failure: Option<String>,
}

impl Body {
    fn into_class(self, pods: Vec<ObjectKey>, renumber: &HashMap<u32, u32>) -> Class {
        let mut reasons = self.reasons;
        for r in reasons.iter_mut().flatten() {
            if let Some(n) = renumber.get(&r.policy) {
                r.policy = *n;
            }
        }
        Class {
            pods,
            policies: self
                .policies
                .iter()
                .filter_map(|p| renumber.get(p).copied())
                .collect(),
            v4: self.v4,
            v6: self.v6,
            reasons,
            failed_closed: self.failure.is_some(),
        }
    }
}

/// IPv4's, then IPv6's.
type PerFamily<T> = (T, T);

/// What makes two pods compile alike in a direction.
type Key = (Vec<u32>, Vec<NamedPort>);

/// Address ranges per family, sorted and merged.
#[derive(Debug, Default)]
struct Ranges {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

struct Compiler<'a> {
    world: &'a World,
    limits: &'a Limits,
    /// The world's policies in name order; a policy's position is its number.
    policies: Vec<&'a PolicyView>,
    pod_namespaces: Vec<&'a str>,
    /// Addresses of each (policy, direction, rule, peer), computed once per compile.
    peers: HashMap<(u32, Direction, usize, usize), Ranges>,
}

fn top(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

fn value(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn address(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn cidr_range(c: &Cidr) -> (u128, u128) {
    (value(c.network()), value(c.last()))
}

/// Sorted, merged ranges from single addresses.
fn ranges_of(mut addrs: Vec<IpAddr>) -> Ranges {
    addrs.sort();
    addrs.dedup();
    let mut r = Ranges::default();
    for a in addrs {
        let list = match a {
            IpAddr::V4(_) => &mut r.v4,
            IpAddr::V6(_) => &mut r.v6,
        };
        let v = value(a);
        match list.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(v) => *hi = v,
            _ => list.push((v, v)),
        }
    }
    r
}

/// `cidr` minus `except`, as sorted disjoint ranges.
fn block_ranges(cidr: &Cidr, except: &[Cidr]) -> Ranges {
    let (lo, hi) = cidr_range(cidr);
    let mut cuts: Vec<(u128, u128)> = except
        .iter()
        .filter(|e| e.family() == cidr.family())
        .map(cidr_range)
        .filter(|(elo, ehi)| *ehi >= lo && *elo <= hi)
        .collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut next = Some(lo);
    for (elo, ehi) in cuts {
        let Some(n) = next else { break };
        if elo > n {
            out.push((n, elo - 1));
        }
        if ehi >= n {
            next = ehi.checked_add(1).filter(|x| *x <= hi);
        }
    }
    if let Some(n) = next {
        out.push((n, hi));
    }
    let mut r = Ranges::default();
    match cidr.family() {
        Family::V4 => r.v4 = out,
        Family::V6 => r.v6 = out,
    }
    r
}

impl<'a> Compiler<'a> {
    fn index_of(&self, policy: &PolicyView) -> Option<u32> {
        let key = (policy.namespace.as_str(), policy.name.as_str());
        self.policies
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&key))
            .ok()
            .map(|i| i as u32)
    }

    /// The node's pods grouped into class bodies for one direction (each distinct key
    /// compiled once; keys whose bodies come out equal share a class).
    fn direction(
        &mut self,
        node_pods: &[&'a PodView],
        direction: Direction,
    ) -> Vec<(Body, Vec<ObjectKey>)> {
        let mut by_key: BTreeMap<Key, usize> = BTreeMap::new();
        let mut bodies: Vec<(Body, Vec<ObjectKey>)> = Vec::new();
        for pod in node_pods {
            let selecting: Vec<u32> = self
                .world
                .policies_in(&pod.namespace)
                .filter(|p| selects(p, pod, direction))
                .filter_map(|p| self.index_of(p))
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let uses_names = direction == Direction::Ingress
                && selecting.iter().any(|p| {
                    self.policies[*p as usize].ingress.iter().any(|r| {
                        r.ports
                            .iter()
                            .any(|e| matches!(e.port, PortMatch::Named(_)))
                    })
                });
            let named = if uses_names {
                pod.named_ports.clone()
            } else {
                Vec::new()
            };
            let key = (selecting, named);
            let i = match by_key.get(&key) {
                Some(i) => *i,
                None => {
                    bodies.push((self.body(&key, direction), Vec::new()));
                    by_key.insert(key, bodies.len() - 1);
                    bodies.len() - 1
                }
            };
            bodies[i].1.push(pod.key());
        }
        let mut merged: BTreeMap<Body, Vec<ObjectKey>> = BTreeMap::new();
        for (body, pods) in bodies {
            merged.entry(body).or_default().extend(pods);
        }
        merged
            .into_iter()
            .map(|(body, mut pods)| {
                pods.sort();
                (body, pods)
            })
            .collect()
    }

    fn body(&mut self, key: &Key, direction: Direction) -> Body {
        let (selecting, named) = key;
        let failed = |message: String| Body {
            policies: selecting.clone(),
            v4: Elements::default(),
            v6: Elements::default(),
            reasons: Vec::new(),
            failure: Some(message),
        };
        let items = match self.items(selecting, named, direction) {
            Ok(items) => items,
            Err(n) => {
                return failed(format!(
                    "more than {n} rule items (peers x ports); compiled as deny-all"
                ));
            }
        };
        let max = self.limits.elements_per_class;
        let (mut v4, mut v6) = (Elements::default(), Elements::default());
        let mut reasons = Interner::default();
        let mut total = 0usize;
        for (family, items, els) in [
            (Family::V4, &items.0, &mut v4),
            (Family::V6, &items.1, &mut v6),
        ] {
            let (any, ports): (Vec<Item>, Vec<Item>) =
                items.iter().partition(|it| it.port.is_none());
            for (list, is_any) in [(any, true), (ports, false)] {
                let Ok(pieces) =
                    disjoint(&list, top(family), max.saturating_sub(total), &mut reasons)
                else {
                    return failed(format!(
                        "more than {max} set elements; compiled as deny-all"
                    ));
                };
                total += pieces.len();
                place(family, pieces, is_any, els);
            }
        }
        Body {
            policies: selecting.clone(),
            v4,
            v6,
            reasons: reasons.sets,
            failure: None,
        }
    }

    /// Every (rule, peer, port entry) of the policies as items, per family; `Err(limit)`
    /// past the item limit.
    fn items(
        &mut self,
        selecting: &[u32],
        named: &[NamedPort],
        direction: Direction,
    ) -> Result<PerFamily<Vec<Item>>, usize> {
        let limit = self.limits.items_per_class();
        let (mut v4, mut v6): (Vec<Item>, Vec<Item>) = (Vec::new(), Vec::new());
        let none = Ranges::default();
        let every = Ranges {
            v4: vec![(0, top(Family::V4))],
            v6: vec![(0, top(Family::V6))],
        };
        for &p in selecting {
            let policy = self.policies[p as usize];
            for (r, rule) in policy.rules(direction).iter().enumerate() {
                let peer_ids: Vec<Option<usize>> = if rule.peers.is_empty() {
                    vec![None]
                } else {
                    (0..rule.peers.len()).map(Some).collect()
                };
                for peer in peer_ids {
                    if let Some(i) = peer {
                        self.peer_ranges(p, direction, r, i);
                    }
                    let ranges = match peer {
                        Some(i) => self.peers.get(&(p, direction, r, i)).unwrap_or(&none),
                        None => &every,
                    };
                    let reason = |port: Option<usize>| Reason {
                        policy: p,
                        rule: r as u32,
                        peer: peer.map(|i| i as u32),
                        port: port.map(|i| i as u32),
                    };
                    let mut push = |family: Family, lo, hi, port: PortKey, reason| {
                        let list = match family {
                            Family::V4 => &mut v4,
                            Family::V6 => &mut v6,
                        };
                        list.push(Item {
                            lo,
                            hi,
                            port,
                            reason,
                        });
                        if v4.len() + v6.len() > limit {
                            return Err(limit);
                        }
                        Ok(())
                    };
                    let fams = [(Family::V4, &ranges.v4), (Family::V6, &ranges.v6)];
                    if rule.ports.is_empty() {
                        for (family, list) in fams {
                            for &(lo, hi) in list {
                                push(family, lo, hi, None, reason(None))?;
                            }
                        }
                        continue;
                    }
                    for (j, entry) in rule.ports.iter().enumerate() {
                        let proto = entry.protocol;
                        let fixed: Vec<(u16, u16)> = match &entry.port {
                            PortMatch::All => vec![(0, u16::MAX)],
                            PortMatch::Range { lo, hi } if lo <= hi => vec![(*lo, *hi)],
                            PortMatch::Range { .. } | PortMatch::Invalid(_) => vec![],
                            PortMatch::Named(name) if direction == Direction::Ingress => named
                                .iter()
                                .filter(|n| &n.name == name && n.protocol == proto)
                                .map(|n| (n.port, n.port))
                                .collect(),
                            PortMatch::Named(name) => {
                                // Egress: resolved on each pod in the peer's addresses.
                                for (family, list) in fams {
                                    for &(lo, hi) in list {
                                        let (a, b) = (address(family, lo), address(family, hi));
                                        for (ip, pod) in self.world.live_addresses_in(a, b) {
                                            for port in pod.resolve(name, proto) {
                                                let v = value(ip);
                                                let key = Some((proto, port, port));
                                                push(family, v, v, key, reason(Some(j)))?;
                                            }
                                        }
                                    }
                                }
                                continue;
                            }
                        };
                        for (family, list) in fams {
                            for &(lo, hi) in list {
                                for &(plo, phi) in &fixed {
                                    push(family, lo, hi, Some((proto, plo, phi)), reason(Some(j)))?;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((v4, v6))
    }

    /// Computes (once) the addresses of peer `i` of rule `r`.
    fn peer_ranges(&mut self, p: u32, direction: Direction, r: usize, i: usize) {
        let key = (p, direction, r, i);
        if self.peers.contains_key(&key) {
            return;
        }
        let policy = self.policies[p as usize];
        let ranges = match &policy.rules(direction)[r].peers[i] {
            Peer::Block { cidr, except } => block_ranges(cidr, except),
            Peer::Invalid(_) => Ranges::default(),
            Peer::Pods { namespaces, pods } => {
                let nss: Vec<&str> = match namespaces {
                    NamespaceScope::Own => vec![policy.namespace.as_str()],
                    NamespaceScope::Selector(s) => self
                        .pod_namespaces
                        .iter()
                        .copied()
                        .filter(|ns| matches(Some(s), self.world.namespace_labels(ns)))
                        .collect(),
                };
                let addrs = nss
                    .iter()
                    .flat_map(|ns| self.world.pods_in(ns))
                    .filter(|x| x.is_policy_pod() && matches(Some(pods), &x.labels))
                    .flat_map(|x| x.ips.iter().copied())
                    .collect();
                ranges_of(addrs)
            }
        };
        self.peers.insert(key, ranges);
    }
}

fn place(family: Family, pieces: Vec<Piece>, is_any: bool, els: &mut Elements) {
    for piece in pieces {
        let addrs = AddrRange {
            start: address(family, piece.lo),
            end: address(family, piece.hi),
        };
        match (is_any, piece.port) {
            (true, _) | (false, None) => els.any.push(AnyElement {
                addrs,
                reasons: piece.reasons,
            }),
            (false, Some((protocol, lo, hi))) => els.ports.push(PortElement {
                addrs,
                protocol,
                ports: (lo, hi),
                reasons: piece.reasons,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn v4(s: &str) -> u128 {
        value(s.parse().unwrap())
    }

    #[test]
    fn an_ip_block_minus_its_excepts() {
        // (cidr, excepts, remaining ranges)
        type Row<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
        let table: [Row; 6] = [
            ("10.0.0.0/29", &[], &[("10.0.0.0", "10.0.0.7")]),
            (
                "10.0.0.0/29",
                &["10.0.0.1/32", "10.0.0.4/31"],
                &[
                    ("10.0.0.0", "10.0.0.0"),
                    ("10.0.0.2", "10.0.0.3"),
                    ("10.0.0.6", "10.0.0.7"),
                ],
            ),
            // Touching and overlapping excepts, one at the very end.
            (
                "10.0.0.0/29",
                &["10.0.0.2/31", "10.0.0.2/32", "10.0.0.4/32", "10.0.0.7/32"],
                &[("10.0.0.0", "10.0.0.1"), ("10.0.0.5", "10.0.0.6")],
            ),
            ("10.0.0.0/29", &["10.0.0.0/29"], &[]),
            // Excepts outside the block or of the other family change nothing.
            (
                "10.0.0.0/30",
                &["10.0.1.0/24", "fd00::/64"],
                &[("10.0.0.0", "10.0.0.3")],
            ),
            (
                "0.0.0.0/0",
                &["0.0.0.0/8"],
                &[("1.0.0.0", "255.255.255.255")],
            ),
        ];
        for (block, except, want) in table {
            let except: Vec<Cidr> = except.iter().map(|e| cidr(e)).collect();
            let got = block_ranges(&cidr(block), &except);
            let want: Vec<(u128, u128)> = want.iter().map(|(a, b)| (v4(a), v4(b))).collect();
            assert_eq!(got.v4, want, "{block} except {except:?}");
            assert!(got.v6.is_empty());
        }
        let got = block_ranges(&cidr("::/0"), &[cidr("::/1")]);
        assert_eq!(got.v6, [(1u128 << 127, u128::MAX)]);
    }

    #[test]
    fn addresses_join_into_ranges_only_when_adjacent() {
        let ips = [
            "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.9", "fd00::1", "10.0.0.2",
        ];
        let got = ranges_of(ips.iter().map(|i| i.parse().unwrap()).collect());
        assert_eq!(
            got.v4,
            [
                (v4("10.0.0.1"), v4("10.0.0.3")),
                (v4("10.0.0.9"), v4("10.0.0.9"))
            ]
        );
        let one = value("fd00::1".parse().unwrap());
        assert_eq!(got.v6, [(one, one)]);
    }
}
