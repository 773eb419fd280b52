//! The shape of the NetworkPolicy table of decision 91 (`inet sinew-policy`), as a builder:
//! the agent fills it from a compiled plan, the encoder's tests from a hand-made fixture.
//!
//! - `programmed`: the pod interfaces the agent has programmed; any other `snw*` interface is
//!   held (drop) in both directions, so a new pod passes nothing before its policy is in.
//! - `ingress-classes`, `egress-classes`: verdict maps from a pod interface to its class's
//!   chain; a pod isolated by nothing has no entry and passes.
//! - per class: a chain that returns on a hit in its sets (`ADDR . inet_proto . inet_service`
//!   and `ADDR`, per family), then drops (after a rate-limited nflog when asked, prefixed
//!   `CLASS POLICIES`, so whoever reads the log knows what denied the packet), counting
//!   the drop in its direction's named counter (`dropped-ingress`, `dropped-egress`);
//!   packets of pod interfaces not programmed yet count in `dropped-held`. Named counters
//!   outlive the rules around them, so the agent's updates of the table keep their values.
//! - base chains on `forward` (egress, then ingress) and `input` (egress towards the node,
//!   IPv6 neighbour discovery excepted), after replies of established connections are
//!   accepted.

use sinew_core::Family;

use crate::nft::model::log_prefix;
use crate::nft::{
    Chain, ChainKind, CtState, DataType, Dir, Element, Expr, Field, Hook, Icmpv6Type,
    NamedPriority, Op, Policy, Priority, Rule, Set, Table, TimeUnit, Value, Verdict,
};

/// The policy table's name.
pub const TABLE: &str = "sinew-policy";
/// The nflog group denied packets go to when drop logging is on.
pub const LOG_GROUP: u16 = 1;
/// At most this many denied packets per second are logged, per class.
pub const LOG_RATE: u32 = 10;
/// The named counter of packets of pod interfaces not programmed yet, held (dropped).
pub const HELD_COUNTER: &str = "dropped-held";
/// The name pattern of the host ends of pods' veths.
pub const POD_INTERFACES: &str = "snw*";

/// Where a class judges traffic: entering its pods (ingress) or leaving them (egress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The interface field that names the pod: the one the packet leaves by for ingress.
    fn pod_interface(self) -> Field {
        match self {
            Direction::Ingress => Field::OifName,
            Direction::Egress => Field::IifName,
        }
    }

    /// The address of the other end: the source for ingress, the destination for egress.
    fn peer(self, family: Family) -> Field {
        match self {
            Direction::Ingress => Field::Addr(family, Dir::Source),
            Direction::Egress => Field::Addr(family, Dir::Destination),
        }
    }

    /// The named counter of what this direction's classes drop.
    pub fn counter(self) -> String {
        format!("dropped-{}", self.name())
    }

    /// The verdict map from pod interfaces to class chains.
    pub fn classes_map(self) -> String {
        format!("{}-classes", self.name())
    }
}

/// One class: its chain's name and comment, and its sets' elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub direction: Direction,
    pub name: String,
    pub comment: String,
    /// The policies that select its pods (`ns/name, ...`): the drop log's prefix names
    /// them after the chain (`CLASS POLICIES`, cut to what the kernel takes).
    pub policies: String,
    pub ports4: Vec<Element>,
    pub any4: Vec<Element>,
    pub ports6: Vec<Element>,
    pub any6: Vec<Element>,
}

impl Class {
    fn set_name(&self, kind: &str, family: Family) -> String {
        let n = match family {
            Family::V4 => 4,
            Family::V6 => 6,
        };
        format!("{}-{kind}{n}", self.name)
    }

    fn sets(&self) -> Vec<Set> {
        let ports = |family| {
            Set::new(
                &self.set_name("ports", family),
                [
                    DataType::addr(family),
                    DataType::InetProto,
                    DataType::InetService,
                ],
            )
            .interval()
        };
        let any =
            |family| Set::new(&self.set_name("any", family), [DataType::addr(family)]).interval();
        vec![
            ports(Family::V4).with_elements(self.ports4.clone()),
            any(Family::V4).with_elements(self.any4.clone()),
            ports(Family::V6).with_elements(self.ports6.clone()),
            any(Family::V6).with_elements(self.any6.clone()),
        ]
    }

