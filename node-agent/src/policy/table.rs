//! The node's policy table from its compiled plan (pure): each class of the plan becomes a
//! chain and its sets (decision 91), each local pod interface a member programmed with its
//! classes. Element comments name the policy, the rule and the peer that allowed them.

use std::collections::BTreeMap;

use sinew_node_lib::hostport::Protocol as NftProtocol;
use sinew_node_lib::nft::policy::{self, Class, Direction as TableDirection, Member};
use sinew_node_lib::nft::{Element, Table, Value};
use sinew_policy::explain::describe_peer;
use sinew_policy::plan::{AddrRange, Class as PlanClass, Elements, Reason};
use sinew_policy::{Direction, ObjectKey, Plan, Protocol, World};

/// A pod interface on this node (the host end of its veth).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodInterface {
    pub interface: String,
    /// The pod it belongs to; `None` for an interface no Kubernetes pod owns (a runtime that
    /// passed no pod name): policy never selects it.
    pub pod: Option<ObjectKey>,
}

/// The table for `plan`: `interfaces` are programmed, each with its pod's classes; an
/// interface of a pod policy has not seen yet must be left out (it stays held).
pub fn render(plan: &Plan, world: &World, interfaces: &[PodInterface], log: bool) -> Table {
    let mut classes = Vec::new();
    let mut chain_of: BTreeMap<(Direction, &ObjectKey), String> = BTreeMap::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        for (i, class) in plan.classes(direction).iter().enumerate() {
            let name = format!("{}-{i}", table_direction(direction).name());
            for pod in &class.pods {
                chain_of.insert((direction, pod), name.clone());
            }
            let policies: Vec<String> = class
                .policies
                .iter()
                .filter_map(|p| plan.policy(*p).map(ToString::to_string))
                .collect();
            let pods: Vec<String> = class.pods.iter().map(ToString::to_string).collect();
            let comment = format!(
                "pods {}; policies {}{}",
                some_of(&pods),
                some_of(&policies),
                if class.failed_closed {
                    " (over the element limit: denies all)"
                } else {
                    ""
                }
            );
            let (ports4, any4) = elements(&class.v4, class, plan, world, direction);
            let (ports6, any6) = elements(&class.v6, class, plan, world, direction);
            classes.push(Class {
                direction: table_direction(direction),
                name,
                comment,
                policies: policies.join(","),
                ports4,
                any4,
                ports6,
                any6,
            });
        }
    }
    let members: Vec<Member> = interfaces
        .iter()
        .map(|i| Member {
            interface: i.interface.clone(),
            pod: i.pod.as_ref().map(ToString::to_string).unwrap_or_default(),
            ingress: i
                .pod
                .as_ref()
                .and_then(|p| chain_of.get(&(Direction::Ingress, p)).cloned()),
            egress: i
                .pod
                .as_ref()
                .and_then(|p| chain_of.get(&(Direction::Egress, p)).cloned()),
        })
        .collect();
    policy::table(&classes, &members, log)
}

fn table_direction(direction: Direction) -> TableDirection {
    match direction {
        Direction::Ingress => TableDirection::Ingress,
        Direction::Egress => TableDirection::Egress,
    }
}

/// The first few names, then how many more (a comment holds 128 bytes).
fn some_of(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// One family's elements as the two sets hold them.
fn elements(
    of: &Elements,
    class: &PlanClass,
    plan: &Plan,
    world: &World,
    direction: Direction,
) -> (Vec<Element>, Vec<Element>) {
    let ports = of
        .ports
        .iter()
        .filter_map(|e| {
            let protocol = nft_protocol(e.protocol)?;
            let ports = if e.ports.0 == e.ports.1 {
                Value::Port(e.ports.0)
            } else {
                Value::port_range(e.ports.0, e.ports.1)
            };
            Some(with_reason(
                Element::key([addresses(e.addrs), Value::Proto(protocol), ports]),
                class.reasons(e.reasons),
                plan,
                world,
                direction,
            ))
        })
        .collect();
    let any = of
        .any
        .iter()
        .map(|e| {
            with_reason(
                Element::key([addresses(e.addrs)]),
                class.reasons(e.reasons),
                plan,
                world,
                direction,
            )
        })
        .collect();
    (ports, any)
}

fn addresses(r: AddrRange) -> Value {
    if r.start == r.end {
        Value::Addr(r.start)
    } else {
        Value::addr_range(r.start, r.end)
    }
}

/// Rules name TCP, UDP and SCTP only; the compiler never puts another protocol in a set.
fn nft_protocol(p: Protocol) -> Option<NftProtocol> {
    match p {
        Protocol::Tcp => Some(NftProtocol::Tcp),
        Protocol::Udp => Some(NftProtocol::Udp),
        Protocol::Sctp => Some(NftProtocol::Sctp),
        Protocol::Other(_) => None,
    }
}

/// The element commented with its first reason: `POLICY: PEER` (and how many other rules
/// allow the same).
fn with_reason(
    element: Element,
    reasons: &[Reason],
    plan: &Plan,
    world: &World,
    direction: Direction,
) -> Element {
    let Some(first) = reasons.first() else {
        return element;
    };
    let Some(key) = plan.policy(first.policy) else {
        return element;
    };
    let peer = world
        .policy(key)
        .and_then(|p| {
            let rule = p.rules(direction).get(first.rule as usize)?;
            Some(match first.peer {
                Some(i) => describe_peer(rule.peers.get(i as usize)?, &p.namespace),
                None => "every peer".to_string(),
            })
        })
        .unwrap_or_else(|| format!("rule {}", first.rule));
    let more = if reasons.len() > 1 {
        format!(" (+{} more)", reasons.len() - 1)
    } else {
        String::new()
    };
    element.with_comment(format!("{key}: {peer}{more}"))
}

/// The interfaces of this node's pods to program: those of pods the world knows, and those
/// no Kubernetes pod owns. An interface whose pod the world does not know yet is left out,
/// so it stays held until the pod is seen.
pub fn programmable(interfaces: &[PodInterface], world: &World) -> Vec<PodInterface> {
    interfaces
        .iter()
        .filter(|i| i.pod.as_ref().is_none_or(|p| world.pod(p).is_some()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
