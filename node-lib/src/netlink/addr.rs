//! Interface addresses (IPv4 and IPv6).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};

use super::{Netlink, Result, check_prefix, ip_family};

impl Netlink {
    /// Assigns `addr/32` with `scope host` to the interface (assigning it again is not an
    /// error): a local address the kernel never picks as the source of outgoing traffic.
    pub fn add_host_scope_address(&mut self, index: u32, addr: std::net::Ipv4Addr) -> Result<()> {
        let op = "add host-scope address";
        let mut msg = address_message(op, index, IpAddr::V4(addr), 32)?;
        msg.header.scope = AddressScope::Host;
        self.ack(
            op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Assigns `addr/prefix` to the interface; assigning it again is not an error.
    /// `nodad` (IPv6 only) skips duplicate address detection, so the address is usable
    /// at once instead of staying "tentative".
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8, nodad: bool) -> Result<()> {
        let op = "add address";
        let mut msg = address_message(op, index, addr, prefix)?;
        let flags = if nodad && addr.is_ipv6() {
            AddressFlags::Nodad
        } else {
            AddressFlags::empty()
        };
        msg.header.flags = AddressHeaderFlags::from_bits_retain((flags.bits() & 0xff) as u8);
        msg.attributes.push(AddressAttribute::Flags(flags));
        self.ack(
            op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Removes `addr/prefix` from the interface; `Ok(false)` if it was not there.
    pub fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<bool> {
        let op = "delete address";
        let msg = address_message(op, index, addr, prefix)?;
        self.ack_if_exists(op, RouteNetlinkMessage::DelAddress(msg))
    }

    /// The addresses (IPv4 and IPv6) of the interface, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        Ok(self
            .address_messages(index)?
            .iter()
            .filter_map(|m| address_of(m).map(|a| (a, m.header.prefix_len)))
            .collect())
    }

    fn address_messages(&mut self, index: u32) -> Result<Vec<AddressMessage>> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let replies = self.dump("dump addresses", request)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
                _ => None,
            })
            .collect())
    }
}

/// The default scope `ip addr add` uses: host for 127/8, global otherwise.
fn address_scope(addr: IpAddr) -> AddressScope {
    match addr {
        IpAddr::V4(a) if a.is_loopback() => AddressScope::Host,
        _ => AddressScope::Universe,
    }
}

fn address_message(
    op: &'static str,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<AddressMessage> {
    check_prefix(op, addr, prefix)?;
    let mut msg = AddressMessage::default();
    msg.header.family = ip_family(addr);
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.header.scope = address_scope(addr);
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    Ok(msg)
}

/// The local address of an address message (IFA_LOCAL, else IFA_ADDRESS).
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_support::{netns_with_veth, v4};
    use crate::netns::test_support::have_root;

    #[test]
    fn addresses_add_list_delete() {
        if !have_root("addresses_add_list_delete") {
            return;
        }
        let (_ns, mut nl, t0) = netns_with_veth();
        let t1 = nl.link_by_name("t1").unwrap().unwrap().index;
        let a4 = v4("198.51.100.1");
        let a6: IpAddr = "2001:db8::1".parse().unwrap();
        let dad6: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..2 {
            nl.add_address(t0, a4, 24, false).unwrap();
            nl.add_address(t0, a6, 64, true).unwrap();
        }
        // t1 is down: without nodad an address stays tentative, with nodad it never is
        nl.add_address(t1, dad6, 64, false).unwrap();
        let listed = nl.addresses(t0).unwrap();
        assert!(listed.contains(&(a4, 24)), "{listed:?}");
        assert!(listed.contains(&(a6, 64)), "{listed:?}");
        assert!(!nl.addresses(t1).unwrap().contains(&(a4, 24)));

        assert_eq!(
            address_flags(&mut nl, t0, a6) & AddressFlags::Tentative,
            AddressFlags::empty()
        );
        assert!(address_flags(&mut nl, t0, a6).contains(AddressFlags::Nodad));
        assert!(address_flags(&mut nl, t1, dad6).contains(AddressFlags::Tentative));

        assert!(nl.del_address(t0, a4, 24).unwrap());
        assert!(nl.del_address(t0, a6, 64).unwrap());
        assert!(!nl.del_address(t0, a4, 24).unwrap());
        assert!(!nl.del_address(t0, a6, 64).unwrap());
        let listed = nl.addresses(t0).unwrap();
        assert!(
            !listed.contains(&(a4, 24)) && !listed.contains(&(a6, 64)),
            "{listed:?}"
        );
    }

    fn address_flags(nl: &mut Netlink, index: u32, addr: IpAddr) -> AddressFlags {
        let messages = nl.address_messages(index).unwrap();
        let msg = messages
            .iter()
            .find(|m| address_of(m) == Some(addr))
            .unwrap();
        msg.attributes
            .iter()
            .find_map(|a| match a {
                AddressAttribute::Flags(f) => Some(*f),
                _ => None,
            })
            .unwrap()
    }
}
