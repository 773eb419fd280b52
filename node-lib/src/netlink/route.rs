//! Unicast routes: add (replace), delete, dump per table.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use sinew_core::Family;

use super::{Netlink, NetlinkError, Result, address_family, check_prefix, unspecified};

/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;
/// Route installed by the kernel (e.g. prefix routes of addresses).
pub const RTPROT_KERNEL: u8 = 2;
/// Route installed "during boot"; what `ip route add` uses by default.
pub const RTPROT_BOOT: u8 = 3;
/// Route installed by the administrator.
pub const RTPROT_STATIC: u8 = 4;
/// A unicast route. Build one with [`Route::new`] and struct update syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network address.
    pub dst: IpAddr,
    /// Destination prefix length (0 for a default route).
    pub prefix: u8,
    /// Next hop, of the same family as `dst`.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// `scope link` (directly reachable destination) instead of `scope global`.
    pub scope_link: bool,
    /// `onlink`: treat the gateway as directly reachable on `oif` whatever the addresses.
    pub onlink: bool,
    /// Routing table; [`RT_TABLE_MAIN`] is 254. Tables above 255 are supported.
    pub table: u32,
    /// Route protocol ([`RTPROT_BOOT`], or a private id such as 0x5e for sinew routes).
    /// On deletion a non-zero protocol only matches routes of that protocol.
    pub protocol: u8,
    /// Path MTU (`RTAX_MTU` metric).
    pub mtu: Option<u32>,
    /// Preferred source address.
    pub src: Option<IpAddr>,
}

impl Route {
    /// A route to `dst/prefix` in the main table with protocol `boot` and nothing else set.
    pub fn new(dst: IpAddr, prefix: u8) -> Route {
        Route {
            dst,
            prefix,
            gateway: None,
            oif: None,
            scope_link: false,
            onlink: false,
            table: RT_TABLE_MAIN,
            protocol: RTPROT_BOOT,
            mtu: None,
            src: None,
        }
    }
}

