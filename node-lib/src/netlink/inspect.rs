//! Read-only views of the routing state for diagnosis: every route of a family in every table,
//! special routes (blackhole, unreachable, prohibit) included, and the policy rules.

use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAttribute, RouteFlags, RouteMessage, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use sinew_core::Family;

use super::route::route_ip;
use super::{NLM_F_ACK, Netlink, Result, address_family};

fn route_address(ip: IpAddr) -> netlink_packet_route::route::RouteAddress {
    match ip {
        IpAddr::V4(a) => netlink_packet_route::route::RouteAddress::Inet(a),
        IpAddr::V6(a) => netlink_packet_route::route::RouteAddress::Inet6(a),
    }
}

/// What a route does with matching packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    Local,
    Broadcast,
    Blackhole,
    Unreachable,
    Prohibit,
    Other,
}

impl std::fmt::Display for RouteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouteKind::Unicast => "unicast",
            RouteKind::Local => "local",
            RouteKind::Broadcast => "broadcast",
            RouteKind::Blackhole => "blackhole",
            RouteKind::Unreachable => "unreachable",
            RouteKind::Prohibit => "prohibit",
            RouteKind::Other => "other",
        })
    }
}

/// One route of any table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpAddr,
    pub prefix: u8,
    pub table: u32,
    pub protocol: u8,
    pub kind: RouteKind,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
}

/// One policy routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    /// `from` selector (`None`: all).
    pub src: Option<(IpAddr, u8)>,
    /// `to` selector (`None`: all).
    pub dst: Option<(IpAddr, u8)>,
    /// Other selectors (fwmark, input/output interface) narrow the rule to some packets.
    pub narrowed: bool,
    /// The table it looks up (for `lookup` rules).
    pub table: u32,
    pub action: RuleKind,
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Lookup,
    Blackhole,
    Unreachable,
    Prohibit,
    Other,
}

impl Netlink {
    /// Every route of the family in every table (cloned cache entries left out).
    pub fn all_routes(&mut self, family: Family) -> Result<Vec<RouteEntry>> {
        let mut request = RouteMessage::default();
        request.header.address_family = address_family(family);
        let replies = self.dump("dump all routes", RouteNetlinkMessage::GetRoute(request))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_entry(r, family),
                _ => None,
            })
            .collect())
    }

    /// The kernel's input route lookup for a packet from `src` to `dst` arriving on interface
    /// `iif` (`ip route get DST from SRC iif DEV`): `Ok(true)` when it is accepted, `Ok(false)`
    /// when the kernel refuses its source: reverse-path filtering (the kernel routes `src` out
    /// of another interface and the filter is strict, or nowhere and it is loose) answers
    /// `EXDEV` for a forwarded packet and `EINVAL` ("martian source") for a local one. Callers
    /// pass ordinary unicast addresses, so no other martian rule applies.
    pub fn input_accepted(&mut self, src: IpAddr, dst: IpAddr, iif: u32) -> Result<bool> {
        let op = "input route lookup";
        let mut request = RouteMessage::default();
        request.header.address_family = address_family(Family::of(dst));
        let bits = if dst.is_ipv4() { 32 } else { 128 };
        request.header.destination_prefix_length = bits;
        request.header.source_prefix_length = bits;
        request
            .attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        request
            .attributes
            .push(RouteAttribute::Source(route_address(src)));
        request.attributes.push(RouteAttribute::Iif(iif));
        match self.request(op, RouteNetlinkMessage::GetRoute(request), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::EXDEV | libc::EINVAL)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The policy rules of the family, in priority order.
    pub fn rules(&mut self, family: Family) -> Result<Vec<Rule>> {
        let mut request = RuleMessage::default();
        request.header.family = address_family(family);
        let replies = self.dump("dump rules", RouteNetlinkMessage::GetRule(request))?;
        let mut rules: Vec<Rule> = replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Some(rule(r)),
                _ => None,
            })
            .collect();
        rules.sort_by_key(|r| r.priority);
        Ok(rules)
    }
}

