//! Host ports (a pod's `hostPort`s), the way the `portmap` plugin defines them, kept in
//! sinew's own nftables table instead of iptables chains per pod.
//!
//! The runtime passes `runtimeConfig.portMappings` on ADD; the plugin stores them in the
//! pod's IPAM record ([`PortMapping`], in [`Attachment::port_mappings`]), so DEL and CHECK
//! work from what ADD was given. Each mapping becomes one [`HostPort`] per family the pod
//! has an address of: traffic to a local address of the node (only to `hostIP` when given) on
//! `(protocol, hostPort)` is DNATed to `podIP:containerPort`. The elements live in maps of
//! the `inet sinew` table keyed by `l4proto . daddr . dport` (a given `hostIP`) or
//! `l4proto . dport` (every local address), so a packet costs two hash lookups however many
//! pods have host ports.
//!
//! Who writes them: the plugin adds a pod's elements at ADD (the port works when ADD returns)
//! and removes them at DEL; the agent declares the maps with every stored pod's elements
//! ([`of_store`]) whenever it replaces the table, under the store lock, so a replace never
//! drops them and a ruleset flushed behind sinew's back comes back with them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sinew_core::Family;

use crate::ipam::{Attachment, IpamState};
use crate::nft::{Element, Value};

/// A host port's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The name `nft` prints (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses `tcp`, `udp` or `sctp` in any case.
    pub fn parse(s: &str) -> Option<Protocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `runtimeConfig.portMappings`, validated, as the plugin stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// `None`: every local address of the node. An unspecified address (`0.0.0.0`, `::`)
    /// means every local address of its family only, as with `portmap`.
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// One DNAT entry of the `inet sinew` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub protocol: Protocol,
    /// The node address it answers on; `None`: every local address of the pod address's
    /// family (except `::1`, which the kernel never routes to another host).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub pod_ip: IpAddr,
    pub container_port: u16,
}

/// What identifies a host port on a node: two pods cannot both have it.
pub type HostPortKey = (Family, Protocol, Option<IpAddr>, u16);

impl HostPort {
    pub fn family(&self) -> Family {
        Family::of(self.pod_ip)
    }

    pub fn key(&self) -> HostPortKey {
        (self.family(), self.protocol, self.host_ip, self.host_port)
    }