impl Netlink {
    /// Adds the route, replacing an existing route to the same destination (so adding
    /// the same route twice is not an error).
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let op = "add route";
        let msg = route_message(op, route, false)?;
        self.ack(
            op,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the route matching destination, table, and (where set) gateway, output
    /// interface and protocol; `Ok(false)` if there was none.
    pub fn del_route(&mut self, route: &Route) -> Result<bool> {
        let op = "delete route";
        let msg = route_message(op, route, true)?;
        self.ack_if_exists(op, RouteNetlinkMessage::DelRoute(msg))
    }

    /// The unicast IPv4 (or, with `v6`, IPv6) routes in `table` (local, broadcast,
    /// blackhole and other special routes are left out).
    pub fn routes(&mut self, v6: bool, table: u32) -> Result<Vec<Route>> {
        let family = if v6 { Family::V6 } else { Family::V4 };
        let mut request = RouteMessage::default();
        request.header.address_family = address_family(family);
        let replies = self.dump("dump routes", RouteNetlinkMessage::GetRoute(request))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_from_message(r, family),
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }
}

fn route_message(op: &'static str, route: &Route, delete: bool) -> Result<RouteMessage> {
    check_prefix(op, route.dst, route.prefix)?;
    let family = Family::of(route.dst);
    for (what, ip) in [("gateway", route.gateway), ("source", route.src)] {
        if let Some(ip) = ip.filter(|ip| Family::of(*ip) != family) {
            return Err(NetlinkError::invalid(
                op,
                format!("{what} {ip} is not in the family of {}", route.dst),
            ));
        }
    }
    let mut msg = RouteMessage::default();
    let header = &mut msg.header;
    header.address_family = address_family(family);
    header.destination_prefix_length = route.prefix;
    header.table = u8::try_from(route.table).unwrap_or(0);
    header.protocol = RouteProtocol::from(route.protocol);
    if delete {
        header.scope = RouteScope::NoWhere; // wildcard when deleting
        header.kind = RouteType::Unspec;
    } else {
        header.scope = if route.scope_link {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        header.kind = RouteType::Unicast;
    }
    if route.onlink {
        header.flags = RouteFlags::Onlink;
    }
    msg.attributes = route_attributes(route, delete);
    Ok(msg)
}

fn route_attributes(route: &Route, delete: bool) -> Vec<RouteAttribute> {
    let mut attributes = vec![RouteAttribute::Table(route.table)];
    if route.prefix > 0 {
        attributes.push(RouteAttribute::Destination(route.dst.into()));
    }
    if let Some(gateway) = route.gateway {
        attributes.push(RouteAttribute::Gateway(gateway.into()));
    }
    attributes.extend(route.oif.map(RouteAttribute::Oif));
    if let Some(src) = route.src {
        attributes.push(RouteAttribute::PrefSource(src.into()));
    }
    if let Some(mtu) = route.mtu.filter(|_| !delete) {
        attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    attributes
}

fn route_from_message(msg: RouteMessage, family: Family) -> Option<Route> {
    let header = &msg.header;
    if header.kind != RouteType::Unicast || header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut route = Route {
        prefix: header.destination_prefix_length,
        scope_link: header.scope == RouteScope::Link,
        onlink: header.flags.contains(RouteFlags::Onlink),
        table: u32::from(header.table),
        protocol: u8::from(header.protocol),
        ..Route::new(unspecified(family), 0)
    };
    for attribute in msg.attributes {
        match attribute {
            RouteAttribute::Destination(a) => route.dst = route_ip(a)?,
            RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
            RouteAttribute::PrefSource(a) => route.src = route_ip(a),
            RouteAttribute::Oif(index) => route.oif = Some(index),
            RouteAttribute::Table(table) => route.table = table,
            RouteAttribute::Metrics(metrics) => route.mtu = mtu_of(&metrics),
            _ => {}
        }
    }
    Some(route)
}

fn mtu_of(metrics: &[RouteMetric]) -> Option<u32> {
    metrics.iter().find_map(|m| match m {
        RouteMetric::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

pub(super) fn route_ip(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_support::{PROTO_SINEW, netns_with_veth, v4};
    use crate::netns::test_support::have_root;

    #[test]
    fn a_gateway_of_another_family_is_refused() {
        let bad = Route {
            gateway: Some("fd00::1".parse().unwrap()),
            ..Route::new(v4("10.1.0.0"), 16)
        };
        assert!(matches!(
            route_message("add route", &bad, false),
            Err(NetlinkError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn routes_add_idempotent_list_delete() {
        if !have_root("routes_add_idempotent_list_delete") {
            return;
        }
        let (_ns, mut nl, t0) = netns_with_veth();
        nl.add_address(t0, v4("198.51.100.1"), 24, false).unwrap();
        nl.add_address(t0, "2001:db8::1".parse().unwrap(), 64, true)
            .unwrap();

        let r4 = Route {
            gateway: Some(v4("198.51.100.254")),
            oif: Some(t0),
            onlink: true,
            protocol: PROTO_SINEW,
            ..Route::new(v4("203.0.113.0"), 24)
        };
        let r4_table = Route {
            oif: Some(t0),
            scope_link: true,
            table: 1000,
            mtu: Some(1300),
            src: Some(v4("198.51.100.1")),
            ..Route::new(v4("203.0.113.128"), 25)
        };
        let r6 = Route {
            gateway: Some("2001:db8::fe".parse().unwrap()),
            oif: Some(t0),
            protocol: PROTO_SINEW,
            ..Route::new("2001:db8:1::".parse().unwrap(), 64)
        };
        for _ in 0..2 {
            nl.add_route(&r4).unwrap();
            nl.add_route(&r4_table).unwrap();
            nl.add_route(&r6).unwrap();
        }

        let main4 = nl.routes(false, RT_TABLE_MAIN).unwrap();
        assert_eq!(main4.iter().filter(|r| **r == r4).count(), 1, "{main4:?}");
        assert!(
            main4
                .iter()
                .any(|r| r.dst == v4("198.51.100.0") && r.protocol == RTPROT_KERNEL)
        );
        assert!(!main4.iter().any(|r| r.table != RT_TABLE_MAIN));
        let t1000 = nl.routes(false, 1000).unwrap();
        assert_eq!(t1000, vec![r4_table.clone()]);
        let main6 = nl.routes(true, RT_TABLE_MAIN).unwrap();
        let found6 = main6.iter().find(|r| r.dst == r6.dst).unwrap();
        assert_eq!(
            (found6.gateway, found6.protocol, found6.oif),
            (r6.gateway, PROTO_SINEW, Some(t0))
        );

        // a non-zero protocol only deletes routes of that protocol
        let other_proto = Route {
            protocol: RTPROT_STATIC,
            ..r4.clone()
        };
        assert!(!nl.del_route(&other_proto).unwrap());
        for r in [&r4, &r4_table, &r6] {
            assert!(nl.del_route(r).unwrap(), "{r:?}");
            assert!(!nl.del_route(r).unwrap(), "{r:?}");
        }
        assert!(!nl.routes(false, RT_TABLE_MAIN).unwrap().contains(&r4));
        assert!(nl.routes(false, 1000).unwrap().is_empty());
    }
}
