//! Node checks (pure): each turns what the agent observed on the node into named problems
//! with cause, evidence and fix. The agent gathers the observations (netlink, files, the IPAM
//! store) and reports the problems on the Node, as Events and in `sinew_node_problem{kind}`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sinew_crds::Cidr;
use sinew_crds::node::{InstallReport, Problem, ProblemKind};
use sinew_node_lib::consts::{
    HOST_VETH_PREFIX, MAIN_TABLE, PEER_ROUTE_PROTOCOL, POD_ROUTE_PROTOCOL, VXLAN_DEVICE,
};
use sinew_node_lib::netlink::{Link, RouteEntry, RouteKind, Rule, RuleKind};

/// The local table (addresses of this host).
const LOCAL_TABLE: u32 = 255;
/// The `default` table of the standard rule set.
const DEFAULT_TABLE: u32 = 253;

/// What one pass observed on the node.
#[derive(Debug, Default)]
pub struct Observed {
    pub links: Vec<Link>,
    /// Addresses per interface index (only gathered for interfaces the checks name).
    pub addresses: BTreeMap<u32, Vec<(IpAddr, u8)>>,
    /// Routes of both families in every table.
    pub routes: Vec<RouteEntry>,
    pub rules: Vec<Rule>,
    /// Host veths of the attachments in the IPAM store.
    pub recorded_veths: BTreeSet<String>,
}

/// Where pod traffic is: every pool's CIDR.
#[derive(Debug, Default)]
pub struct PodRanges {
    pub pools: Vec<(String, Cidr)>,
}

/// Another vendor's configuration wins the runtime's choice of conflist.
pub fn conflist_shadowed(install: &InstallReport) -> Option<Problem> {
    if !install.shadowed() {
        return None;
    }
    let chosen = install.chosen.clone().unwrap_or_default();
    let ours = install.conflist.clone().unwrap_or_default();
    Some(
        Problem::new(
            ProblemKind::ConflistShadowed,
            format!("the container runtime loads {chosen}, not sinew's {ours}: new pods get another network"),
        )
        .with_evidence(
            install
                .shadowing
                .iter()
                .map(|f| format!("{f} sorts before {ours} in the CNI configuration directory"))
                .collect(),
        )
        .with_fix(format!(
            "remove {chosen} (and the other CNI's DaemonSet) or give sinew a lower cni.confPriority; sinew never deletes other vendors' files"
        )),
    )
}

/// Interface names other CNIs leave behind.
fn foreign(name: &str) -> Option<&'static str> {
    const EXACT: [(&str, &str); 8] = [
        ("cni0", "bridge/flannel"),
        ("flannel.1", "flannel"),
        ("flannel-v6.1", "flannel"),
        ("vxlan.calico", "calico"),
        ("vxlan-v6.calico", "calico"),
        ("weave", "weave"),
        ("kube-bridge", "kube-router"),
        ("cilium_host", "cilium"),
    ];
    const PREFIX: [(&str, &str); 4] = [
        ("cali", "calico"),
        ("cilium_", "cilium"),
        ("lxc", "cilium"),
        ("flannel", "flannel"),
    ];
    EXACT
        .iter()
        .find(|(n, _)| *n == name)
        .or_else(|| PREFIX.iter().find(|(p, _)| name.starts_with(p)))
        .map(|(_, vendor)| *vendor)
}

fn describe_route(r: &RouteEntry, links: &[Link]) -> String {
    let dev = r
        .oif
        .and_then(|i| links.iter().find(|l| l.index == i))
        .map(|l| format!(" dev {}", l.name))
        .unwrap_or_default();
    let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let kind = if r.kind == RouteKind::Unicast {
        String::new()
    } else {
        format!("{} ", r.kind)
    };
    format!(
        "{kind}{}/{}{via}{dev} proto {} table {}",
        r.dst, r.prefix, r.protocol, r.table
    )
}

/// Whether the checks need the addresses of interface `name`.
pub fn wants_addresses(name: &str) -> bool {
    foreign(name).is_some() || name == "tunl0"
}

