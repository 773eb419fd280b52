//! A table shaped like the NetworkPolicy table of decision 91 (`inet sinew-policy`), built
//! by hand from the model for the encoder's tests: the golden copy, the incremental updates
//! and the datapath test all use it. The addresses and interface names are those of the
//! datapath test's namespaces:
//!
//! - `snwa` (10.0.1.1, fd00:1::1, pod `default/web-1`): isolated in both directions; it
//!   accepts TCP 80 from 10.0.1.2 and UDP 5000-5010 from 10.0.1.2-10.0.1.3, and sends only
//!   TCP 80 to 10.0.1.4;
//! - `snwb`, `snwc`, `snwd` (10.0.1.2-4): programmed, isolated by nothing;
//! - `snwe` (10.0.1.5): not programmed yet, so held.
//!
//! One addition to decision 91's rules: the `input` hook accepts IPv6 neighbour solicitations
//! and advertisements before judging egress. Without it an egress-isolated pod cannot answer
//! its node's solicitations, so once the neighbour caches expire nothing reaches it over IPv6,
//! not even what its ingress allows (the datapath test shows it with cold caches).

use std::net::IpAddr;

use sinew_core::Family;

use crate::hostport::Protocol;
use crate::nft::{
    Chain, ChainKind, CtState, DataType, Dir, Element, Expr, Field, Hook, Icmpv6Type,
    NamedPriority, Op, Policy, Priority, Rule, Set, Table, TimeUnit, Value, Verdict,
};

pub(crate) const TABLE: &str = "sinew-policy";
/// The nflog group of the drop log.
pub(crate) const LOG_GROUP: u16 = 1;

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Ingress or egress, as the table names its chains and maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The field naming the pod's interface: where the packet leaves for the pod (ingress)
    /// or comes from it (egress).
    fn pod_interface(self) -> Field {
        match self {
            Direction::Ingress => Field::OifName,
            Direction::Egress => Field::IifName,
        }
    }

    /// The peer's address: the source of what enters a pod, the destination of what leaves.
    fn peer(self, family: Family) -> Field {
        match self {
            Direction::Ingress => Field::Addr(family, Dir::Source),
            Direction::Egress => Field::Addr(family, Dir::Destination),
        }
    }

    fn classes(self) -> String {
        format!("{}-classes", self.name())
    }
}

/// One class of pods in one direction: its chain's name and comment, and the elements of its
/// four sets (`ports` keyed `ADDR . inet_proto . inet_service`, `any` keyed `ADDR`).
pub(crate) struct Class {
    pub(crate) direction: Direction,
    pub(crate) name: String,
    pub(crate) comment: String,
    pub(crate) ports4: Vec<Element>,
    pub(crate) any4: Vec<Element>,
    pub(crate) ports6: Vec<Element>,
    pub(crate) any6: Vec<Element>,
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

    /// The class's chain: a hit in either set returns, the rest is dropped (logged at a
    /// limited rate when `log`).
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
                        rate: 10,
                        per: TimeUnit::Second,
                    },
                    Expr::LogGroup(LOG_GROUP),
                ])
                .with_comment(format!("{} denied", self.name)),
            );
        }
        rules.push(Rule::new([Expr::Verdict(Verdict::Drop)]));
        Chain::regular(&self.name)
            .with_comment(self.comment.clone())
            .with_rules(rules)
    }
}

/// `ADDR . PROTO . PORT` with ranges where given.
pub(crate) fn ports(addr: Value, protocol: Protocol, port: Value, comment: &str) -> Element {
    Element::key([addr, Value::Proto(protocol), port]).with_comment(comment)
}

/// The classes of the golden table: `default/web-1` isolated in both directions.
pub(crate) fn web_ingress() -> Class {
    Class {
        direction: Direction::Ingress,
        name: "ingress-0".into(),
        comment: "pods default/web-1; policies default/allow-web".into(),
        ports4: vec![
            ports(
                Value::Addr(ip("10.0.1.2")),
                Protocol::Tcp,
                Value::Port(80),
                "default/allow-web: app=client",
            ),
            ports(
                Value::addr_range(ip("10.0.1.2"), ip("10.0.1.3")),
                Protocol::Udp,
                Value::port_range(5000, 5010),
                "default/allow-web: ipBlock 10.0.1.2/31",
            ),
        ],
        any4: vec![
            Element::key([Value::addr_range(ip("192.168.50.0"), ip("192.168.50.99"))])
                .with_comment(
                    "default/allow-web: ipBlock 192.168.50.0/24 except 192.168.50.100/30",
                ),
            Element::key([Value::addr_range(
                ip("192.168.50.104"),
                ip("192.168.50.255"),
            )]),
        ],
        ports6: vec![ports(
            Value::Addr(ip("fd00:1::2")),
            Protocol::Tcp,
            Value::Port(80),
            "default/allow-web: app=client",
        )],
        any6: Vec::new(),
    }
}

