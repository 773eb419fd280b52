//! A small synchronous rtnetlink client: links (veth, vxlan), addresses, routes,
//! neighbours and VXLAN forwarding entries.
//!
//! Everything is blocking and single-socket, which suits a short-lived CNI plugin process.
//! A [`Netlink`] socket talks to the network namespace that was current on the thread
//! that created it, for its whole life: use [`Netlink::in_netns`] to get a socket for
//! another namespace without moving any of the caller's threads.
//!
//! Requests carry `NLM_F_REQUEST|NLM_F_ACK` and wait for the kernel's acknowledgement;
//! dumps read multi-part replies until `NLMSG_DONE`. Kernel refusals become
//! [`NetlinkError::Kernel`] with the errno and, where the kernel gives one, its extended
//! error message.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use sinew_core::Family;

use crate::netns::{NetNs, NetnsError};

mod inspect;
pub mod nftables;
pub use inspect::{RouteEntry, RouteKind, Rule, RuleKind};

/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;
/// Route installed by the kernel (e.g. prefix routes of addresses).
pub const RTPROT_KERNEL: u8 = 2;
/// Route installed "during boot"; what `ip route add` uses by default.
pub const RTPROT_BOOT: u8 = 3;
/// Route installed by the administrator.
pub const RTPROT_STATIC: u8 = 4;
/// Neighbour state: a static entry that never expires.
pub const NUD_PERMANENT: u16 = 0x80;

