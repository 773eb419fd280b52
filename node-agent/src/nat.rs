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
    sets.push(Set::prefixes("linklocal6", V6, &[Cidr::link_local_v6()]));
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
        counters: Vec::new(),
        sets,
        chains,
    }
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
/// them) and hands it to `apply`, which applies it where needed and says whether it did;
/// returns it then with the number of host ports. The store lock is held from reading the
/// store until the kernel has the table: an ADD records its host ports before adding them,
/// so no host port can be recorded after the read and added before the replace, which would
/// drop it.
pub fn apply_with_store(
    store: &Store,
    declare: impl FnOnce(&[HostPort]) -> Table,
    apply: impl FnOnce(&Table) -> Result<bool, NatError>,
) -> Result<Option<(Table, usize)>, NatError> {
    store
        .read_locked(|state| {
            let host_ports = hostport::of_store(state);
            let t = declare(&host_ports);
            Ok(apply(&t)?.then_some((t, host_ports.len())))
        })
        .map_err(NatError::Store)?
}

/// Removes sinew's table `name` (this one, or NetworkPolicy's) if it exists. A kernel
/// without nf_tables cannot hold anything this agent created, so that is not an error.
pub fn remove_table(name: &str) -> Result<(), NatError> {
    match Nftables::new().and_then(|mut nft| nft.delete_table(name)) {
        Err(e) if e.is_unsupported() => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
