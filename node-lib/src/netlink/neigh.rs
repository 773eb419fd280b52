//! Neighbours (permanent ARP / NDP entries) and the VXLAN forwarding database (`AF_BRIDGE`
//! neighbours of a VXLAN device).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, Result, ip_family};

/// Neighbour state: a static entry that never expires.
pub const NUD_PERMANENT: u16 = 0x80;

/// A neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its link-layer address, when known and 6 bytes long.
    pub mac: Option<[u8; 6]>,
    /// `NUD_*` state bits, e.g. [`NUD_PERMANENT`].
    pub state: u16,
}

impl Netlink {
    /// Adds (or replaces) a permanent neighbour entry `ip -> mac` on the interface.
    pub fn add_neighbor(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let mut msg = neighbour_message(ip_family(ip), index, NeighbourFlags::empty());
        msg.attributes
            .push(NeighbourAttribute::Destination(ip.into()));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack(
            "add neighbour",
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the neighbour entry for `ip`; `Ok(false)` if there was none.
    pub fn del_neighbor(&mut self, index: u32, ip: IpAddr) -> Result<bool> {
        let mut msg = neighbour_message(ip_family(ip), index, NeighbourFlags::empty());
        msg.attributes
            .push(NeighbourAttribute::Destination(ip.into()));
        self.ack_if_exists("delete neighbour", RouteNetlinkMessage::DelNeighbour(msg))
    }

    /// The IPv4 and IPv6 neighbour entries of the interface.
    pub fn neighbors(&mut self, index: u32) -> Result<Vec<Neighbor>> {
        let replies = self.neighbour_dump("dump neighbours", AddressFamily::Unspec)?;
        Ok(replies
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(neighbor_from_message)
            .collect())
    }

    /// Adds (or replaces) the forwarding entry "`mac` is behind VTEP `dst`" on a VXLAN
    /// device (a permanent `AF_BRIDGE` neighbour with `NTF_SELF`).
    pub fn add_fdb(&mut self, vxlan_index: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        let mut msg = neighbour_message(AddressFamily::Bridge, vxlan_index, NeighbourFlags::Own);
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(dst.into()));
        self.ack(
            "add fdb entry",
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the forwarding entry for `mac` (with all its remotes); `Ok(false)` if
    /// there was none.
    pub fn del_fdb(&mut self, vxlan_index: u32, mac: [u8; 6]) -> Result<bool> {
        let mut msg = neighbour_message(AddressFamily::Bridge, vxlan_index, NeighbourFlags::Own);
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack_if_exists("delete fdb entry", RouteNetlinkMessage::DelNeighbour(msg))
    }

    /// The forwarding entries `(mac, remote VTEP)` of a VXLAN device.
    pub fn fdb(&mut self, vxlan_index: u32) -> Result<Vec<([u8; 6], IpAddr)>> {
        let replies = self.neighbour_dump("dump fdb", AddressFamily::Bridge)?;
        Ok(replies
            .into_iter()
            .filter(|m| m.header.ifindex == vxlan_index)
            .filter_map(|m| {
                let n = neighbor_from_message(m)?;
                Some((n.mac?, n.ip))
            })
            .collect())
    }

    fn neighbour_dump(
        &mut self,
        op: &'static str,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>> {
        let mut request = NeighbourMessage::default();
        request.header.family = family;
        let replies = self.dump(op, RouteNetlinkMessage::GetNeighbour(request))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }
}

fn neighbour_message(family: AddressFamily, index: u32, flags: NeighbourFlags) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = flags;
    msg
}

fn neighbor_from_message(msg: NeighbourMessage) -> Option<Neighbor> {
    let mut ip = None;
    let mut mac = None;
    for attribute in msg.attributes {
        match attribute {
            NeighbourAttribute::Destination(a) => ip = neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = l.as_slice().try_into().ok(),
            _ => {}
        }
    }
    Some(Neighbor {
        ip: ip?,
        mac,
        state: u16::from(msg.header.state),
    })
}

/// Neighbour destinations are typed for IP families, raw bytes for `AF_BRIDGE`.
fn neighbour_ip(address: NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(a)),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_support::{MAC_A, netns_with_veth, v4};
    use crate::netns::test_support::have_root;

    #[test]
    fn permanent_neighbours() {
        if !have_root("permanent_neighbours") {
            return;
        }
        let (_ns, mut nl, t0) = netns_with_veth();
        let ip4 = v4("198.51.100.9");
        let ip6: IpAddr = "2001:db8::9".parse().unwrap();
        for _ in 0..2 {
            nl.add_neighbor(t0, ip4, MAC_A).unwrap();
            nl.add_neighbor(t0, ip6, MAC_A).unwrap();
        }
        let neighbours = nl.neighbors(t0).unwrap();
        for ip in [ip4, ip6] {
            let expected = Neighbor {
                ip,
                mac: Some(MAC_A),
                state: NUD_PERMANENT,
            };
            assert!(neighbours.contains(&expected), "{neighbours:?}");
        }
        assert!(nl.del_neighbor(t0, ip4).unwrap());
        assert!(!nl.del_neighbor(t0, ip4).unwrap());
        assert!(!nl.neighbors(t0).unwrap().iter().any(|n| n.ip == ip4));
        assert!(nl.neighbors(t0).unwrap().iter().any(|n| n.ip == ip6));
    }

    #[test]
    fn vxlan_with_fdb_entries() {
        if !have_root("vxlan_with_fdb_entries") {
            return;
        }
        let (_ns, mut nl, t0) = netns_with_veth();
        nl.add_address(t0, v4("198.51.100.1"), 24, false).unwrap();
        nl.create_vxlan(
            "sinew.vx",
            42,
            4789,
            Some(v4("198.51.100.1")),
            Some(t0),
            Some(1450),
            Some([0x0a, 1, 2, 3, 4, 5]),
        )
        .unwrap();
        let vx = nl.link_by_name("sinew.vx").unwrap().unwrap();
        assert_eq!(vx.kind.as_deref(), Some("vxlan"));
        assert_eq!(vx.mtu, 1450);
        assert_eq!(vx.mac, Some([0x0a, 1, 2, 3, 4, 5]), "created with its MAC");
        let dup = nl
            .create_vxlan("sinew.vx", 42, 4789, None, None, None, None)
            .unwrap_err();
        assert!(dup.is_exists(), "{dup}");
        nl.set_link_up(vx.index).unwrap();

        let remote = v4("198.51.100.20");
        let moved = v4("198.51.100.21");
        nl.add_fdb(vx.index, MAC_A, remote).unwrap();
        nl.add_fdb(vx.index, MAC_A, remote).unwrap();
        assert_eq!(nl.fdb(vx.index).unwrap(), vec![(MAC_A, remote)]);
        nl.add_fdb(vx.index, MAC_A, moved).unwrap();
        assert_eq!(
            nl.fdb(vx.index).unwrap(),
            vec![(MAC_A, moved)],
            "replace, not append"
        );
        assert!(nl.fdb(t0).unwrap().iter().all(|(mac, _)| *mac != MAC_A));

        assert!(nl.del_fdb(vx.index, MAC_A).unwrap());
        assert!(!nl.del_fdb(vx.index, MAC_A).unwrap());
        assert!(nl.fdb(vx.index).unwrap().is_empty());
        assert!(nl.delete_link_by_name("sinew.vx").unwrap());
    }
}
