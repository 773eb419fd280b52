//! The compiled plan of one node (decision 91): per direction, classes of the node's isolated
//! pods, each with per-family sorted, disjoint set elements that say what is allowed, every
//! element naming the rules that produced it. `Plan::verdict` reads it the way the kernel
//! reads the sets: one lookup in each list.

use std::net::IpAddr;

use serde::Serialize;

use crate::semantics::Grant;
use crate::view::{Direction, ObjectKey, Protocol};

/// Bounds on what one class may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Set elements one class may hold (both families, both lists). A class over it is
    /// compiled as deny-all (fail closed) and the plan carries a [`Problem`]. The rule items
    /// expanded on the way (peer ranges x port entries) are bounded by 4 times this, for the
    /// same outcome: that bounds the compiler's memory too (about 20 MiB at the default).
    pub elements_per_class: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            elements_per_class: 65_536,
        }
    }
}

impl Limits {
    pub(crate) fn items_per_class(&self) -> usize {
        self.elements_per_class.saturating_mul(4)
    }
}

/// An inclusive address range of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct AddrRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl AddrRange {
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.start <= addr && addr <= self.end
    }
}

/// Which policy (an index into [`Plan::policies`]), rule, peer (`None`: all peers) and port
/// entry (`None`: all traffic) produced an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Reason {
    pub policy: u32,
    pub rule: u32,
    pub peer: Option<u32>,
    pub port: Option<u32>,
}

/// An element of the `ADDR . inet_proto . inet_service` set: addresses, one protocol, an
/// inclusive port range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortElement {
    pub addrs: AddrRange,
    pub protocol: Protocol,
    pub ports: (u16, u16),
    /// The rules that produced it: an index into [`Class::reasons`].
    pub reasons: u32,
}

/// An element of the `ADDR` set: every protocol and port to and from these addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct AnyElement {
    pub addrs: AddrRange,
    /// The rules that produced it: an index into [`Class::reasons`].
    pub reasons: u32,
}

/// The two sets of one family: both sorted and disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Elements {
    pub ports: Vec<PortElement>,
    pub any: Vec<AnyElement>,
}

impl Elements {
    pub fn len(&self) -> usize {
        self.ports.len() + self.any.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element of the `ADDR` set holding `addr`.
    pub fn any_at(&self, addr: IpAddr) -> Option<&AnyElement> {
        let i = self.any.partition_point(|e| e.addrs.start <= addr);
        self.any[..i].last().filter(|e| e.addrs.contains(addr))
    }

    /// The element of the `ADDR . proto . port` set holding the triple.
    pub fn port_at(&self, addr: IpAddr, protocol: Protocol, port: u16) -> Option<&PortElement> {
        let end = self.ports.partition_point(|e| e.addrs.start <= addr);
        let last = self.ports[..end]
            .last()
            .filter(|e| e.addrs.contains(addr))?;
        // The elements holding `addr` share one address range (the compiler cuts the address
        // space into segments), sorted by protocol and first port.
        let start = self.ports[..end].partition_point(|e| e.addrs.start < last.addrs.start);
        let seg = &self.ports[start..end];
        let i = seg.partition_point(|e| (e.protocol, e.ports.0) <= (protocol, port));
        seg[..i]
            .last()
            .filter(|e| e.protocol == protocol && e.ports.0 <= port && port <= e.ports.1)
    }
}

/// Pods of one node that policy treats alike in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Class {
    /// Sorted.
    pub pods: Vec<ObjectKey>,
    /// The policies isolating these pods in this direction (indices into [`Plan::policies`],
    /// sorted).
    pub policies: Vec<u32>,
    pub v4: Elements,
    pub v6: Elements,
    /// The distinct sets of reasons the elements name (each sorted, never empty): elements
    /// hold an index, as thousands of elements often share one set.
    pub reasons: Vec<Vec<Reason>>,
    /// Over a limit: compiled as deny-all (the elements are empty); see the plan's problems.
    pub failed_closed: bool,
}

impl Class {
    pub fn elements(&self, addr: IpAddr) -> &Elements {
        match addr {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        }
    }

    pub fn element_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// The reasons an element's index stands for.
    pub fn reasons(&self, index: u32) -> &[Reason] {
        self.reasons.get(index as usize).map_or(&[], Vec::as_slice)
    }
}

/// Something the compiler could not do as asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub direction: Direction,
    pub pods: Vec<ObjectKey>,
    pub policies: Vec<ObjectKey>,
    pub message: String,
}

/// The plan of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub node: String,
    /// Every policy the classes name, sorted; classes and reasons index into it.
    pub policies: Vec<ObjectKey>,
    /// Classes sorted by their first pod; a pod is in at most one class per direction, and in
    /// none when nothing isolates it in that direction.
    pub ingress: Vec<Class>,
    pub egress: Vec<Class>,
    pub problems: Vec<Problem>,
}

/// What the plan says about one packet at one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod is in no class for this direction (nothing isolates it, or it is not on this
    /// node).
    NotIsolated,
    /// Allowed by the element(s) holding the packet; their reasons, sorted (a superset of
    /// the grants that actually cover this packet when elements were merged).
    Allowed(Vec<Grant>),
    /// Isolated by these policies and no element holds the packet.
    Denied(Vec<ObjectKey>),
}

impl Verdict {
    pub fn passes(&self) -> bool {
        !matches!(self, Verdict::Denied(_))
    }
}

impl Plan {
    pub fn classes(&self, direction: Direction) -> &[Class] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn class_of(&self, pod: &ObjectKey, direction: Direction) -> Option<&Class> {
        self.classes(direction)
            .iter()
            .find(|c| c.pods.binary_search(pod).is_ok())
    }

    pub fn policy(&self, index: u32) -> Option<&ObjectKey> {
        self.policies.get(index as usize)
    }

    /// The grant a reason stands for.
    pub fn grant(&self, reason: &Reason) -> Option<Grant> {
        Some(Grant {
            policy: self.policy(reason.policy)?.clone(),
            rule: reason.rule as usize,
            peer: reason.peer.map(|p| p as usize),
            port: reason.port.map(|p| p as usize),
        })
    }

    /// The verdict for traffic at `pod` in `direction` with the other end at `peer`, read as
    /// the kernel reads the sets: the `ADDR` set, then the `ADDR . proto . port` set.
    pub fn verdict(
        &self,
        pod: &ObjectKey,
        direction: Direction,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Verdict {
        let Some(class) = self.class_of(pod, direction) else {
            return Verdict::NotIsolated;
        };
        let elements = class.elements(peer);
        let mut reasons: Vec<Reason> = Vec::new();
        if let Some(e) = elements.any_at(peer) {
            reasons.extend(class.reasons(e.reasons));
        }
        if protocol.has_ports()
            && let Some(e) = elements.port_at(peer, protocol, port)
        {
            reasons.extend(class.reasons(e.reasons));
        }
        if reasons.is_empty() {
            return Verdict::Denied(
                class
                    .policies
                    .iter()
                    .filter_map(|p| self.policy(*p).cloned())
                    .collect(),
            );
        }
        let mut grants: Vec<Grant> = reasons.iter().filter_map(|r| self.grant(r)).collect();
        grants.sort();
        grants.dedup();
        Verdict::Allowed(grants)
    }
}
