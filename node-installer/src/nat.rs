//! sinew's one nftables table (`inet sinew`):
//! - `natOutgoing`: traffic from a pool with `natOutgoing` to a destination outside every pool
//!   is masqueraded; traffic between pods never is;
//! - the VXLAN port accepts encapsulated packets only from the cluster's node addresses, so no
//!   other host can inject traffic that appears to come from a pod.
//!
//! The table is replaced as a whole in one transaction (`nft -f`), only when
//! its content changes, and removed on node clean-up; no other table is touched.

use std::io::Write;
use std::process::{Command, Stdio};

use sinew_crds::{Cidr, Family};

/// Name of the owned table (family `inet`).
pub use sinew_node_lib::consts::NFT_TABLE as TABLE;

/// One pool as NAT sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatPool {
    pub cidr: Cidr,
    pub nat_outgoing: bool,
}

fn set(name: &str, family: Family, members: &[Cidr]) -> String {
    let ty = match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let elements = if members.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = members.iter().map(Cidr::to_string).collect();
        format!(" elements = {{ {} }};", list.join(", "))
    };
    format!("    set {name} {{ type {ty}; flags interval;{elements} }}\n")
}

/// Who may send to this node's VXLAN port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPeers {
    pub port: u16,
    /// Every node's underlay address (this node's included).
    pub nodes: Vec<std::net::IpAddr>,
}

fn addresses(name: &str, family: Family, nodes: &[std::net::IpAddr]) -> String {
    let members: Vec<Cidr> = nodes
        .iter()
        .filter(|a| Family::of(**a) == family)
        .map(|a| Cidr::host(*a))
        .collect();
    set(name, family, &members)
}

/// The table's full definition for these pools (every pool in the cluster, so that traffic
/// to any pod is recognised as in-cluster) and VXLAN peers.
pub fn render(pools: &[NatPool], vxlan: &VxlanPeers) -> String {
    let of = |family: Family, only_nat: bool| -> Vec<Cidr> {
        let mut v: Vec<Cidr> = pools
            .iter()
            .filter(|p| p.cidr.family() == family && (!only_nat || p.nat_outgoing))
            .map(|p| p.cidr)
            .collect();
        v.sort();
        v.dedup();
        // nft refuses overlapping interval elements; keep only outermost prefixes.
        let outer: Vec<Cidr> = v
            .iter()
            .filter(|c| !v.iter().any(|o| o != *c && o.contains_cidr(c)))
            .copied()
            .collect();
        outer
    };
    let mut s =
        format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    s += &set("pods4", Family::V4, &of(Family::V4, false));
    s += &set("pods6", Family::V6, &of(Family::V6, false));
    s += &set("nat4", Family::V4, &of(Family::V4, true));
    s += &set("nat6", Family::V6, &of(Family::V6, true));
    s += &addresses("nodes4", Family::V4, &vxlan.nodes);
    s += &addresses("nodes6", Family::V6, &vxlan.nodes);
    s += "    chain postrouting {\n        type nat hook postrouting priority srcnat; policy accept;\n";
    s += "        ip saddr @nat4 ip daddr != @pods4 masquerade\n";
    s += "        ip6 saddr @nat6 ip6 daddr != @pods6 masquerade\n";
    s += "    }\n";
    let port = vxlan.port;
    s += "    chain vxlan-from-nodes-only {\n        type filter hook input priority filter - 10; policy accept;\n";
    s += &format!("        ip saddr != @nodes4 udp dport {port} counter drop\n");
    s += &format!("        ip6 saddr != @nodes6 udp dport {port} counter drop\n");
    s += "    }\n}\n";
    s
}

/// Errors of running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("running nft: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

fn nft(script: &str) -> Result<(), NatError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // Whatever happens while writing, the child is always waited for (no zombie).
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Ok(()),
    };
    let out = child.wait_with_output()?;
    if out.status.success() {
        written.map_err(NatError::from)
    } else {
        Err(NatError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Whether the table is in the kernel (someone may have flushed the ruleset since it was
/// applied: then it is applied again).
pub fn table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Replaces the table atomically.
pub fn apply(script: &str) -> Result<(), NatError> {
    nft(script)
}

/// Removes the table if it exists. Without the `nft` program there is nothing this agent
/// could have created, so that is not an error.
pub fn remove() -> Result<(), NatError> {
    match nft(&format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    )) {
        Err(NatError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
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
}
