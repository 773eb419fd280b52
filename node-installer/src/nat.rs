//! sinew's one nftables table (`inet sinew`):
//! - `natOutgoing`: traffic from a pool with `natOutgoing` to a destination outside every pool
//!   is masqueraded; traffic between pods never is;
//! - the VXLAN port accepts encapsulated packets only from the cluster's node addresses, so no
//!   other host can inject traffic that appears to come from a pod;
//! - a pod sends only from its own addresses: a packet arriving on a pod's veth whose source
//!   is not routed back to that veth is dropped before connection tracking (anti-spoofing:
//!   no pod can send as another pod or as a node; IPv6 link-local sources, used by neighbour
//!   discovery, excepted);
//! - pods' host ports ([`sinew_node_lib::hostport`]): the maps are declared here with every
//!   host port the IPAM store records ([`apply_with_store`]); the plugin adds and removes a
//!   pod's elements itself at ADD and DEL.
//!
//! The table is programmed over netlink ([`sinew_node_lib::netlink::nftables`]), with no
//! `nft` program: it is replaced as a whole in one nf_tables transaction, only when its
//! content changes, and removed on node clean-up; no other table is touched.
//!
//! [`render`] still gives the table in `nft` syntax: the agent compares it to decide when
//! to re-apply, it is what `nft list table inet sinew` shows, and `nft -f` accepts it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sinew_crds::{Cidr, Family};
use sinew_node_lib::consts::HOST_VETH_PREFIX;
use sinew_node_lib::hostport::{self, HostPort, Protocol};
use sinew_node_lib::ipam::Store;
use sinew_node_lib::netlink::nftables::{self, NftError, Nftables, SinewTable};
use sinew_node_lib::nft::{
    Chain, ChainKind, DataType, Dir, Element, Expr, Field, Hook, NamedPriority, Op, Policy,
    Priority, Rule, Set, Table, Verdict,
};

/// Name of the owned table (family `inet`).
pub use sinew_node_lib::consts::NFT_TABLE as TABLE;

/// One pool as NAT sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatPool {
    pub cidr: Cidr,
    pub nat_outgoing: bool,
}

/// Who may send to this node's VXLAN port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPeers {
    pub port: u16,
    /// Every node's underlay address (this node's included).
    pub nodes: Vec<std::net::IpAddr>,
}

/// Both families' outermost prefixes (nft and the kernel refuse overlapping intervals).
fn outermost(cidrs: &[Cidr]) -> Vec<Cidr> {
    let mut v = nftables::outermost(cidrs, Family::V4);
    v.extend(nftables::outermost(cidrs, Family::V6));
    v
}

/// The table's content for these pools (every pool in the cluster, so that traffic to any
/// pod is recognised as in-cluster) and VXLAN peers, normalised: each set sorted, without
/// duplicates or nested prefixes.
pub fn table(pools: &[NatPool], vxlan: &VxlanPeers) -> SinewTable {
    let all: Vec<Cidr> = pools.iter().map(|p| p.cidr).collect();
    let nat: Vec<Cidr> = pools
        .iter()
        .filter(|p| p.nat_outgoing)
        .map(|p| p.cidr)
        .collect();
    let hosts: Vec<Cidr> = vxlan.nodes.iter().map(|a| Cidr::host(*a)).collect();
    SinewTable {
        pods: outermost(&all),
        nat: outermost(&nat),
        nodes: outermost(&hosts).iter().map(Cidr::network).collect(),
        vxlan_port: vxlan.port,
        host_ports: Vec::new(),
    }
}

fn set(name: &str, family: Family, members: &[Cidr]) -> String {
    let ty = match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let list: Vec<String> = members
        .iter()
        .filter(|c| c.family() == family)
        .map(Cidr::to_string)
        .collect();
    let elements = if list.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", list.join(", "))
    };
    format!("    set {name} {{ type {ty}; flags interval;{elements} }}\n")
}