/// Initial receive buffer; grown on demand when the kernel sends a larger datagram.
const RECV_BUFFER_LEN: usize = 64 * 1024;
/// Size of `struct nlmsghdr`.
const NLMSG_HEADER_LEN: usize = 16;
/// Interface names are at most 15 bytes plus the terminating NUL.
const IFNAMSIZ: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended-ack TLV carrying a human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Errors from netlink operations.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A system call on the netlink socket failed.
    #[error("netlink {syscall} failed: {source}")]
    Io {
        /// The failed call (socket, bind, connect, send, recv).
        syscall: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("{op}: {message} (errno {errno})")]
    Kernel {
        /// What was being done, e.g. "add route".
        op: &'static str,
        /// The positive errno, e.g. `libc::EEXIST`.
        errno: i32,
        /// The error text, with the kernel's extended-ack message when it sent one.
        message: String,
    },
    /// The kernel's reply could not be decoded.
    #[error("{op}: cannot decode the kernel's reply: {message}")]
    Decode {
        /// What was being done.
        op: &'static str,
        /// The decoder's complaint.
        message: String,
    },
    /// An argument was rejected before anything was sent.
    #[error("{op}: {message}")]
    InvalidArgument {
        /// What was being done.
        op: &'static str,
        /// What is wrong with the argument.
        message: String,
    },
    /// Entering the network namespace for the socket failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True when the kernel said the object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the kernel said the object (or the device it hangs off) does not exist:
    /// `ENOENT`, `ENODEV`, `ESRCH` (routes) or `EADDRNOTAVAIL` (addresses).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }

    fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        NetlinkError::InvalidArgument {
            op,
            message: message.into(),
        }
    }

    fn decode(op: &'static str, message: impl ToString) -> Self {
        NetlinkError::Decode {
            op,
            message: message.to_string(),
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn unspecified(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

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

/// A blocking rtnetlink (`NETLINK_ROUTE`) socket bound to one network namespace.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn new() -> Result<Netlink> {
        let io_err = |syscall| move |source| NetlinkError::Io { syscall, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err("socket"))?;
        socket.bind_auto().map_err(io_err("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io_err("connect"))?;
        // Best effort: error messages from the kernel, and short error replies.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUFFER_LEN],
        })
    }

    /// Opens a socket inside `ns` (on a short-lived thread). The socket keeps talking
    /// to `ns` from whatever thread uses it afterwards.
    pub fn in_netns(ns: &NetNs) -> Result<Netlink> {
        ns.run_in(Netlink::new)?
    }

    // ----- links -----

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
    /// multicast group (forwarding entries come from [`Netlink::add_fdb`]).
    pub fn create_vxlan(
        &mut self,
        name: &str,
        vni: u32,
        port: u16,
        local: Option<IpAddr>,
        underlay_index: Option<u32>,
        mtu: Option<u32>,
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

    // ----- addresses -----

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

    // ----- routes -----

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

    // ----- neighbours -----

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

    // ----- VXLAN forwarding database -----

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

    // ----- plumbing -----

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

    /// Sends a request that only needs an acknowledgement.
    fn ack(&mut self, op: &'static str, message: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(op, message, NLM_F_ACK | flags).map(drop)
    }

    /// Like [`Netlink::ack`], mapping "not found" to `Ok(false)`.
    fn ack_if_exists(&mut self, op: &'static str, message: RouteNetlinkMessage) -> Result<bool> {
        match self.ack(op, message, 0) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn dump(
        &mut self,
        op: &'static str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(op, message, NLM_F_DUMP)
    }

    /// Sends one request and collects the replies up to the ack or the end of the dump.
    fn request(
        &mut self,
        op: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(message, flags)?;
        let mut replies = Vec::new();
        loop {
            let len = self.recv_datagram()?;
            if parse_datagram(op, seq, &self.buf[..len], &mut replies)? {
                return Ok(replies);
            }
        }
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        loop {
            match self.socket.send(&bytes, 0) {
                Ok(n) if n == bytes.len() => return Ok(self.seq),
                Ok(n) => {
                    let message = format!("sent {n} of {} bytes", bytes.len());
                    return Err(NetlinkError::Io {
                        syscall: "send",
                        source: io::Error::other(message),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(NetlinkError::Io {
                        syscall: "send",
                        source,
                    });
                }
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it first if the datagram is larger.
    fn recv_datagram(&mut self) -> Result<usize> {
        let pending = retry_eintr(|| {
            self.socket
                .recv(&mut &mut [0u8; 0][..], libc::MSG_PEEK | libc::MSG_TRUNC)
        })?;
        if pending > self.buf.len() {
            self.buf.resize(pending, 0);
        }
        let buf = &mut self.buf;
        let socket = &self.socket;
        retry_eintr(|| socket.recv(&mut &mut buf[..], 0))
    }
}

fn retry_eintr(mut call: impl FnMut() -> io::Result<usize>) -> Result<usize> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(NetlinkError::Io {
                    syscall: "recv",
                    source,
                });
            }
            Ok(n) => return Ok(n),
        }
    }
}

/// Walks the netlink messages of one datagram. Returns true once the request is
/// complete (ack or end of dump); kernel errors are returned as [`NetlinkError::Kernel`].
fn parse_datagram(
    op: &'static str,
    seq: u32,
    mut data: &[u8],
    replies: &mut Vec<RouteNetlinkMessage>,
) -> Result<bool> {
    while data.len() >= NLMSG_HEADER_LEN {
        let header = NetlinkBuffer::new_checked(data).map_err(|e| NetlinkError::decode(op, e))?;
        let len = header.length() as usize;
        let (message, rest) = data.split_at(len);
        data = rest.get(align4(len) - len..).unwrap_or_default();
        if header.sequence_number() != seq {
            continue; // a late reply to an earlier, abandoned request
        }
        if handle_message(op, message, replies)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn handle_message(
    op: &'static str,
    bytes: &[u8],
    replies: &mut Vec<RouteNetlinkMessage>,
) -> Result<bool> {
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
        .map_err(|e| NetlinkError::decode(op, e))?;
    match message.payload {
        NetlinkPayload::InnerMessage(inner) => {
            replies.push(inner);
            Ok(false)
        }
        NetlinkPayload::Error(err) => match err.code {
            None => Ok(true),
            Some(code) => {
                let ext = error_ext_ack(message.header.flags, &err.header);
                Err(kernel_error(op, code.get(), ext))
            }
        },
        NetlinkPayload::Done(done) if done.code != 0 => Err(kernel_error(
            op,
            done.code,
            ext_ack_text(&done.extended_ack),
        )),
        NetlinkPayload::Done(_) => Ok(true),
        _ => Ok(false),
    }
}

fn kernel_error(op: &'static str, code: i32, ext_ack: Option<String>) -> NetlinkError {
    let errno = code.checked_abs().unwrap_or(i32::MAX);
    let text = io::Error::from_raw_os_error(errno).to_string();
    // io::Error appends " (os error N)"; the errno is shown separately.
    let text = text
        .trim_end_matches(&format!(" (os error {errno})"))
        .to_string();
    let message = match ext_ack {
        Some(ext) if !ext.is_empty() => format!("{text}: {ext}"),
        _ => text,
    };
    NetlinkError::Kernel { op, errno, message }
}

/// The extended-ack message of an `NLMSG_ERROR` payload (after the error code): the
/// echoed request (only its header when capped) is followed by TLVs.
fn error_ext_ack(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HEADER_LEN
    } else {
        let len = payload.get(..4)?;
        align4(u32::from_ne_bytes(len.try_into().ok()?) as usize)
    };
    ext_ack_text(payload.get(echoed..)?)
}

fn ext_ack_text(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .to_string()
        })
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
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

fn check_prefix(op: &'static str, addr: IpAddr, prefix: u8) -> Result<()> {
    let max = Family::of(addr).bits();
    if prefix > max {
        return Err(NetlinkError::invalid(
            op,
            format!("prefix length {prefix} is too long for {addr} (max {max})"),
        ));
    }
    Ok(())
}

fn ip_family(ip: IpAddr) -> AddressFamily {
    address_family(Family::of(ip))
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

fn route_ip(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(a)),
        _ => None,
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
    use crate::netns::test_support::{have_root, new_netns};

    const PROTO_SINEW: u8 = 0x5e;
    const MAC_A: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x0a];

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A namespace holding a veth pair `t0` <-> `t1` (both ends inside it), `t0` up.
    fn netns_with_veth() -> (NetNs, Netlink, u32) {
        let ns = new_netns();
        let mut nl = Netlink::in_netns(&ns).unwrap();
        nl.create_veth("t0", "t1", &ns, 1500).unwrap();
        let t0 = nl.link_by_name("t0").unwrap().unwrap();
        nl.set_link_up(t0.index).unwrap();
        (ns, nl, t0.index)
    }

    #[test]
    fn pure_helpers() {
        assert_eq!(align4(0), 0);
        assert_eq!(align4(13), 16);
        assert!(check_ifname("op", "eth0").is_ok());
        assert!(check_ifname("op", "").is_err());
        assert!(check_ifname("op", "sixteen-chars-xx").is_err());
        assert!(check_ifname("op", "a b").is_err());
        assert!(check_prefix("op", v4("10.0.0.0"), 33).is_err());
        assert!(check_prefix("op", "fd00::".parse().unwrap(), 128).is_ok());
        let e = kernel_error("add route", -libc::EEXIST, Some("Route exists".into()));
        assert!(e.is_exists() && !e.is_not_found());
        assert!(e.to_string().contains("Route exists"), "{e}");
        let e = kernel_error("delete route", -libc::ESRCH, None);
        assert!(e.is_not_found());
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
    fn dumps_spanning_many_datagrams() {
        if !have_root("dumps_spanning_many_datagrams") {
            return;
        }
        let (_ns, mut nl, t0) = netns_with_veth();
        let count: u16 = 1000; // ~80 KB of replies: several datagrams
        for i in 0..count {
            let [hi, lo] = i.to_be_bytes();
            let ip = IpAddr::from([198, 18, hi, lo]);
            nl.add_neighbor(t0, ip, [0x02, 0, 0, 0, hi, lo]).unwrap();
        }
        let neighbours = nl.neighbors(t0).unwrap();
        assert_eq!(
            neighbours.len(),
            usize::from(count),
            "every part of the dump is read"
        );
        assert!(neighbours.iter().all(|n| n.state == NUD_PERMANENT));
        // the socket is still in step after a long dump
        assert!(nl.link_by_name("t0").unwrap().is_some());
    }

    #[test]
    fn kernel_errors_carry_errno_and_message() {
        if !have_root("kernel_errors_carry_errno_and_message") {
            return;
        }
        let (ns, mut nl, t0) = netns_with_veth();
        let err = nl.create_veth("t0", "t9", &ns, 0).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.to_string().starts_with("create veth: "), "{err}");
        let route = Route {
            gateway: Some(v4("198.51.100.254")),
            ..Route::new(v4("203.0.113.0"), 24)
        };
        let err = nl.add_route(&route).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
        assert!(err.to_string().contains("Network is unreachable"), "{err}");
        assert!(!err.to_string().contains("os error"), "{err}");
        assert!(nl.set_mtu(t0, 10).is_err());
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
        )
        .unwrap();
        let vx = nl.link_by_name("sinew.vx").unwrap().unwrap();
        assert_eq!(vx.kind.as_deref(), Some("vxlan"));
        assert_eq!(vx.mtu, 1450);
        let dup = nl
            .create_vxlan("sinew.vx", 42, 4789, None, None, None)
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
