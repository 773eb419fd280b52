//! The trace behind `kubectl sinew trace`: for a packet, what each end's node plan decides
//! and why, naming the policy, the rule, and the selector or ipBlock and port entry that
//! matched, or the policies that isolate the pod when nothing allows it.
//!
//! The verdict is the plan's (the same lists the node programs). An element merged from
//! several rules carries all their reasons; the trace keeps those whose peer and port entry
//! cover this packet, checked against the world.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::compile::compile_with;
use crate::plan::{Limits, Plan, Verdict};
use crate::semantics::{Grant, Packet, peer_admits, pod_at, port_admits};
use crate::view::{Direction, NamespaceScope, ObjectKey, Peer, PortMatch, PortView, Protocol};
use crate::world::World;

/// Why a rule allowed a packet, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Because {
    pub grant: Grant,
    /// The peer that matched ("every peer" when the rule has none).
    pub peer: String,
    /// The port entry that matched ("all traffic" when the rule has none).
    pub port: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NotIsolated,
    Allowed(Vec<Because>),
    Denied {
        policies: Vec<ObjectKey>,
        /// The pod's class was over a limit and compiled as deny-all.
        failed_closed: bool,
    },
    /// The pod is on no node, so no node judges it.
    Unscheduled,
}

/// One end's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub pod: ObjectKey,
    pub direction: Direction,
    pub outcome: Outcome,
}

/// Both ends' verdicts; `None` where that address is not a pod policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub packet: Packet,
    pub egress: Option<Step>,
    pub ingress: Option<Step>,
}

impl Trace {
    pub fn passes(&self) -> bool {
        [&self.egress, &self.ingress]
            .into_iter()
            .flatten()
            .all(|s| !matches!(s.outcome, Outcome::Denied { .. }))
    }
}

/// Traces `packet`, compiling the plans of the nodes of the pods at each end.
pub fn explain(world: &World, packet: &Packet, limits: &Limits) -> Trace {
    let step = |addr: IpAddr, direction: Direction, peer: IpAddr| {
        let pod = pod_at(world, addr)?;
        let outcome = match &pod.node {
            None => Outcome::Unscheduled,
            Some(node) => {
                let plan = compile_with(world, node, limits);
                explain_at(
                    &plan,
                    world,
                    &pod.key(),
                    direction,
                    peer,
                    packet.protocol,
                    packet.port,
                )
            }
        };
        Some(Step {
            pod: pod.key(),
            direction,
            outcome,
        })
    };
    Trace {
        packet: *packet,
        egress: step(packet.src, Direction::Egress, packet.dst),
        ingress: step(packet.dst, Direction::Ingress, packet.src),
    }
}

/// What `plan` decides at `pod`, with the matching peers and ports in words.
pub fn explain_at(
    plan: &Plan,
    world: &World,
    pod: &ObjectKey,
    direction: Direction,
    peer: IpAddr,
    protocol: Protocol,
    port: u16,
) -> Outcome {
    match plan.verdict(pod, direction, peer, protocol, port) {
        Verdict::NotIsolated => Outcome::NotIsolated,
        Verdict::Denied(policies) => Outcome::Denied {
            policies,
            failed_closed: plan
                .class_of(pod, direction)
                .is_some_and(|c| c.failed_closed),
        },
        Verdict::Allowed(grants) => {
            let Some(view) = world.pod(pod) else {
                return Outcome::Allowed(Vec::new());
            };
            let because = grants
                .into_iter()
                .filter_map(|g| {
                    let policy = world.policy(&g.policy)?;
                    let rule = policy.rules(direction).get(g.rule)?;
                    let peer_text = match g.peer {
                        None => "every peer".to_string(),
                        Some(i) => {
                            let p = rule.peers.get(i)?;
                            if !peer_admits(world, policy, p, peer) {
                                return None;
                            }
                            describe_peer(p, &policy.namespace)
                        }
                    };
                    let port_text = match g.port {
                        None => "all traffic".to_string(),
                        Some(i) => {
                            let e = rule.ports.get(i)?;
                            if !port_admits(world, view, direction, peer, e, protocol, port) {
                                return None;
                            }
                            describe_port(e)
                        }
                    };
                    Some(Because {
                        grant: g,
                        peer: peer_text,
                        port: port_text,
                    })
                })
                .collect();
            Outcome::Allowed(because)
        }
    }
}

/// A selector as `kubectl` prints one: `app=db,tier in (a,b),!legacy`; `{}` selects all.
pub fn describe_selector(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => format!("{} {op}? (matches nothing)", e.key),
        });
    }
    if parts.is_empty() {
        "{} (all)".to_string()
    } else {
        parts.join(",")
    }
}

pub fn describe_peer(peer: &Peer, policy_namespace: &str) -> String {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let pods = describe_selector(pods);
            match namespaces {
                NamespaceScope::Own => {
                    format!("podSelector {pods} in namespace {policy_namespace}")
                }
                NamespaceScope::Selector(ns) => format!(
                    "podSelector {pods} in namespaceSelector {}",
                    describe_selector(ns)
                ),
            }
        }
        Peer::Block { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
        Peer::Block { cidr, except } => {
            let shown: Vec<String> = except.iter().take(4).map(|c| c.to_string()).collect();
            let more = except.len().saturating_sub(shown.len());
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("ipBlock {cidr} except {}{tail}", shown.join(", "))
        }
        Peer::Invalid(why) => format!("invalid peer ({why})"),
    }
}

pub fn describe_port(entry: &PortView) -> String {
    let p = entry.protocol;
    match &entry.port {
        PortMatch::All => format!("all {p} ports"),
        PortMatch::Range { lo, hi } if lo == hi => format!("{p} {lo}"),
        PortMatch::Range { lo, hi } => format!("{p} {lo}-{hi}"),
        PortMatch::Named(name) => format!("{p} port {name:?}"),
        PortMatch::Invalid(why) => format!("invalid port ({why})"),
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: ", self.direction, self.pod)?;
        match &self.outcome {
            Outcome::NotIsolated => {
                write!(f, "allowed: no policy isolates it for {}", self.direction)
            }
            Outcome::Unscheduled => f.write_str("not on a node; nothing judges it"),
            Outcome::Denied {
                policies,
                failed_closed,
            } => {
                let names: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
                write!(
                    f,
                    "denied: isolated by {} and nothing allows it",
                    names.join(", ")
                )?;
                if *failed_closed {
                    f.write_str(" (its rules exceeded a limit and were compiled as deny-all)")?;
                }
                Ok(())
            }
            Outcome::Allowed(because) => {
                f.write_str("allowed by")?;
                for (i, b) in because.iter().enumerate() {
                    let sep = if i == 0 { " " } else { "; " };
                    write!(
                        f,
                        "{sep}policy {} {} rule {}, {}, {}",
                        b.grant.policy, self.direction, b.grant.rule, b.peer, b.port
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.packet;
        writeln!(f, "{} -> {} {} {}", p.src, p.dst, p.protocol, p.port)?;
        match &self.egress {
            Some(s) => writeln!(f, "  {s}")?,
            None => writeln!(f, "  egress: {} is not a pod; not judged", p.src)?,
        }
        match &self.ingress {
            Some(s) => write!(f, "  {s}"),
            None => write!(f, "  ingress: {} is not a pod; not judged", p.dst),
        }
    }
}
