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

use std::net::IpAddr;

use crate::hostport::Protocol;
pub(crate) use crate::nft::policy::TABLE;
use crate::nft::policy::{self, Class, Direction, Member};
use crate::nft::{Element, Table, Value};

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An element of a class's `ports` set.
pub(crate) fn ports(addr: Value, protocol: Protocol, port: Value, comment: &str) -> Element {
    Element::key([addr, Value::Proto(protocol), port]).with_comment(comment)
}

/// The classes of the golden table: `default/web-1` isolated in both directions.
pub(crate) fn web_ingress() -> Class {
    Class {
        direction: Direction::Ingress,
        name: "ingress-0".into(),
        comment: "pods default/web-1; policies default/allow-web".into(),
        policies: "default/allow-web".into(),
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
        policies: "default/web-egress".into(),
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
/// (`(interface, pod, ingress class, egress class)`); every member is programmed.
pub(crate) fn table(
    classes: &[Class],
    members: &[(&str, &str, Option<&str>, Option<&str>)],
    log: bool,
) -> Table {
    let members: Vec<Member> = members
        .iter()
        .map(|(interface, pod, ingress, egress)| Member {
            interface: interface.to_string(),
            pod: pod.to_string(),
            ingress: ingress.map(str::to_string),
            egress: egress.map(str::to_string),
        })
        .collect();
    policy::table(classes, &members, log)
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
    table(&[web_ingress(), web_egress()], &MEMBERS, log)
}

/// A second ingress class: `default/other-1` (`snwc`) accepts TCP 443 from 10.0.1.0/24.
pub(crate) fn other_ingress() -> Class {
    Class {
        direction: Direction::Ingress,
        name: "ingress-1".into(),
        comment: "pods default/other-1; policies default/allow-tls".into(),
        policies: "default/allow-tls".into(),
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
