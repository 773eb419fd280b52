//! Links: lookup and dump, veth pairs (one end created directly in another namespace),
//! VXLAN devices, up/down and MTU, deletion.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use super::{Netlink, NetlinkError, Result};
use crate::netns::NetNs;

/// Interface names are at most 15 bytes plus the terminating NUL.
const IFNAMSIZ: usize = 16;
/// A network interface as reported by `RTM_GETLINK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, when it is 6 bytes long (Ethernet-like devices, `lo`).
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Device kind from `IFLA_LINKINFO` ("veth", "vxlan", ...); `None` for plain devices.
    pub kind: Option<String>,
    /// The kernel's VXLAN parameters, for a VXLAN device.
    pub vxlan: Option<VxlanInfo>,
}

/// What the kernel says a VXLAN device was created with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    /// Index of the underlay device.
    pub link: Option<u32>,
}

impl Netlink {
    /// The interface called `name`, or `None` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let op = "get link by name";
        check_ifname(op, name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(op, msg)
    }

    /// The interface with index `index`, or `None` if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link("get link by index", msg)
    }

    /// All interfaces of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link_from_message(link)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair in one request: `host_name` here, `peer_name` directly inside
    /// `peer_ns`, both with `mtu` (0 keeps the kernel default). Fails with
    /// [`NetlinkError::is_exists`] if `host_name` exists.
    pub fn create_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_ns: &NetNs,
        mtu: u32,
    ) -> Result<()> {
        let op = "create veth";
        check_ifname(op, host_name)?;
        check_ifname(op, peer_name)?;
        let mut peer = LinkMessage::default();
        peer.attributes = named_link_attributes(peer_name, Some(mtu));
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes = named_link_attributes(host_name, Some(mtu));
        msg.attributes.push(link_info(
            InfoKind::Veth,
            InfoData::Veth(InfoVeth::Peer(peer)),
        ));
        self.ack(
            op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a VXLAN device with VNI `vni` on UDP port `port`, with learning off and no
    /// multicast group (forwarding entries come from [`Netlink::add_fdb`]); `mac` is its
    /// address (the kernel picks a random one where it is `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn create_vxlan(
        &mut self,
        name: &str,
        vni: u32,
        port: u16,
        local: Option<IpAddr>,
        underlay_index: Option<u32>,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let op = "create vxlan";
        check_ifname(op, name)?;
        let mut data = vec![
            InfoVxlan::Id(vni),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(false),
        ];
        match local {
            Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
            Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
            None => {}
        }
        data.extend(underlay_index.map(InfoVxlan::Link));
        let mut msg = LinkMessage::default();
        msg.attributes = named_link_attributes(name, mtu);
        msg.attributes
            .extend(mac.map(|m| LinkAttribute::Address(m.to_vec())));
        msg.attributes
            .push(link_info(InfoKind::Vxlan, InfoData::Vxlan(data)));
        self.ack(
            op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Sets the interface administratively up.
    pub fn set_link_up(&mut self, index: u32) -> Result<()> {
        self.set_link_flag("set link up", index, true)
    }

    /// Sets the interface administratively down.
    pub fn set_link_down(&mut self, index: u32) -> Result<()> {
        self.set_link_flag("set link down", index, false)
    }

    /// Changes the interface's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack("set mtu", RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Deletes the interface (both ends, for a veth).
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack("delete link", RouteNetlinkMessage::DelLink(msg), 0)
    }

    /// Deletes the interface called `name`; `Ok(false)` if it did not exist.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        let op = "delete link by name";
        check_ifname(op, name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.ack_if_exists(op, RouteNetlinkMessage::DelLink(msg))
    }

    fn get_link(&mut self, op: &'static str, msg: LinkMessage) -> Result<Option<Link>> {
        match self.request(op, RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link_from_message(link)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_link_flag(&mut self, op: &'static str, index: u32, up: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        self.ack(op, RouteNetlinkMessage::SetLink(msg), 0)
    }
}

fn check_ifname(op: &'static str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() >= IFNAMSIZ
        || name.contains(['/', '\0'])
        || name.contains(char::is_whitespace)
    {
        return Err(NetlinkError::invalid(
            op,
            format!("invalid interface name {name:?} (1 to 15 bytes, no '/', NUL or spaces)"),
        ));
    }
    Ok(())
}

fn named_link_attributes(name: &str, mtu: Option<u32>) -> Vec<LinkAttribute> {
    let mut attributes = vec![LinkAttribute::IfName(name.to_string())];
    attributes.extend(mtu.filter(|m| *m > 0).map(LinkAttribute::Mtu));
    attributes
}

fn link_info(kind: InfoKind, data: InfoData) -> LinkAttribute {
    LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind), LinkInfo::Data(data)])
}