/// The table in `nft -f` syntax, as one transaction that replaces it.
pub fn render_table(t: &SinewTable) -> String {
    let nodes: Vec<Cidr> = t.nodes.iter().map(|a| Cidr::host(*a)).collect();
    let mut s =
        format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    s += &set("pods4", Family::V4, &t.pods);
    s += &set("pods6", Family::V6, &t.pods);
    s += &set("nat4", Family::V4, &t.nat);
    s += &set("nat6", Family::V6, &t.nat);
    s += &set("nodes4", Family::V4, &nodes);
    s += &set("nodes6", Family::V6, &nodes);
    s += "    set linklocal6 { type ipv6_addr; flags interval; elements = { fe80::/10 }; }\n";
    s += "    chain postrouting {\n        type nat hook postrouting priority srcnat; policy accept;\n";
    s += "        ip saddr @nat4 ip daddr != @pods4 masquerade\n";
    s += "        ip6 saddr @nat6 ip6 daddr != @pods6 masquerade\n";
    s += "    }\n";
    let port = t.vxlan_port;
    s += "    chain vxlan-from-nodes-only {\n        type filter hook input priority filter - 10; policy accept;\n";
    s += &format!("        ip saddr != @nodes4 udp dport {port} counter drop\n");
    s += &format!("        ip6 saddr != @nodes6 udp dport {port} counter drop\n");
    s += "    }\n";
    s += "    chain pod-sources-only {\n        type filter hook prerouting priority raw; policy accept;\n";
    s += "        meta nfproto ipv4 iifname \"snw*\" fib saddr . iif oif missing counter drop\n";
    s += "        meta nfproto ipv6 iifname \"snw*\" ip6 saddr != @linklocal6 fib saddr . iif oif missing counter drop\n";
    s += "    }\n";
    s += &nftables::render_host_ports(&t.host_ports);
    s += "}\n";
    s
}

/// The regular chain holding the host ports' DNAT rules, jumped to from prerouting and output.
const CHAIN_HOSTPORTS: &str = "hostports";

