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

use sinew_crds::{Cidr, Family};
use sinew_node_lib::hostport;
use sinew_node_lib::ipam::Store;
use sinew_node_lib::netlink::nftables::{self, NftError, Nftables, SinewTable};

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
}
