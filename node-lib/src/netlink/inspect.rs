//! Read-only views of the routing state for diagnosis: every route of a family in every table,
//! special routes (blackhole, unreachable, prohibit) included, and the policy rules.

use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAttribute, RouteFlags, RouteMessage, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use sinew_core::Family;

use super::route::route_ip;
use super::{Netlink, Result, address_family};

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