/// sinew's table for these pools (every pool of the cluster, so that traffic to any pod is
/// recognised as in-cluster), VXLAN peers and host ports (every pod's, from the IPAM store):
/// the one place that says which sets, chains and rules exist. Sets keep their outermost
/// prefixes, sorted, so equal inputs give equal tables.
pub fn nft_table(pools: &[NatPool], vxlan: &VxlanPeers, host_ports: &[HostPort]) -> Table {
    use Family::{V4, V6};
    let pods: Vec<Cidr> = pools.iter().map(|p| p.cidr).collect();
    let nat: Vec<Cidr> = pools
        .iter()
        .filter(|p| p.nat_outgoing)
        .map(|p| p.cidr)
        .collect();
    let nodes: Vec<Cidr> = vxlan.nodes.iter().map(|a| Cidr::host(*a)).collect();
    let saddr = |f| Field::Addr(f, Dir::Source);
    let daddr = |f| Field::Addr(f, Dir::Destination);
    let named = |base: &str, f| match f {
        V4 => format!("{base}4"),
        V6 => format!("{base}6"),
    };
    let from_pods = || Expr::IifName(format!("{HOST_VETH_PREFIX}*"));
    let drop = || Expr::Verdict(Verdict::Drop);
    let (accept, filter, nat_type) = (Policy::Accept, ChainKind::Filter, ChainKind::Nat);
    let srcnat = Priority::named(NamedPriority::SrcNat);
    let filter_minus_10 = Priority::Named(NamedPriority::Filter, -10);

    let mut sets = Vec::new();
    for (base, members) in [("pods", &pods), ("nat", &nat), ("nodes", &nodes)] {
        for f in [V4, V6] {
            sets.push(Set::prefixes(&named(base, f), f, members));
        }
    }
    sets.push(Set::prefixes("linklocal6", V6, &[link_local_v6()]));
    // Host ports: the DNAT maps and the hairpin sets, with every pod's elements.
    let elements = hostport::elements(host_ports);
    let of = |set: &str| -> Vec<Element> {
        elements
            .iter()
            .filter(|(s, _)| *s == set)
            .map(|(_, e)| e.clone())
            .collect()
    };
    let (proto, service) = (DataType::InetProto, DataType::InetService);
    for (f, on_address, any) in [
        (V4, hostport::MAP4, hostport::MAP4_ANY),
        (V6, hostport::MAP6, hostport::MAP6_ANY),
    ] {
        let to = [DataType::addr(f), service];
        let key = [proto, DataType::addr(f), service];
        sets.push(Set::map(on_address, key, to).with_elements(of(on_address)));
        sets.push(Set::map(any, [proto, service], to).with_elements(of(any)));
    }
    for (f, hairpin) in [(V4, hostport::HAIRPIN4), (V6, hostport::HAIRPIN6)] {
        sets.push(Set::new(hairpin, [DataType::addr(f); 2]).with_elements(of(hairpin)));
    }

    let masquerade = |f| {
        Rule::new([
            Expr::in_set(saddr(f), &named("nat", f)),
            Expr::not_in_set(daddr(f), &named("pods", f)),
            Expr::Masquerade,
        ])
    };
    let vxlan_from_others = |f| {
        Rule::new([
            Expr::not_in_set(saddr(f), &named("nodes", f)),
            Expr::Port {
                protocol: Protocol::Udp,
                dir: Dir::Destination,
                port: vxlan.port,
            },
            Expr::Counter,
            drop(),
        ])
    };
    let spoofed = |f| {
        let mut exprs = vec![Expr::NfProto(f), from_pods()];
        if f == V6 {
            exprs.push(Expr::not_in_set(saddr(V6), "linklocal6"));
        }
        exprs.extend([Expr::FibSourceNotViaInput, Expr::Counter, drop()]);
        Rule::new(exprs)
    };
    let dnat = |f, map: &str, on_address: bool| {
        let mut key = vec![Field::L4Proto];
        key.extend(on_address.then_some(daddr(f)));
        key.push(Field::ThPort(Dir::Destination));
        Rule::new([
            Expr::NfProto(f),
            Expr::DnatMap {
                family: f,
                key,
                map: map.to_string(),
            },
        ])
    };
    let hairpin = |f, set: &str| {
        Rule::new([
            Expr::Lookup {
                key: vec![saddr(f), daddr(f)],
                op: Op::Eq,
                set: set.to_string(),
            },
            Expr::Masquerade,
        ])
    };
    let to_local = || Rule::new([Expr::FibDaddrLocal, Expr::jump(CHAIN_HOSTPORTS)]);
    let loopback = |dir| Expr::Addr {
        dir,
        op: Op::Eq,
        prefix: ipv4_loopback(),
    };

    let chains = vec![
        // natOutgoing: from a pool with it to outside every pool.
        Chain::base("postrouting", nat_type, Hook::Postrouting, srcnat, accept)
            .with_rules([masquerade(V4), masquerade(V6)]),
        // VXLAN only from the cluster's nodes, so no other host can inject traffic that
        // appears to come from a pod.
        Chain::base(
            "vxlan-from-nodes-only",
            filter,
            Hook::Input,
            filter_minus_10,
            accept,
        )
        .with_rules([vxlan_from_others(V4), vxlan_from_others(V6)]),
        // A pod sends only from its own addresses, checked before connection tracking; IPv6
        // link-local sources (neighbour discovery, never routed off the link) excepted.
        Chain::base(
            "pod-sources-only",
            filter,
            Hook::Prerouting,
            Priority::named(NamedPriority::Raw),
            accept,
        )
        .with_rules([spoofed(V4), spoofed(V6)]),
        // Host ports: traffic to a local address on a mapped port goes to its pod (`::1` is
        // left alone: the kernel never routes it to another host).
        Chain::regular(CHAIN_HOSTPORTS).with_rules([
            Rule::new([
                Expr::Addr {
                    dir: Dir::Destination,
                    op: Op::Eq,
                    prefix: Cidr::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                },
                Expr::Verdict(Verdict::Return),
            ]),
            dnat(V4, hostport::MAP4, true),
            dnat(V4, hostport::MAP4_ANY, false),
            dnat(V6, hostport::MAP6, true),
            dnat(V6, hostport::MAP6_ANY, false),
        ]),
        // ... from other hosts,
        Chain::base(
            "hostports-prerouting",
            nat_type,
            Hook::Prerouting,
            Priority::named(NamedPriority::DstNat),
            accept,
        )
        .with_rules([to_local()]),
        // ... and from the node itself (`dstnat` is a prerouting name: output takes the number).
        Chain::base(
            "hostports-output",
            nat_type,
            Hook::Output,
            Priority::Number(NamedPriority::DstNat.value()),
            accept,
        )
        .with_rules([to_local()]),
        // A pod reaching its own host port, and the node's connections from 127.0.0.1,
        // masqueraded.
        Chain::base(
            "hostports-postrouting",
            nat_type,
            Hook::Postrouting,
            srcnat,
            accept,
        )
        .with_rules([
            hairpin(V4, hostport::HAIRPIN4),
            hairpin(V6, hostport::HAIRPIN6),
            Rule::new([
                loopback(Dir::Source),
                Expr::CtDnat(Op::Eq),
                Expr::Masquerade,
            ]),
        ]),
        // `route_localnet` on a host veth (for host ports on 127.0.0.1) must not let its pod
        // reach the node's loopback services: only host-port connections pass.
        Chain::base(
            "hostports-loopback-guard",
            filter,
            Hook::Input,
            filter_minus_10,
            accept,
        )
        .with_rules([Rule::new([
            from_pods(),
            loopback(Dir::Destination),
            Expr::CtDnat(Op::Neq),
            Expr::Counter,
            drop(),
        ])]),
    ];
    Table {
        name: TABLE.to_string(),
        sets,
        chains,
    }
}