    /// Whether it answers on IPv4 loopback addresses (`127.0.0.1`): then the pod's host veth
    /// needs `route_localnet`, and the node's own connections are masqueraded.
    pub fn covers_loopback(&self) -> bool {
        self.family() == Family::V4 && self.host_ip.is_none_or(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = match self.host_ip {
            Some(ip) => ip.to_string(),
            None => format!("any local {:?}", self.family()).to_lowercase(),
        };
        write!(
            f,
            "{} {on} port {} -> {}",
            self.protocol,
            self.host_port,
            std::net::SocketAddr::new(self.pod_ip, self.container_port)
        )
    }
}

/// The host ports of `mappings` for a pod holding `pod_ips`: one per mapping and family the
/// pod has an address of (its first address of that family), unless `hostIP` is of the
/// other family. Sorted, one per key (the first mapping wins, as the first `portmap` rule
/// would).
pub fn host_ports(
    mappings: &[PortMapping],
    pod_ips: impl IntoIterator<Item = IpAddr>,
) -> Vec<HostPort> {
    let mut firsts: Vec<IpAddr> = Vec::new();
    for ip in pod_ips {
        if !firsts.iter().any(|f| Family::of(*f) == Family::of(ip)) {
            firsts.push(ip);
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for m in mappings {
        for &pod_ip in &firsts {
            let host_ip = match m.host_ip {
                Some(ip) if Family::of(ip) != Family::of(pod_ip) => continue,
                Some(ip) if ip.is_unspecified() => None,
                other => other,
            };
            let hp = HostPort {
                protocol: m.protocol,
                host_ip,
                host_port: m.host_port,
                pod_ip,
                container_port: m.container_port,
            };
            if seen.insert(hp.key()) {
                out.push(hp);
            }
        }
    }
    out.sort();
    out
}

/// The host ports recorded for one attachment.
pub fn of_attachment(a: &Attachment) -> Vec<HostPort> {
    host_ports(&a.port_mappings, a.addresses.iter().map(|h| h.ip))
}

/// Every host port the store records, one per key (the plugin refuses a second pod for a
/// key, so this only drops duplicates from a store written otherwise), sorted: what the
/// agent declares in the table.
pub fn of_store(state: &IpamState) -> Vec<HostPort> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<HostPort> = state
        .attachments
        .values()
        .flat_map(of_attachment)
        .filter(|hp| seen.insert(hp.key()))
        .collect();
    out.sort();
    out
}

/// The first host port of `wanted` that another attachment of `state` already holds, with
/// that attachment.
pub fn conflict<'a>(
    state: &'a IpamState,
    own: &crate::ipam::AttachmentKey,
    wanted: &[HostPort],
) -> Option<(HostPort, &'a Attachment)> {
    state
        .attachments
        .values()
        .filter(|a| a.key() != *own)
        .find_map(|a| {
            let theirs = of_attachment(a);
            wanted
                .iter()
                .find(|w| theirs.iter().any(|t| t.key() == w.key()))
                .map(|w| (*w, a))
        })
}

/// Whether the pod's host veth needs `route_localnet` (a host port on `127.0.0.1`).
pub fn needs_route_localnet(ports: &[HostPort]) -> bool {
    ports.iter().any(HostPort::covers_loopback)
}

/// The map of `inet sinew` holding IPv4 host ports on a given `hostIP`: `l4proto . daddr .
/// dport : podIP . port`.
pub const MAP4: &str = "hostports4";
/// The map of IPv4 host ports on every local address: `l4proto . dport : podIP . port`.
pub const MAP4_ANY: &str = "hostports4any";
/// [`MAP4`] for IPv6.
pub const MAP6: &str = "hostports6";
/// [`MAP4_ANY`] for IPv6.
pub const MAP6_ANY: &str = "hostports6any";
/// The set of IPv4 `podIP . podIP` pairs: a pod reaching its own host port is masqueraded.
pub const HAIRPIN4: &str = "hairpin4";
/// [`HAIRPIN4`] for IPv6.
pub const HAIRPIN6: &str = "hairpin6";

/// The map element of one host port (`proto . [hostIP .] hostPort : podIP . containerPort`)
/// and the map it belongs to.
pub fn map_element(hp: &HostPort) -> (&'static str, Element) {
    let map = match (hp.family(), hp.host_ip.is_some()) {
        (Family::V4, true) => MAP4,
        (Family::V4, false) => MAP4_ANY,
        (Family::V6, true) => MAP6,
        (Family::V6, false) => MAP6_ANY,
    };
    let mut key = vec![Value::Proto(hp.protocol)];
    key.extend(hp.host_ip.map(Value::Addr));
    key.push(Value::Port(hp.host_port));
    let data = [Value::Addr(hp.pod_ip), Value::Port(hp.container_port)];
    (map, Element::mapping(key, data))
}

/// The hairpin element of a pod address (`podIP . podIP`) and its set: a pod reaching its own
/// host port gets its own address back as destination, which it would drop as a martian
/// unless the source is masqueraded.
pub fn hairpin_element(pod_ip: IpAddr) -> (&'static str, Element) {
    let set = match Family::of(pod_ip) {
        Family::V4 => HAIRPIN4,
        Family::V6 => HAIRPIN6,
    };
    (
        set,
        Element::key([Value::Addr(pod_ip), Value::Addr(pod_ip)]),
    )
}

/// Every element these host ports need, with its map or set: one per host port (in the
/// order given), then one hairpin per pod address (sorted).
pub fn elements(ports: &[HostPort]) -> Vec<(&'static str, Element)> {
    let mut out: Vec<(&'static str, Element)> = ports.iter().map(map_element).collect();
    let pods: BTreeSet<IpAddr> = ports.iter().map(|p| p.pod_ip).collect();
    out.extend(pods.into_iter().map(hairpin_element));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{AttachmentKey, HeldAddress};
    use sinew_core::PoolMode;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mapping(host_port: u16, protocol: Protocol, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port,
            container_port: 80,
            protocol,
            host_ip: host_ip.map(ip),
        }
    }

    #[test]
    fn every_family_of_the_pod_gets_the_port_unless_host_ip_says_otherwise() {
        let dual = [ip("10.77.1.5"), ip("fd77::5")];
        let ports = host_ports(&[mapping(8080, Protocol::Tcp, None)], dual);
        assert_eq!(ports.len(), 2);
        assert!(ports.iter().all(|p| p.host_ip.is_none()));
        assert_eq!(
            ports.iter().map(|p| p.pod_ip).collect::<Vec<_>>(),
            dual.to_vec()
        );
        // hostIP of one family: only that family
        let ports = host_ports(&[mapping(8080, Protocol::Tcp, Some("10.0.0.1"))], dual);
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].host_ip, Some(ip("10.0.0.1")));
        assert_eq!(ports[0].pod_ip, ip("10.77.1.5"));
        // the unspecified address is every local address of its family only
        let ports = host_ports(&[mapping(8080, Protocol::Udp, Some("::"))], dual);
        assert_eq!(ports.len(), 1);
        assert_eq!((ports[0].host_ip, ports[0].pod_ip), (None, ip("fd77::5")));
        // a hostIP of a family the pod lacks maps nothing
        assert!(host_ports(&[mapping(1, Protocol::Tcp, Some("fd00::1"))], [dual[0]]).is_empty());
    }

    #[test]
    fn same_port_on_other_address_or_protocol_is_another_host_port() {
        // The conformance case: 127.0.0.1/TCP, node IP/TCP, node IP/UDP, all on one port.
        let ports = host_ports(
            &[
                mapping(54323, Protocol::Tcp, Some("127.0.0.1")),
                mapping(54323, Protocol::Tcp, Some("10.78.0.1")),
                mapping(54323, Protocol::Udp, Some("10.78.0.1")),
                // a duplicate key: the first mapping wins
                PortMapping {
                    container_port: 9,
                    ..mapping(54323, Protocol::Udp, Some("10.78.0.1"))
                },
            ],
            [ip("10.77.1.5")],
        );
        assert_eq!(ports.len(), 3, "{ports:?}");
        assert!(ports.iter().all(|p| p.container_port == 80));
        let keys: BTreeSet<HostPortKey> = ports.iter().map(HostPort::key).collect();
        assert_eq!(keys.len(), 3);
        assert_eq!(
            ports.iter().filter(|p| p.covers_loopback()).count(),
            1,
            "only the 127.0.0.1 one"
        );
        assert!(needs_route_localnet(&ports));
        assert!(!needs_route_localnet(&host_ports(
            &[mapping(1, Protocol::Tcp, Some("10.78.0.1"))],
            [ip("10.77.1.5")]
        )));
        // any local address includes 127.0.0.1 for IPv4, never ::1 for IPv6
        let any = host_ports(
            &[mapping(1, Protocol::Tcp, None)],
            [ip("10.77.1.5"), ip("fd77::5")],
        );
        assert_eq!(
            any.iter()
                .map(HostPort::covers_loopback)
                .collect::<Vec<_>>(),
            [true, false]
        );
    }

    fn attachment(id: &str, pod_ip: &str, mappings: Vec<PortMapping>) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: None,
            host_veth: format!("snw{id}"),
            mtu: 1450,
            addresses: vec![HeldAddress {
                ip: ip(pod_ip),
                pool: "p".into(),
                block: "10.77.1.0/26".into(),
                generation: 1,
                mode: PoolMode::Vxlan,
            }],
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            network: None,
            port_mappings: mappings,
        }
    }

    #[test]
    fn the_store_gives_every_pods_host_ports_and_conflicts_are_found() {
        let mut state = IpamState::default();
        state.insert_attachment(attachment(
            "a",
            "10.77.1.5",
            vec![mapping(80, Protocol::Tcp, None)],
        ));
        state.insert_attachment(attachment(
            "b",
            "10.77.1.6",
            vec![mapping(80, Protocol::Udp, None)],
        ));
        state.insert_attachment(attachment("c", "10.77.1.7", vec![]));
        let all = of_store(&state);
        assert_eq!(all.len(), 2);
        assert_eq!(
            all.iter().map(|p| p.pod_ip).collect::<BTreeSet<_>>(),
            [ip("10.77.1.5"), ip("10.77.1.6")].into()
        );

        let wanted = host_ports(&[mapping(80, Protocol::Udp, None)], [ip("10.77.1.8")]);
        let (port, holder) =
            conflict(&state, &AttachmentKey::new("d", "eth0"), &wanted).expect("b holds udp/80");
        assert_eq!((port.host_port, holder.container_id.as_str()), (80, "b"));
        // its own record is no conflict (a repeated ADD)
        assert!(conflict(&state, &AttachmentKey::new("b", "eth0"), &wanted).is_none());
        // another address is another key
        let elsewhere = host_ports(
            &[mapping(80, Protocol::Udp, Some("10.78.0.1"))],
            [ip("10.77.1.8")],
        );
        assert!(conflict(&state, &AttachmentKey::new("d", "eth0"), &elsewhere).is_none());
    }

    #[test]
    fn each_host_port_is_a_map_element_and_each_pod_address_a_hairpin() {
        let ports = host_ports(
            &[
                mapping(8080, Protocol::Tcp, None),
                mapping(53, Protocol::Udp, Some("10.78.0.1")),
            ],
            [ip("10.77.1.5"), ip("fd77::5")],
        );
        let text: Vec<String> = elements(&ports)
            .iter()
            .map(|(set, e)| format!("{set}: {e}"))
            .collect();
        assert_eq!(
            text,
            [
                "hostports4any: tcp . 8080 : 10.77.1.5 . 80",
                "hostports6any: tcp . 8080 : fd77::5 . 80",
                "hostports4: udp . 10.78.0.1 . 53 : 10.77.1.5 . 80",
                "hairpin4: 10.77.1.5 . 10.77.1.5",
                "hairpin6: fd77::5 . fd77::5",
            ]
        );
        let (map, _) = map_element(&HostPort {
            protocol: Protocol::Sctp,
            host_ip: Some(ip("fd78::1")),
            host_port: 1,
            pod_ip: ip("fd77::5"),
            container_port: 2,
        });
        assert_eq!(map, MAP6);
    }

    #[test]
    fn records_without_mappings_read_as_before() {
        // A record written before host ports were stored has no `portMappings` field.
        let json =
            r#"{"containerId":"x","ifname":"eth0","hostVeth":"snwx","mtu":1450,"addresses":[]}"#;
        let a: Attachment = serde_json::from_str(json).unwrap();
        assert!(a.port_mappings.is_empty());
        let back = serde_json::to_string(&a).unwrap();
        assert!(!back.contains("portMappings"), "{back}");
        let with = attachment(
            "y",
            "10.77.1.5",
            vec![mapping(8080, Protocol::Sctp, Some("10.78.0.1"))],
        );
        let text = serde_json::to_string(&with).unwrap();
        assert!(
            text.contains(r#""portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"sctp","hostIP":"10.78.0.1"}]"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Attachment>(&text).unwrap(), with);
    }
}
