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
//! The table is declared once, as data ([`table`]: sets, chains and rules of the model in
//! [`sinew_node_lib::nft`]), and programmed over netlink by the generic encoder of
//! [`sinew_node_lib::netlink::nftables`], with no `nft` program: it is replaced as a whole in
//! one nf_tables transaction, only when the declared table differs from the last one applied
//! (compared as values) or is gone from the kernel, and removed on node clean-up; no other
//! table is touched. Its `nft` text ([`sinew_node_lib::nft::text`]) is what `nft -f` takes to
//! build the same table; the golden copies in `testdata/nftables` pin it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sinew_crds::{Cidr, Family};
use sinew_node_lib::consts::HOST_VETH_PREFIX;
use sinew_node_lib::hostport::{self, HostPort, Protocol};
use sinew_node_lib::ipam::Store;
use sinew_node_lib::netlink::nftables::{NftError, Nftables};
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

/// The regular chain holding the host ports' DNAT rules, jumped to from prerouting and output.
const CHAIN_HOSTPORTS: &str = "hostports";

/// sinew's table for these pools (every pool of the cluster, so that traffic to any pod is
/// recognised as in-cluster), VXLAN peers and host ports (every pod's, from the IPAM store):
/// the one place that says which sets, chains and rules exist. Sets keep their outermost
/// prefixes, sorted, so equal inputs give equal tables.
pub fn table(pools: &[NatPool], vxlan: &VxlanPeers, host_ports: &[HostPort]) -> Table {
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

/// Replaces the table atomically with `t`.
pub fn apply(t: &Table) -> Result<(), NatError> {
    Nftables::new()?.replace_table(t)?;
    Ok(())
}

/// Declares the table with every host port the IPAM store records (`declare` builds it from
/// them) and applies it when `needed` says so, returning it then with the number of host
/// ports. The store lock is held from reading the store until the kernel has the table: an
/// ADD records its host ports before adding them, so no host port can be recorded after the
/// read and added before the replace, which would drop it.
pub fn apply_with_store(
    store: &Store,
    declare: impl FnOnce(&[HostPort]) -> Table,
    needed: impl FnOnce(&Table) -> bool,
) -> Result<Option<(Table, usize)>, NatError> {
    store
        .read_locked(|state| {
            let host_ports = hostport::of_store(state);
            let t = declare(&host_ports);
            if !needed(&t) {
                return Ok(None);
            }
            apply(&t)?;
            Ok(Some((t, host_ports.len())))
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
    use sinew_node_lib::netns::test_support::{have_root, new_netns};
    use sinew_node_lib::nft::{Value, text};

    /// The table in `nft` syntax for these pools and peers, without host ports.
    fn render(pools: &[NatPool], vxlan: &VxlanPeers) -> String {
        text::replace_script(&table(pools, vxlan, &[]))
    }

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
        use sinew_node_lib::hostport::{PortMapping, host_ports};
        let without = table(&[], &peers(), &[]);
        let empty = text::replace_script(&without);
        assert!(
            empty.contains("    map hostports4 { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }"),
            "{empty}"
        );
        assert!(
            empty.contains("        fib daddr type local jump hostports\n"),
            "{empty}"
        );
        let ports = host_ports(
            &[PortMapping {
                host_port: 54323,
                container_port: 8080,
                protocol: Protocol::Udp,
                host_ip: Some("10.99.0.10".parse().unwrap()),
            }],
            ["10.244.1.5".parse().unwrap()],
        );
        let with = table(&[], &peers(), &ports);
        let s = text::replace_script(&with);
        assert!(
            s.contains("elements = { udp . 10.99.0.10 . 54323 : 10.244.1.5 . 8080 }"),
            "{s}"
        );
        assert!(s.contains("elements = { 10.244.1.5 . 10.244.1.5 }"), "{s}");
        assert_ne!(
            with, without,
            "a new host port changes the table: the agent re-applies"
        );
        assert!(s.ends_with("    }\n}\n"), "{s}");
    }

    /// The elements of the set named `name`.
    fn elements(t: &Table, name: &str) -> Vec<Value> {
        let set = t.sets.iter().find(|s| s.name == name).unwrap();
        set.elements.iter().flat_map(|e| e.key.clone()).collect()
    }

    #[test]
    fn sets_are_sorted_without_duplicates_or_nested_prefixes() {
        let pools = [
            pool("10.244.0.0/16", true),
            pool("10.244.8.0/24", true),
            pool("10.245.0.0/16", false),
            pool("fd00::/56", true),
        ];
        let peers = VxlanPeers {
            port: 8472,
            nodes: vec![
                ip("10.99.1.11"),
                ip("fd99::1"),
                ip("10.99.0.10"),
                ip("10.99.1.11"),
            ],
        };
        let t = table(&pools, &peers, &[]);
        let host = |s: &str| Value::Prefix(Cidr::host(ip(s)));
        assert_eq!(
            (elements(&t, "nodes4"), elements(&t, "nodes6")),
            (
                vec![host("10.99.0.10"), host("10.99.1.11")],
                vec![host("fd99::1")]
            ),
            "sorted, without duplicates"
        );
        assert_eq!(
            elements(&t, "nat4").len() + elements(&t, "nat6").len(),
            2,
            "10.244.8.0/24 is inside 10.244.0.0/16"
        );
    }

    /// The agent re-applies when the declared table differs from the last one applied: equal
    /// inputs in another order give an equal table, any change an unequal one.
    #[test]
    fn the_table_is_compared_as_a_value() {
        let pools = [pool("10.244.0.0/16", true), pool("fd00::/56", false)];
        let mut peers = peers();
        let t = table(&pools, &peers, &[]);
        let reversed = [pools[1].clone(), pools[0].clone()];
        peers.nodes.reverse();
        assert_eq!(table(&reversed, &peers, &[]), t);
        peers.port = 8472;
        assert_ne!(table(&pools, &peers, &[]), t);
        assert_ne!(table(&pools[..1], &self::peers(), &[]), t);
        let no_nat = [pool("10.244.0.0/16", false), pool("fd00::/56", false)];
        assert_ne!(table(&no_nat, &self::peers(), &[]), t);
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
            table(&self.pools, &self.peers, &self.host_ports)
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
        let test = "the_kernel_holds_what_the_golden_copy_says";
        if !have_root(test) || !have_nft(test) {
            return;
        }
        for case in cases() {
            let golden = std::fs::read_to_string(case.golden_path()).unwrap();
            let by_nft = new_netns();
            nft(&by_nft, &["-f", "-"], Some(&golden));
            let by_sinew = new_netns();
            let mut nl = Nftables::in_netns(&by_sinew).unwrap();
            assert!(!nl.table_exists(TABLE).unwrap());
            nl.replace_table(&case.table()).unwrap();
            assert!(nl.table_exists(TABLE).unwrap());
            let (got, want) = (listing(&by_sinew), listing(&by_nft));
            assert_eq!(got.0, want.0, "{}", case.name);
            assert_eq!(got.1, want.1, "{}", case.name);
            assert!(got.0.contains("chain pod-sources-only"), "{}", got.0);
            if case.name == "dual-stack-vxlan-peers" {
                for line in [
                    "elements = { 10.244.0.0/16, 10.245.0.0/16 }",
                    "elements = { 10.99.0.10, 10.99.1.11 }",
                    "elements = { fd99::1 }",
                    "type nat hook postrouting priority srcnat; policy accept;",
                    "ip6 saddr @nat6 ip6 daddr != @pods6 masquerade",
                    "type filter hook input priority filter - 10; policy accept;",
                    "ip saddr != @nodes4 udp dport 8472 counter packets 0 bytes 0 drop",
                ] {
                    assert!(got.0.contains(line), "{line:?} missing from\n{}", got.0);
                }
            }
        }
    }

    /// Two IPv4 pools (one with natOutgoing), one IPv6 pool with natOutgoing, three nodes.
    fn realistic() -> Table {
        let pools = [
            pool("10.244.0.0/16", true),
            pool("10.245.0.0/16", false),
            pool("fd00:10:244::/56", true),
        ];
        let peers = VxlanPeers {
            port: 4789,
            nodes: vec![ip("192.168.10.11"), ip("192.168.10.12"), ip("fd00:99::13")],
        };
        table(&pools, &peers, &[])
    }

    /// The plugin's element operations against the table the agent declares: ADD before the
    /// agent declared the maps fails, a leftover element of the same key is replaced, DEL
    /// removes only what still maps to its pod and tolerates what is gone, CHECK names each
    /// difference.
    #[test]
    fn host_ports_are_added_replaced_checked_and_removed() {
        use sinew_node_lib::hostport::{self, PortMapping};
        let test = "host_ports_are_added_replaced_checked_and_removed";
        if !have_root(test) || !have_nft(test) {
            return;
        }
        let mapping = |protocol, host_ip: Option<&str>| PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol,
            host_ip: host_ip.map(ip),
        };
        let pod_a = hostport::host_ports(
            &[
                mapping(Protocol::Tcp, None),
                mapping(Protocol::Udp, Some("10.78.0.1")),
            ],
            [ip("10.244.1.5"), ip("fd00:10:244::5")],
        );
        assert_eq!(pod_a.len(), 3);
        let ns = new_netns();
        let mut nl = Nftables::in_netns(&ns).unwrap();
        let err = nl.add_host_ports(&pod_a).unwrap_err();
        assert!(err.is_not_found(), "no table yet: {err}");
        nl.remove_host_ports(&pod_a).unwrap();

        nl.replace_table(&realistic()).unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_a).unwrap().len(),
            5,
            "3 ports, 2 hairpins"
        );
        nl.add_host_ports(&pod_a).unwrap();
        nl.add_host_ports(&pod_a).unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_a).unwrap(),
            Vec::<String>::new()
        );
        let got = listing(&ns).0;
        for line in [
            "tcp . 8080 : 10.244.1.5 . 80",
            "udp . 10.78.0.1 . 8080 : 10.244.1.5 . 80",
            "tcp . 8080 : fd00:10:244::5 . 80",
            "10.244.1.5 . 10.244.1.5",
            "fd00:10:244::5 . fd00:10:244::5",
        ] {
            assert!(got.contains(line), "{line:?} missing from\n{got}");
        }

        // A leftover of a pod that is gone holds udp/8080 on 10.78.0.1: the next pod with
        // that key takes it over.
        let pod_b = hostport::host_ports(
            &[mapping(Protocol::Udp, Some("10.78.0.1"))],
            [ip("10.244.1.6")],
        );
        nl.add_host_ports(&pod_b).unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_b).unwrap(),
            Vec::<String>::new()
        );
        let a_now = nl.host_port_differences(&pod_a).unwrap();
        assert_eq!(
            a_now,
            vec!["host port udp 10.78.0.1 port 8080 -> 10.244.1.5:80 maps elsewhere".to_string()]
        );
        // Removing A leaves B's element alone, and takes A's hairpins.
        nl.remove_host_ports(&pod_a).unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_b).unwrap(),
            Vec::<String>::new()
        );
        let got = listing(&ns).0;
        assert!(!got.contains("10.244.1.5"), "{got}");
        assert!(!got.contains("fd00:10:244::5"), "{got}");
        assert!(
            got.contains("udp . 10.78.0.1 . 8080 : 10.244.1.6 . 80"),
            "{got}"
        );
        nl.remove_host_ports(&pod_a).unwrap();
        nl.remove_host_ports(&pod_b).unwrap();
        assert_eq!(nl.host_port_differences(&pod_b).unwrap().len(), 2);
        nl.delete_table(TABLE).unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_b).unwrap().len(),
            2,
            "no table: all missing"
        );
    }

    /// Writes a sysctl of the namespace (from a thread inside it).
    fn sysctl(ns: &NetNs, path: &'static str, value: &'static str) {
        ns.run_in(|| std::fs::write(path, value))
            .unwrap()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    fn udp_socket(ns: &NetNs, addr: &'static str) -> std::net::UdpSocket {
        let s = ns
            .run_in(|| std::net::UdpSocket::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
            .unwrap();
        s
    }

    /// A pod behind a node that routes to an outside host: the pod's packets leave
    /// masqueraded; VXLAN from a host that is not a node is dropped (and counted).
    #[test]
    fn pods_are_masqueraded_and_vxlan_is_filtered() {
        use sinew_node_lib::netlink::{Netlink, Route};
        let test = "pods_are_masqueraded_and_vxlan_is_filtered";
        if !have_root(test) || !have_nft(test) {
            return;
        }
        let (node, pod, outside) = (new_netns(), new_netns(), new_netns());
        let mut nl = Netlink::in_netns(&node).unwrap();
        nl.create_veth("to-pod", "eth0", &pod, 1500).unwrap();
        nl.create_veth("to-out", "eth0", &outside, 1500).unwrap();
        for (name, addr) in [("to-pod", "10.244.1.1"), ("to-out", "192.0.2.1")] {
            let link = nl.link_by_name(name).unwrap().unwrap();
            nl.add_address(link.index, ip(addr), 24, false).unwrap();
            nl.set_link_up(link.index).unwrap();
        }
        for (ns, addr, dst, prefix, gw) in [
            (&pod, "10.244.1.2", "0.0.0.0", 0, "10.244.1.1"),
            // a route back to the pods: without NAT the pod's own address would arrive
            (&outside, "192.0.2.2", "10.244.0.0", 16, "192.0.2.1"),
        ] {
            let mut nl = Netlink::in_netns(ns).unwrap();
            let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
            nl.add_address(eth0.index, ip(addr), 24, false).unwrap();
            nl.set_link_up(eth0.index).unwrap();
            nl.add_route(&Route {
                gateway: Some(ip(gw)),
                ..Route::new(ip(dst), prefix)
            })
            .unwrap();
        }
        sysctl(&node, "/proc/sys/net/ipv4/conf/all/forwarding", "1");

        let mut nft_nl = Nftables::in_netns(&node).unwrap();
        let pools = [pool("10.244.0.0/16", true)];
        let mut peers = VxlanPeers {
            port: 4789,
            nodes: vec![ip("192.0.2.9")],
        };
        nft_nl.replace_table(&table(&pools, &peers, &[])).unwrap();

        let rx = udp_socket(&outside, "192.0.2.2:9999");
        let tx = udp_socket(&pod, "10.244.1.2:0");
        tx.send_to(b"masq", "192.0.2.2:9999").unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).expect("the pod's packet arrives");
        assert_eq!(&buf[..n], b"masq");
        assert_eq!(
            from.ip(),
            ip("192.0.2.1"),
            "masqueraded to the node's address"
        );

        // VXLAN from 192.0.2.2, which is not a node: dropped before any socket sees it
        let vxlan = udp_socket(&node, "0.0.0.0:4789");
        let sender = udp_socket(&outside, "192.0.2.2:0");
        sender.send_to(b"vxlan", "192.0.2.1:4789").unwrap();
        assert!(vxlan.recv_from(&mut buf).is_err(), "dropped");
        let listed = listing(&node).0;
        assert!(
            listed.contains("ip saddr != @nodes4 udp dport 4789 counter packets 1 bytes 33 drop"),
            "{listed}"
        );
        // once it is a node, its VXLAN packets pass
        peers.nodes.push(ip("192.0.2.2"));
        nft_nl.replace_table(&table(&pools, &peers, &[])).unwrap();
        sender.send_to(b"vxlan", "192.0.2.1:4789").unwrap();
        let (n, from) = vxlan
            .recv_from(&mut buf)
            .expect("a node's VXLAN packet arrives");
        assert_eq!((&buf[..n], from.ip()), (&b"vxlan"[..], ip("192.0.2.2")));
    }
}