pub(crate) fn web_egress() -> Class {
    Class {
        direction: Direction::Egress,
        name: "egress-0".into(),
        comment: "pods default/web-1; policies default/web-egress".into(),
        ports4: vec![ports(
            Value::Addr(ip("10.0.1.4")),
            Protocol::Tcp,
            Value::Port(80),
            "default/web-egress: app=db",
        )],
        any4: vec![Element::key([Value::Addr(ip("10.96.0.10"))]).with_comment("kube-system/dns")],
        ports6: vec![ports(
            Value::Addr(ip("fd00:1::4")),
            Protocol::Tcp,
            Value::Port(80),
            "default/web-egress: app=db",
        )],
        any6: vec![Element::key([Value::addr_range(
            ip("fd00:96::"),
            ip("fd00:96::ffff"),
        )])],
    }
}

/// The table with these classes; `members` maps each pod interface to its classes' chains
/// (`(interface, pod, ingress class, egress class)`), `programmed` lists the interfaces
/// programmed.
pub(crate) fn table(
    classes: &[Class],
    members: &[(&str, &str, Option<&str>, Option<&str>)],
    programmed: &[&str],
    log: bool,
) -> Table {
    let mut sets = vec![
        Set::new("programmed", [DataType::IfName]).with_elements(
            programmed
                .iter()
                .map(|i| Element::key([Value::IfName(i.to_string())])),
        ),
    ];
    for direction in [Direction::Ingress, Direction::Egress] {
        let elements = members
            .iter()
            .filter_map(|(interface, pod, ingress, egress)| {
                let class = match direction {
                    Direction::Ingress => ingress,
                    Direction::Egress => egress,
                };
                class.map(|c| {
                    Element::mapping([Value::IfName(interface.to_string())], [Value::jump(c)])
                        .with_comment(*pod)
                })
            });
        sets.push(
            Set::map(
                &direction.classes(),
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
                &direction.classes(),
            )])]),
        );
    }
    let pods = || "snw*".to_string();
    let established = || {
        Rule::new([
            Expr::ct_state([CtState::Established, CtState::Related]),
            Expr::Verdict(Verdict::Accept),
        ])
    };
    // Decision 91's hold: a pod interface the agent has not programmed passes nothing.
    let hold = |field: Field| {
        let prefix = match field {
            Field::OifName => Expr::OifName(pods()),
            _ => Expr::IifName(pods()),
        };
        Rule::new([
            prefix,
            Expr::not_in_set(field, "programmed"),
            Expr::Verdict(Verdict::Drop),
        ])
        .with_comment("not programmed yet")
    };
    // A pod's neighbour discovery with its node is no connection a policy judges: without
    // it, the node cannot reach an egress-isolated pod over IPv6 (its advertisements would
    // be dropped), nor the pod its gateway.
    let neighbour_discovery = |t| Rule::new([Expr::Icmpv6Type(t), Expr::Verdict(Verdict::Accept)]);
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
            neighbour_discovery(Icmpv6Type::NeighborSolicit),
            neighbour_discovery(Icmpv6Type::NeighborAdvert),
            Rule::new([Expr::IifName(pods()), Expr::jump("egress")]),
        ]),
    );
    Table {
        name: TABLE.to_string(),
        sets,
        chains,
    }
}

/// The interfaces of the datapath test and who they are.
pub(crate) const MEMBERS: [(&str, &str, Option<&str>, Option<&str>); 4] = [
    ("snwa", "default/web-1", Some("ingress-0"), Some("egress-0")),
    ("snwb", "default/client-1", None, None),
    ("snwc", "default/other-1", None, None),
    ("snwd", "default/db-1", None, None),
];

/// The golden table: `web-1` isolated both ways, three pods not isolated, `snwe` held.
pub(crate) fn golden(log: bool) -> Table {
    table(
        &[web_ingress(), web_egress()],
        &MEMBERS,
        &["snwa", "snwb", "snwc", "snwd"],
        log,
    )
}

/// A second ingress class: `default/other-1` (`snwc`) accepts TCP 443 from 10.0.1.0/24.
pub(crate) fn other_ingress() -> Class {
    Class {
        direction: Direction::Ingress,
        name: "ingress-1".into(),
        comment: "pods default/other-1; policies default/allow-tls".into(),
        ports4: vec![ports(
            Value::addr_range(ip("10.0.1.0"), ip("10.0.1.255")),
            Protocol::Tcp,
            Value::Port(443),
            "default/allow-tls: namespace default",
        )],
        any4: Vec::new(),
        ports6: Vec::new(),
        any6: Vec::new(),
    }
}