fn route_entry(msg: RouteMessage, family: Family) -> Option<RouteEntry> {
    let header = &msg.header;
    if header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let kind = match header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        RouteType::Broadcast => RouteKind::Broadcast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Prohibit => RouteKind::Prohibit,
        _ => RouteKind::Other,
    };
    let mut entry = RouteEntry {
        dst: super::unspecified(family),
        prefix: header.destination_prefix_length,
        table: u32::from(header.table),
        protocol: u8::from(header.protocol),
        kind,
        oif: None,
        gateway: None,
    };
    for attribute in &msg.attributes {
        match attribute {
            RouteAttribute::Destination(a) => entry.dst = route_ip(a.clone())?,
            RouteAttribute::Gateway(a) => entry.gateway = route_ip(a.clone()),
            RouteAttribute::Oif(index) => entry.oif = Some(*index),
            RouteAttribute::Table(table) => entry.table = *table,
            _ => {}
        }
    }
    Some(entry)
}

fn rule(msg: RuleMessage) -> Rule {
    let header = &msg.header;
    let mut rule = Rule {
        priority: 0,
        src: None,
        dst: None,
        narrowed: false,
        table: u32::from(header.table),
        action: match header.action {
            RuleAction::ToTable => RuleKind::Lookup,
            RuleAction::Blackhole => RuleKind::Blackhole,
            RuleAction::Unreachable => RuleKind::Unreachable,
            RuleAction::Prohibit => RuleKind::Prohibit,
            _ => RuleKind::Other,
        },
    };
    for attribute in &msg.attributes {
        match attribute {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Source(ip) => rule.src = Some((*ip, header.src_len)),
            RuleAttribute::Destination(ip) => rule.dst = Some((*ip, header.dst_len)),
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::FwMark(_)
            | RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::UidRange(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_) => rule.narrowed = true,
            _ => {}
        }
    }
    rule
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::netlink::Route;
    use crate::netns::test_support::{have_root, new_netns};

    /// Strict reverse-path filtering, asked of the kernel: a source routed back through the
    /// interface it arrives on passes, one routed out of another interface does not.
    #[test]
    fn the_kernel_says_which_sources_reverse_path_filtering_drops() {
        let test = "the_kernel_says_which_sources_reverse_path_filtering_drops";
        if !have_root(test) {
            return;
        }
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (node, peer, other) = (new_netns(), new_netns(), new_netns());
        let mut nl = Netlink::in_netns(&node).unwrap();
        nl.create_veth("eth0", "eth0", &peer, 1500).unwrap();
        nl.create_veth("eth1", "eth0", &other, 1500).unwrap();
        for (dev, addr) in [("eth0", "192.0.2.1"), ("eth1", "203.0.113.1")] {
            let link = nl.link_by_name(dev).unwrap().unwrap();
            nl.add_address(link.index, ip(addr), 24, false).unwrap();
            nl.set_link_up(link.index).unwrap();
        }
        let eth0 = nl.link_by_name("eth0").unwrap().unwrap().index;
        // The peer's pods (198.51.100.0/24) are routed out of eth1: asymmetric.
        nl.add_route(&Route {
            gateway: Some(ip("203.0.113.2")),
            ..Route::new(ip("198.51.100.0"), 24)
        })
        .unwrap();
        node.run_in(|| std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "1"))
            .unwrap()
            .unwrap();
        let local = ip("192.0.2.1");
        assert!(nl.input_accepted(ip("192.0.2.2"), local, eth0).unwrap());
        assert!(
            !nl.input_accepted(ip("198.51.100.5"), local, eth0).unwrap(),
            "strict"
        );
        node.run_in(|| std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "2"))
            .unwrap()
            .unwrap();
        assert!(
            nl.input_accepted(ip("198.51.100.5"), local, eth0).unwrap(),
            "loose"
        );
    }
}