/// `fe80::/10`: the link-local range IPv6 neighbour discovery uses.
fn link_local_v6() -> Cidr {
    let fe80 = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0));
    Cidr::new_truncating(fe80, 10).unwrap_or_else(|_| Cidr::host(fe80))
}

/// `127.0.0.0/8`.
fn ipv4_loopback() -> Cidr {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    Cidr::new_truncating(localhost, 8).unwrap_or_else(|_| Cidr::host(localhost))
}

/// The table's full definition for these pools and VXLAN peers, in `nft` syntax
/// ([`render_table`] of [`table`]).
pub fn render(pools: &[NatPool], vxlan: &VxlanPeers) -> String {
    render_table(&table(pools, vxlan))
}

/// Errors of programming the table.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The kernel (or the netlink socket) refused; nothing was changed.
    #[error(transparent)]
    Nftables(#[from] NftError),
    /// The IPAM store (the host ports to declare) could not be read; nothing was changed.
    #[error("reading the IPAM store for the host ports: {0}")]
    Store(std::io::Error),
}

/// Whether the table is in the kernel (someone may have flushed the ruleset since it was
/// applied: then it is applied again). An error counts as "no": applying then reports it.
pub fn table_exists() -> bool {
    match Nftables::new().and_then(|mut nft| nft.table_exists(TABLE)) {
        Ok(exists) => exists,
        Err(error) => {
            tracing::debug!(%error, "cannot tell whether the nftables table exists");
            false
        }
    }
}

/// Replaces the table atomically with this content.
pub fn apply_table(t: &SinewTable) -> Result<(), NatError> {
    Nftables::new()?.replace_sinew_table(t)?;
    Ok(())
}

/// Declares `t` with every host port the IPAM store records, when `needed` says so for its
/// rendering (which it returns then). The store lock is held from reading the store until the
/// kernel has the table: an ADD records its host ports before adding them, so no host port can
/// be recorded after the read and added before the replace, which would drop it.
pub fn apply_with_store(
    store: &Store,
    mut t: SinewTable,
    needed: impl FnOnce(&str) -> bool,
) -> Result<Option<(String, usize)>, NatError> {
    store
        .read_locked(|state| {
            t.host_ports = hostport::of_store(state);
            let script = render_table(&t);
            if !needed(&script) {
                return Ok(None);
            }
            apply_table(&t)?;
            Ok(Some((script, t.host_ports.len())))
        })
        .map_err(NatError::Store)?
}