    fn chain(&self, log: bool) -> Chain {
        let mut rules = Vec::new();
        for family in [Family::V4, Family::V6] {
            let peer = self.direction.peer(family);
            rules.push(Rule::new([
                Expr::Lookup {
                    key: vec![peer, Field::L4Proto, Field::ThPort(Dir::Destination)],
                    op: Op::Eq,
                    set: self.set_name("ports", family),
                },
                Expr::Verdict(Verdict::Return),
            ]));
            rules.push(Rule::new([
                Expr::in_set(peer, &self.set_name("any", family)),
                Expr::Verdict(Verdict::Return),
            ]));
        }
        if log {
            rules.push(
                Rule::new([
                    Expr::Limit {
                        rate: LOG_RATE,
                        per: TimeUnit::Second,
                    },
                    Expr::Log {
                        group: LOG_GROUP,
                        prefix: Some(log_prefix(format!("{} {}", self.name, self.policies))),
                    },
                ])
                .with_comment(format!("{} denied", self.name)),
            );
        }
        rules.push(Rule::new([
            Expr::CounterRef(self.direction.counter()),
            Expr::Verdict(Verdict::Drop),
        ]));
        Chain::regular(&self.name)
            .with_comment(self.comment.clone())
            .with_rules(rules)
    }
}

/// A pod interface the agent programmed: who it is and the chains of its classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub interface: String,
    /// `namespace/name`, the elements' comment.
    pub pod: String,
    pub ingress: Option<String>,
    pub egress: Option<String>,
}

/// The table with these classes and members; every member's interface is programmed.
pub fn table(classes: &[Class], members: &[Member], log: bool) -> Table {
    let mut sets = vec![
        Set::new("programmed", [DataType::IfName]).with_elements(
            members
                .iter()
                .map(|m| Element::key([Value::IfName(m.interface.clone())])),
        ),
    ];
    for direction in [Direction::Ingress, Direction::Egress] {
        let elements = members.iter().filter_map(|m| {
            let class = match direction {
                Direction::Ingress => &m.ingress,
                Direction::Egress => &m.egress,
            };
            class.as_ref().map(|c| {
                Element::mapping([Value::IfName(m.interface.clone())], [Value::jump(c)])
                    .with_comment(m.pod.clone())
            })
        });
        sets.push(
            Set::map(
                &direction.classes_map(),
                [DataType::IfName],
                [DataType::Verdict],
            )
            .with_elements(elements),
        );
    }
    for class in classes {
        sets.extend(class.sets());
    }
    let mut chains: Vec<Chain> = classes.iter().map(|c| c.chain(log)).collect();
    for direction in [Direction::Ingress, Direction::Egress] {
        chains.push(
            Chain::regular(direction.name()).with_rules([Rule::new([Expr::vmap(
                direction.pod_interface(),
                &direction.classes_map(),
            )])]),
        );
    }
    let pods = || POD_INTERFACES.to_string();
    let established = || {
        Rule::new([
            Expr::ct_state([CtState::Established, CtState::Related]),
            Expr::Verdict(Verdict::Accept),
        ])
    };
    // A pod interface the agent has not programmed passes nothing.
    let hold = |field: Field| {
        let prefix = match field {
            Field::OifName => Expr::OifName(pods()),
            _ => Expr::IifName(pods()),
        };
        Rule::new([
            prefix,
            Expr::not_in_set(field, "programmed"),
            Expr::CounterRef(HELD_COUNTER.to_string()),
            Expr::Verdict(Verdict::Drop),
        ])
        .with_comment("not programmed yet")
    };
    let neighbour_discovery = |t| {
        Rule::new([Expr::Icmpv6Type(t), Expr::Verdict(Verdict::Accept)])
            .with_comment("neighbour discovery with the node")
    };
    let filter = Priority::named(NamedPriority::Filter);
    chains.push(
        Chain::base(
            "forward",
            ChainKind::Filter,
            Hook::Forward,
            filter,
            Policy::Accept,
        )
        .with_rules([
            established(),
            hold(Field::IifName),
            hold(Field::OifName),
            Rule::new([Expr::IifName(pods()), Expr::jump("egress")]),
            Rule::new([Expr::OifName(pods()), Expr::jump("ingress")]),
        ]),
    );
    chains.push(
        Chain::base(
            "input",
            ChainKind::Filter,
            Hook::Input,
            filter,
            Policy::Accept,
        )
        .with_rules([
            established(),
            hold(Field::IifName),
            // A pod's neighbour discovery with its node (the node resolving the pod's
            // address, the pod answering) is no connection a policy judges; anything else
            // the pod sends its node, to the link-local gateway `fe80::1` too, is egress.
            neighbour_discovery(Icmpv6Type::NeighborSolicit),
            neighbour_discovery(Icmpv6Type::NeighborAdvert),
            Rule::new([Expr::IifName(pods()), Expr::jump("egress")]),
        ]),
    );
    Table {
        name: TABLE.to_string(),
        counters: vec![
            Direction::Ingress.counter(),
            Direction::Egress.counter(),
            HELD_COUNTER.to_string(),
        ],
        sets,
        chains,
    }
}