fn link_from_message(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan: None,
    };
    for attribute in msg.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(mac) => link.mac = mac.as_slice().try_into().ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(vxlan_info(data))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn vxlan_info(data: Vec<InfoVxlan>) -> VxlanInfo {
    let mut info = VxlanInfo::default();
    for d in data {
        match d {
            InfoVxlan::Id(vni) => info.vni = Some(vni),
            InfoVxlan::Port(port) => info.port = Some(port),
            InfoVxlan::Local(a) => info.local = Some(IpAddr::V4(a)),
            InfoVxlan::Local6(a) => info.local = Some(IpAddr::V6(a)),
            InfoVxlan::Link(index) => info.link = Some(index),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_support::netns_with_veth;
    use crate::netns::test_support::have_root;
    use crate::netns::test_support::new_netns;

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("op", "eth0").is_ok());
        assert!(check_ifname("op", "").is_err());
        assert!(check_ifname("op", "sixteen-chars-xx").is_err());
        assert!(check_ifname("op", "a b").is_err());
    }

    #[test]
    fn veth_across_two_namespaces() {
        if !have_root("veth_across_two_namespaces") {
            return;
        }
        let host = new_netns();
        let pod = new_netns();
        let mut nl_host = Netlink::in_netns(&host).unwrap();
        let mut nl_pod = Netlink::in_netns(&pod).unwrap();

        nl_host.create_veth("sw-host", "eth0", &pod, 1400).unwrap();
        let h = nl_host.link_by_name("sw-host").unwrap().unwrap();
        let p = nl_pod.link_by_name("eth0").unwrap().unwrap();
        assert_eq!((h.mtu, p.mtu), (1400, 1400));
        assert_eq!(h.kind.as_deref(), Some("veth"));
        assert_eq!(p.kind.as_deref(), Some("veth"));
        assert!(h.mac.is_some() && p.mac.is_some() && h.mac != p.mac);
        assert!(!h.up && !p.up);
        assert!(nl_host.link_by_name("eth0").unwrap().is_none());
        assert_eq!(nl_host.link_by_index(h.index).unwrap().unwrap(), h);

        nl_host.set_link_up(h.index).unwrap();
        nl_pod.set_link_up(p.index).unwrap();
        nl_pod.set_mtu(p.index, 1380).unwrap();
        let p = nl_pod.link_by_name("eth0").unwrap().unwrap();
        assert!(p.up && p.mtu == 1380);
        assert!(nl_host.link_by_name("sw-host").unwrap().unwrap().up);
        nl_pod.set_link_down(p.index).unwrap();
        assert!(!nl_pod.link_by_index(p.index).unwrap().unwrap().up);

        let again = nl_host
            .create_veth("sw-host", "eth1", &pod, 1400)
            .unwrap_err();
        assert!(again.is_exists(), "{again}");
        let names: Vec<String> = nl_host
            .links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(names.contains(&"lo".to_string()) && names.contains(&"sw-host".to_string()));

        assert!(nl_host.delete_link_by_name("sw-host").unwrap());
        assert!(
            nl_pod.link_by_name("eth0").unwrap().is_none(),
            "peer goes with it"
        );
        assert!(!nl_host.delete_link_by_name("sw-host").unwrap());
        assert!(!nl_host.delete_link_by_name("no-such-link").unwrap());
        assert!(nl_host.link_by_index(999_999).unwrap().is_none());
    }

    #[test]
    fn delete_link_by_index() {
        if !have_root("delete_link_by_index") {
            return;
        }
        let (_ns, mut nl, t0) = netns_with_veth();
        nl.delete_link(t0).unwrap();
        assert!(nl.link_by_name("t1").unwrap().is_none());
        assert!(nl.delete_link(t0).unwrap_err().is_not_found());
    }
}