/// Removes the table if it exists. A kernel without nf_tables cannot hold anything this
/// agent created, so that is not an error.
pub fn remove() -> Result<(), NatError> {
    match Nftables::new().and_then(|mut nft| nft.delete_table(TABLE)) {
        Err(e) if e.is_unsupported() => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_node_lib::netns::NetNs;
    use sinew_node_lib::nft::text;

    #[test]
    fn masquerades_only_nat_pools_towards_outside_every_pool() {
        let pools = [
            NatPool {
                cidr: "10.244.0.0/16".parse().unwrap(),
                nat_outgoing: true,
            },
            NatPool {
                cidr: "10.245.0.0/16".parse().unwrap(),
                nat_outgoing: false,
            },
            NatPool {
                cidr: "fd00::/56".parse().unwrap(),
                nat_outgoing: true,
            },
        ];
        let s = render(&pools, &peers());
        assert!(s.contains("set pods4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16, 10.245.0.0/16 }; }"), "{s}");
        assert!(
            s.contains(
                "set nat4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 }; }"
            ),
            "{s}"
        );
        assert!(
            s.contains("set nat6 { type ipv6_addr; flags interval; elements = { fd00::/56 }; }"),
            "{s}"
        );
        assert!(s.contains("ip saddr @nat4 ip daddr != @pods4 masquerade"));
        assert!(
            s.starts_with("table inet sinew {}\ndelete table inet sinew\n"),
            "replaced in one transaction"
        );
    }

    fn peers() -> VxlanPeers {
        VxlanPeers {
            port: 4789,
            nodes: vec!["10.99.0.10".parse().unwrap(), "10.99.1.11".parse().unwrap()],
        }
    }

    #[test]
    fn vxlan_is_accepted_only_from_node_addresses() {
        let s = render(&[], &peers());
        assert!(
            s.contains("set nodes4 { type ipv4_addr; flags interval; elements = { 10.99.0.10/32, 10.99.1.11/32 }; }"),
            "{s}"
        );
        assert!(
            s.contains("set nodes6 { type ipv6_addr; flags interval; }"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr != @nodes4 udp dport 4789 counter drop"),
            "{s}"
        );
        assert!(
            s.contains("ip6 saddr != @nodes6 udp dport 4789 counter drop"),
            "{s}"
        );
    }

    #[test]
    fn empty_and_nested_sets_are_valid() {
        let s = render(
            &[
                NatPool {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    nat_outgoing: false,
                },
                NatPool {
                    cidr: "10.1.0.0/16".parse().unwrap(),
                    nat_outgoing: false,
                },
            ],
            &peers(),
        );
        assert!(
            s.contains("set nat4 { type ipv4_addr; flags interval; }"),
            "{s}"
        );
        assert!(
            s.contains("elements = { 10.0.0.0/8 }"),
            "nested prefixes collapse: {s}"
        );
    }

    #[test]
    fn host_ports_are_declared_with_the_table() {
        use sinew_node_lib::hostport::{PortMapping, Protocol, host_ports};
        let mut t = table(&[], &peers());
        let empty = render_table(&t);
        assert!(
            empty.contains("    map hostports4 { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }"),
            "{empty}"
        );
        assert!(
            empty.contains("        fib daddr type local jump hostports\n"),
            "{empty}"
        );
        t.host_ports = host_ports(
            &[PortMapping {
                host_port: 54323,
                container_port: 8080,
                protocol: Protocol::Udp,
                host_ip: Some("10.99.0.10".parse().unwrap()),
            }],
            ["10.244.1.5".parse().unwrap()],
        );
        let s = render_table(&t);
        assert!(
            s.contains("elements = { udp . 10.99.0.10 . 54323 : 10.244.1.5 . 8080 }"),
            "{s}"
        );
        assert!(s.contains("elements = { 10.244.1.5 . 10.244.1.5 }"), "{s}");
        assert_ne!(
            s, empty,
            "a new host port changes the rendering: the agent re-applies"
        );
        assert!(s.ends_with("    }\n}\n"), "{s}");
    }

    #[test]
    fn the_rendered_script_reads_back_as_the_table() {
        let pools = [
            NatPool {
                cidr: "10.244.0.0/16".parse().unwrap(),
                nat_outgoing: true,
            },
            NatPool {
                cidr: "10.244.8.0/24".parse().unwrap(),
                nat_outgoing: true,
            },
            NatPool {
                cidr: "10.245.0.0/16".parse().unwrap(),
                nat_outgoing: false,
            },
            NatPool {
                cidr: "fd00::/56".parse().unwrap(),
                nat_outgoing: true,
            },
        ];
        let peers = VxlanPeers {
            port: 8472,
            nodes: vec![
                "10.99.1.11".parse().unwrap(),
                "fd99::1".parse().unwrap(),
                "10.99.0.10".parse().unwrap(),
                "10.99.1.11".parse().unwrap(),
            ],
        };
        let t = table(&pools, &peers);
        assert_eq!(
            t.nodes,
            vec![
                "10.99.0.10".parse::<std::net::IpAddr>().unwrap(),
                "10.99.1.11".parse().unwrap(),
                "fd99::1".parse().unwrap()
            ],
            "sorted, without duplicates"
        );
        assert_eq!(t.nat.len(), 2, "10.244.8.0/24 is inside 10.244.0.0/16");
    }

    fn pool(cidr: &str, nat_outgoing: bool) -> NatPool {
        NatPool {
            cidr: cidr.parse().unwrap(),
            nat_outgoing,
        }
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    /// One representative input: the agent's pools, VXLAN peers and host ports.
    struct Case {
        name: &'static str,
        pools: Vec<NatPool>,
        peers: VxlanPeers,
        host_ports: Vec<HostPort>,
    }

    impl Case {
        fn table(&self) -> Table {
            nft_table(&self.pools, &self.peers, &self.host_ports)
        }

        fn golden_path(&self) -> std::path::PathBuf {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(GOLDEN_DIR)
                .join(format!("{}.nft", self.name))
        }
    }

    /// Where the golden copies of the table live (one `nft -f` script per case).
    const GOLDEN_DIR: &str = "testdata/nftables";

    fn cases() -> Vec<Case> {
        use sinew_node_lib::hostport::{PortMapping, host_ports};
        let mapping = |host_port, protocol, host_ip: Option<&str>| PortMapping {
            host_port,
            container_port: 8080,
            protocol,
            host_ip: host_ip.map(ip),
        };
        // The conformance spec's three pods on one port (127.0.0.1/TCP, node IP/TCP, node
        // IP/UDP), and a dual-stack pod on every local address plus SCTP on the node's IPv6.
        let mut ports = host_ports(
            &[mapping(54323, Protocol::Tcp, Some("127.0.0.1"))],
            [ip("10.77.1.5")],
        );
        ports.extend(host_ports(
            &[mapping(54323, Protocol::Tcp, Some("10.99.0.10"))],
            [ip("10.77.1.6")],
        ));
        ports.extend(host_ports(
            &[mapping(54323, Protocol::Udp, Some("10.99.0.10"))],
            [ip("10.77.1.7")],
        ));
        ports.extend(host_ports(
            &[
                mapping(80, Protocol::Tcp, None),
                mapping(5000, Protocol::Sctp, Some("fd99::10")),
            ],
            [ip("10.77.1.8"), ip("fd77::8")],
        ));
        ports.sort();
        vec![
            Case {
                name: "one-ipv4-pool",
                pools: vec![pool("10.244.0.0/16", true)],
                peers: peers(),
                host_ports: Vec::new(),
            },
            Case {
                name: "dual-stack-vxlan-peers",
                pools: vec![
                    pool("10.244.0.0/16", true),
                    pool("10.244.8.0/24", true),
                    pool("10.245.0.0/16", false),
                    pool("fd00:10:244::/56", true),
                ],
                peers: VxlanPeers {
                    port: 8472,
                    nodes: vec![
                        ip("10.99.1.11"),
                        ip("fd99::1"),
                        ip("10.99.0.10"),
                        ip("10.99.1.11"),
                    ],
                },
                host_ports: Vec::new(),
            },
            Case {
                name: "host-ports",
                pools: vec![pool("10.77.0.0/16", true), pool("fd77::/64", true)],
                peers: VxlanPeers {
                    port: 4789,
                    nodes: vec![ip("10.99.0.10"), ip("fd99::10")],
                },
                host_ports: ports,
            },
            Case {
                name: "nat-outgoing-off",
                pools: vec![
                    pool("10.244.0.0/16", false),
                    pool("fd00:10:244::/56", false),
                ],
                peers: VxlanPeers {
                    port: 4789,
                    nodes: vec![ip("fd99::1"), ip("fd99::2")],
                },
                host_ports: Vec::new(),
            },
        ]
    }

    /// Every case's table in `nft` syntax is its golden copy, and every golden copy is a
    /// case's. `SINEW_BLESS=1 cargo test -p sinew-node-installer nat::` rewrites them.
    #[test]
    fn the_table_is_its_golden_copy() {
        let bless = std::env::var("SINEW_BLESS").is_ok_and(|v| v == "1");
        let cases = cases();
        let mut stale = Vec::new();
        for case in &cases {
            let path = case.golden_path();
            let text = text::replace_script(&case.table());
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(golden) if golden == text => {}
                Ok(golden) => stale.push(format!(
                    "{}: differs\n--- golden\n{golden}--- now\n{text}",
                    path.display()
                )),
                Err(e) => stale.push(format!("{}: {e}", path.display())),
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN_DIR);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !cases.iter().any(|c| c.golden_path() == path) {
                if bless {
                    std::fs::remove_file(&path).unwrap();
                } else {
                    stale.push(format!("{}: no case renders it", path.display()));
                }
            }
        }
        assert!(
            stale.is_empty(),
            "golden copies of the nftables table are stale (regenerate with `SINEW_BLESS=1 cargo test -p sinew-node-installer nat::`):\n{}",
            stale.join("\n")
        );
    }

    /// The model declares the table the hand-written rendering declared: the same lines
    /// (sets are declared before chains now).
    #[test]
    fn the_model_declares_what_the_old_rendering_declared() {
        for case in cases() {
            let mut old = table(&case.pools, &case.peers);
            old.host_ports = case.host_ports.clone();
            let mut old: Vec<String> = render_table(&old).lines().map(String::from).collect();
            let new_text = text::replace_script(&case.table());
            let mut new: Vec<String> = new_text.lines().map(String::from).collect();
            old.sort();
            new.sort();
            assert_eq!(new, old, "{}", case.name);
        }
    }

    /// `nft ARGS` inside the namespace (the CLI only verifies here).
    fn nft(ns: &NetNs, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let name = ns
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &name, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec nft");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn have_nft(test: &str) -> bool {
        let ok = std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_ok();
        if !ok {
            eprintln!("*** SKIPPING {test}: needs the nft program to verify ***");
        }
        ok
    }

    /// What `nft list table inet sinew` says, as text and as JSON without handles.
    fn listing(ns: &NetNs) -> (String, serde_json::Value) {
        fn strip_handles(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    map.remove("handle");
                    map.values_mut().for_each(strip_handles);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(strip_handles),
                _ => {}
            }
        }
        let text = nft(ns, &["list", "table", "inet", TABLE], None);
        let json = nft(ns, &["-j", "list", "table", "inet", TABLE], None);
        let mut json: serde_json::Value = serde_json::from_str(&json).unwrap();
        strip_handles(&mut json);
        (text, json)
    }

    /// For every case, the kernel's view of the table sinew programs (over netlink) is its
    /// view of the golden copy as `nft -f` programs it, each in a throwaway namespace.
    #[test]
    fn the_kernel_holds_what_the_golden_copy_says() {
        use sinew_node_lib::netns::test_support::{have_root, new_netns};
        let test = "the_kernel_holds_what_the_golden_copy_says";
        if !have_root(test) || !have_nft(test) {
            return;
        }
        for case in cases() {
            let golden = std::fs::read_to_string(case.golden_path()).unwrap();
            let by_nft = new_netns();
            nft(&by_nft, &["-f", "-"], Some(&golden));
            let by_sinew = new_netns();
            let mut old = table(&case.pools, &case.peers);
            old.host_ports = case.host_ports.clone();
            Nftables::in_netns(&by_sinew)
                .unwrap()
                .replace_sinew_table(&old)
                .unwrap();
            let (got, want) = (listing(&by_sinew), listing(&by_nft));
            assert_eq!(got.0, want.0, "{}", case.name);
            assert_eq!(got.1, want.1, "{}", case.name);
            assert!(got.0.contains("chain pod-sources-only"), "{}", got.0);
        }
    }
}