/// Leftovers of another CNI: its bridges, tunnels and veths, with addresses and routes.
/// `tunl0` counts only with an address or up (the kernel creates it when `ipip` loads).
pub fn foreign_interfaces(seen: &Observed) -> Option<Problem> {
    let mut evidence = Vec::new();
    let mut vendors = BTreeSet::new();
    for link in &seen.links {
        let vendor = match foreign(&link.name) {
            Some(v) => v,
            None if link.name == "tunl0"
                && (link.up
                    || seen
                        .addresses
                        .get(&link.index)
                        .is_some_and(|a| !a.is_empty())) =>
            {
                "calico (IPIP)"
            }
            None => continue,
        };
        vendors.insert(vendor);
        let addresses: Vec<String> = seen
            .addresses
            .get(&link.index)
            .into_iter()
            .flatten()
            .filter(|(ip, _)| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
            .map(|(ip, p)| format!("{ip}/{p}"))
            .collect();
        let routes: Vec<String> = seen
            .routes
            .iter()
            .filter(|r| r.oif == Some(link.index) && r.table != LOCAL_TABLE)
            .filter(|r| !matches!(r.dst, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
            .map(|r| describe_route(r, &seen.links))
            .collect();
        evidence.push(format!(
            "{} ({}, {}{}{}{})",
            link.name,
            vendor,
            link.kind.as_deref().unwrap_or("device"),
            if link.up { ", up" } else { ", down" },
            if addresses.is_empty() {
                String::new()
            } else {
                format!(", addresses {}", addresses.join(" "))
            },
            if routes.is_empty() {
                String::new()
            } else {
                format!(", routes: {}", routes.join("; "))
            },
        ));
    }
    if evidence.is_empty() {
        return None;
    }
    let vendors: Vec<&str> = vendors.into_iter().collect();
    Some(
        Problem::new(
            ProblemKind::ForeignInterfaces,
            format!(
                "interfaces of another CNI ({}) are on this node; their routes can capture pod traffic",
                vendors.join(", ")
            ),
        )
        .with_evidence(evidence)
        .with_fix(
            "remove the other CNI's DaemonSet and config, then delete its interfaces (`ip link delete NAME`) or reboot the node",
        ),
    )
}

fn sinew_device(name: &str) -> bool {
    name.starts_with(HOST_VETH_PREFIX) || name == VXLAN_DEVICE
}

fn within(inner: (IpAddr, u8), outer: &Cidr) -> bool {
    Cidr::new_truncating(inner.0, inner.1).is_ok_and(|c| outer.contains_cidr(&c))
}

fn overlaps(sel: (IpAddr, u8), pool: &Cidr) -> bool {
    Cidr::new_truncating(sel.0, sel.1).is_ok_and(|c| c.overlaps(pool))
}

/// Routes and policy rules not owned by sinew that capture traffic to or from a pool:
/// a route inside (or equal to) a pool's range in any table but the local one, and a rule
/// that sends pool traffic to another table holding such a route, or drops it.
pub fn route_conflicts(seen: &Observed, ranges: &PodRanges) -> Vec<Problem> {
    let name_of = |index: Option<u32>| {
        index
            .and_then(|i| seen.links.iter().find(|l| l.index == i))
            .map(|l| l.name.as_str())
    };
    let foreign_route = |r: &RouteEntry| {
        r.protocol != POD_ROUTE_PROTOCOL
            && r.protocol != PEER_ROUTE_PROTOCOL
            && r.table != LOCAL_TABLE
            && !matches!(r.kind, RouteKind::Local | RouteKind::Broadcast)
            && !name_of(r.oif).is_some_and(sinew_device)
    };
    let mut problems = Vec::new();
    for (pool, cidr) in &ranges.pools {
        let routes: Vec<&RouteEntry> = seen
            .routes
            .iter()
            .filter(|r| foreign_route(r) && within((r.dst, r.prefix), cidr))
            .collect();
        if !routes.is_empty() {
            problems.push(
                Problem::new(
                    ProblemKind::RouteConflict,
                    format!(
                        "{} route(s) not owned by sinew cover addresses of pool {pool} ({cidr}) and take its traffic",
                        routes.len()
                    ),
                )
                .with_evidence(
                    routes
                        .iter()
                        .map(|r| describe_route(r, &seen.links))
                        .collect(),
                )
                .with_fix("delete these routes (`ip route del ...`), and whatever installs them (another CNI, a cloud agent, a static configuration)"),
            );
        }
        // Rules: pool traffic sent elsewhere than the main table.
        let mut evidence = Vec::new();
        for rule in &seen.rules {
            let standard = rule.action == RuleKind::Lookup
                && (rule.table == MAIN_TABLE
                    || rule.priority == 0 && rule.table == LOCAL_TABLE
                    || rule.priority >= 32767 && rule.table == DEFAULT_TABLE);
            let selected = rule.src.is_none_or(|s| overlaps(s, cidr))
                && rule.dst.is_none_or(|d| overlaps(d, cidr));
            if standard || rule.narrowed || !selected {
                continue;
            }
            let steals = match rule.action {
                RuleKind::Lookup => table_takes(seen, rule.table, cidr),
                RuleKind::Blackhole | RuleKind::Unreachable | RuleKind::Prohibit => true,
                RuleKind::Other => false,
            };
            if steals {
                let sel = |s: Option<(IpAddr, u8)>| {
                    s.map_or("all".to_string(), |(ip, p)| format!("{ip}/{p}"))
                };
                evidence.push(format!(
                    "rule {}: from {} to {} {}",
                    rule.priority,
                    sel(rule.src),
                    sel(rule.dst),
                    match rule.action {
                        RuleKind::Lookup => format!("lookup {}", rule.table),
                        other => format!("{other:?}").to_lowercase(),
                    }
                ));
            }
        }
        if !evidence.is_empty() {
            problems.push(
                Problem::new(
                    ProblemKind::RouteConflict,
                    format!(
                        "policy rules send traffic of pool {pool} ({cidr}) past the main table, where sinew's routes are"
                    ),
                )
                .with_evidence(evidence)
                .with_fix("delete these rules (`ip rule del ...`) or narrow them so they do not match pod addresses (a cloud CNI's rules are the usual source)"),
            );
        }
    }
    problems
}

/// Whether `table` has a route that matches addresses of `pool` (a default route does).
fn table_takes(seen: &Observed, table: u32, pool: &Cidr) -> bool {
    seen.routes.iter().any(|r| {
        r.table == table && Cidr::new_truncating(r.dst, r.prefix).is_ok_and(|c| c.overlaps(pool))
    })
}

/// sinew's host veths that belong to no recorded attachment.
pub fn dangling_veths(seen: &Observed) -> Vec<String> {
    seen.links
        .iter()
        .filter(|l| l.name.starts_with(HOST_VETH_PREFIX) && l.kind.as_deref() == Some("veth"))
        .filter(|l| !seen.recorded_veths.contains(&l.name))
        .map(|l| l.name.clone())
        .collect()
}

/// The problem for dangling veths seen on two passes in a row.
pub fn dangling_problem(names: &[String], removed_after_secs: u64) -> Option<Problem> {
    (!names.is_empty()).then(|| {
        Problem::new(
            ProblemKind::DanglingVeth,
            format!(
                "{} host veth(s) of sinew belong to no pod sinew knows (a crashed ADD or a lost DEL); sinew removes them after {removed_after_secs} s",
                names.len()
            ),
        )
        .with_evidence(names.to_vec())
        .with_fix("nothing to do; to remove them now: `ip link delete NAME`")
    })
}

/// Traffic from a peer's pods that the kernel's reverse-path filter drops on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseDrop {
    pub peer: String,
    pub block: Cidr,
    /// The interface it arrives on (the underlay or the VXLAN device).
    pub device: String,
    /// `rp_filter` of `conf/all` and of the device, as read.
    pub all: Option<u8>,
    pub own: Option<u8>,
}

/// Strict reverse-path filtering on an interface sinew receives pod traffic on, where this
/// node routes the senders' block out of another interface (an asymmetric route): the kernel
/// itself was asked (`input_accepted`) and refused the source.
pub fn reverse_path_dropped(drops: &[ReverseDrop]) -> Option<Problem> {
    let first = drops.first()?;
    let show = |v: Option<u8>| v.map_or("?".to_string(), |v| v.to_string());
    Some(
        Problem::new(
            ProblemKind::RpFilterStrict,
            format!(
                "reverse-path filtering drops traffic of {} peer block(s) arriving on {}: this node routes their addresses out of another interface",
                drops.len(),
                first.device
            ),
        )
        .with_evidence(
            drops
                .iter()
                .map(|d| {
                    format!(
                        "from node {}'s block {} on {}: the kernel refuses `ip route get <this node> from {} iif {}` (rp_filter: all {}, {} {})",
                        d.peer,
                        d.block,
                        d.device,
                        d.block.nth(1).map_or_else(|| d.block.to_string(), |a| a.to_string()),
                        d.device,
                        show(d.all),
                        d.device,
                        show(d.own)
                    )
                })
                .collect(),
        )
        .with_fix(format!(
            "remove the route that sends these blocks elsewhere (see RouteConflict), or set net.ipv4.conf.{}.rp_filter=2 and net.ipv4.conf.all.rp_filter to 0 or 2 (loose keeps the anti-spoofing check)",
            first.device
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
            mtu: 1500,
            up,
            kind: kind.map(str::to_string),
            vxlan: None,
        }
    }

    fn route(dst: &str, prefix: u8, table: u32, protocol: u8, oif: Option<u32>) -> RouteEntry {
        RouteEntry {
            dst: dst.parse().unwrap(),
            prefix,
            table,
            protocol,
            kind: RouteKind::Unicast,
            oif,
            gateway: None,
        }
    }

    fn pools() -> PodRanges {
        PodRanges {
            pools: vec![("p".into(), "10.244.0.0/16".parse().unwrap())],
        }
    }

    fn healthy() -> Observed {
        Observed {
            links: vec![
                link(1, "lo", None, true),
                link(2, "eth0", None, true),
                link(3, "sinew.vxlan", Some("vxlan"), true),
                link(4, "snw000000000001", Some("veth"), true),
                link(5, "tunl0", Some("ipip"), false),
            ],
            routes: vec![
                route("0.0.0.0", 0, 254, 3, Some(2)),
                route("192.168.1.0", 24, 254, 2, Some(2)),
                route("10.244.1.0", 32, 254, 115, Some(4)),
                route("10.244.2.0", 26, 254, 116, Some(3)),
                route("10.244.1.0", 32, 255, 2, Some(4)),
            ],
            rules: vec![
                Rule {
                    priority: 0,
                    src: None,
                    dst: None,
                    narrowed: false,
                    table: 255,
                    action: RuleKind::Lookup,
                },
                Rule {
                    priority: 32766,
                    src: None,
                    dst: None,
                    narrowed: false,
                    table: 254,
                    action: RuleKind::Lookup,
                },
                Rule {
                    priority: 32767,
                    src: None,
                    dst: None,
                    narrowed: false,
                    table: 253,
                    action: RuleKind::Lookup,
                },
            ],
            recorded_veths: BTreeSet::from(["snw000000000001".to_string()]),
            ..Observed::default()
        }
    }

    #[test]
    fn a_healthy_node_has_no_problem() {
        let seen = healthy();
        assert_eq!(foreign_interfaces(&seen), None);
        assert!(route_conflicts(&seen, &pools()).is_empty());
        assert!(dangling_veths(&seen).is_empty());
    }

    #[test]
    fn a_leftover_bridge_and_its_route_are_named() {
        let mut seen = healthy();
        seen.links.push(link(9, "cni0", Some("bridge"), true));
        seen.addresses
            .insert(9, vec![("10.244.0.1".parse().unwrap(), 24)]);
        seen.routes.push(route("10.244.0.0", 16, 254, 2, Some(9)));
        let p = foreign_interfaces(&seen).unwrap();
        assert_eq!(p.kind, ProblemKind::ForeignInterfaces);
        assert!(
            p.evidence[0].contains("cni0 (bridge/flannel, bridge, up, addresses 10.244.0.1/24"),
            "{p:?}"
        );
        let conflicts = route_conflicts(&seen, &pools());
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert!(
            conflicts[0].evidence[0].contains("10.244.0.0/16 dev cni0 proto 2 table 254"),
            "{conflicts:?}"
        );
    }

    #[test]
    fn a_blackhole_inside_a_pool_conflicts_and_a_wider_route_does_not() {
        let mut seen = healthy();
        seen.routes.push(RouteEntry {
            kind: RouteKind::Blackhole,
            ..route("10.244.3.0", 26, 254, 3, None)
        });
        seen.routes.push(route("10.0.0.0", 8, 254, 3, Some(2)));
        let conflicts = route_conflicts(&seen, &pools());
        assert_eq!(conflicts.len(), 1);
        assert_eq!(
            conflicts[0].evidence,
            vec!["blackhole 10.244.3.0/26 proto 3 table 254".to_string()]
        );
    }

    #[test]
    fn a_rule_steering_pool_traffic_to_another_table_conflicts() {
        let mut seen = healthy();
        seen.rules.push(Rule {
            priority: 100,
            src: Some(("10.244.0.0".parse().unwrap(), 16)),
            dst: None,
            narrowed: false,
            table: 100,
            action: RuleKind::Lookup,
        });
        // Table 100 has a default route: pool traffic leaves by it.
        seen.routes.push(route("0.0.0.0", 0, 100, 3, Some(2)));
        let conflicts = route_conflicts(&seen, &pools());
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert!(
            conflicts.iter().any(|p| p.evidence
                == vec!["rule 100: from 10.244.0.0/16 to all lookup 100".to_string()])
        );
        // A rule for other sources, or one narrowed by a fwmark, is not.
        let mut seen = healthy();
        seen.rules.push(Rule {
            priority: 100,
            src: Some(("172.16.0.0".parse().unwrap(), 12)),
            dst: None,
            narrowed: false,
            table: 100,
            action: RuleKind::Lookup,
        });
        seen.rules.push(Rule {
            priority: 101,
            src: None,
            dst: None,
            narrowed: true,
            table: 100,
            action: RuleKind::Lookup,
        });
        seen.routes.push(route("0.0.0.0", 0, 100, 3, Some(2)));
        assert!(route_conflicts(&seen, &pools()).is_empty());
    }

    #[test]
    fn unrecorded_sinew_veths_dangle() {
        let mut seen = healthy();
        seen.links
            .push(link(7, "snw00000000dead", Some("veth"), true));
        seen.links
            .push(link(8, "snwnotaveth", Some("bridge"), true));
        assert_eq!(dangling_veths(&seen), vec!["snw00000000dead".to_string()]);
        let p = dangling_problem(&dangling_veths(&seen), 60).unwrap();
        assert_eq!(p.kind, ProblemKind::DanglingVeth);
    }

    #[test]
    fn a_shadowed_conflist_names_the_winner_and_the_fix() {
        let install = InstallReport {
            conflist: Some("10-sinew.conflist".into()),
            chosen: Some("05-other.conflist".into()),
            shadowing: vec!["05-other.conflist".into()],
            ..InstallReport::default()
        };
        let p = conflist_shadowed(&install).unwrap();
        assert!(
            p.message
                .contains("loads 05-other.conflist, not sinew's 10-sinew.conflist")
        );
        assert!(p.fix.unwrap().contains("cni.confPriority"));
        let fine = InstallReport {
            chosen: Some("10-sinew.conflist".into()),
            ..install
        };
        assert_eq!(conflist_shadowed(&fine), None);
    }
}
