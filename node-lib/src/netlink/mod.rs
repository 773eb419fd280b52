//! A small synchronous rtnetlink client, one file per kernel object: `link.rs` (veth, VXLAN,
//! up/down, MTU), `addr.rs` (addresses), `route.rs` (routes), `neigh.rs` (neighbours and the VXLAN
//! forwarding database); `inspect.rs` reads routes and policy rules for the node checks, and
//! [`nftables`] speaks nf_tables. This file holds the socket and the message plumbing they
//! share. Everything is re-exported here, so callers name `netlink::Route`, `netlink::Link`…
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

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use sinew_core::Family;

use crate::netns::{NetNs, NetnsError};

mod addr;
mod inspect;
mod link;
mod neigh;
pub mod nftables;
mod route;
pub use inspect::{RouteEntry, RouteKind, Rule, RuleKind};
pub use link::{Link, VxlanInfo};
pub use neigh::{NUD_PERMANENT, Neighbor};
pub use route::{RT_TABLE_MAIN, RTPROT_BOOT, RTPROT_KERNEL, RTPROT_STATIC, Route};

/// Initial receive buffer; grown on demand when the kernel sends a larger datagram.
const RECV_BUFFER_LEN: usize = 64 * 1024;
/// Size of `struct nlmsghdr`.
const NLMSG_HEADER_LEN: usize = 16;
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

/// A netlink socket of `protocol`, bound and connected to the kernel, asking for the kernel's
/// error messages and short error replies (best effort); the failing syscall with its error.
pub(crate) fn connected(protocol: isize) -> std::result::Result<Socket, (&'static str, io::Error)> {
    let mut socket = Socket::new(protocol).map_err(|e| ("socket", e))?;
    let bound = socket.bind_auto().map_err(|e| ("bind", e))?;
    if protocol == NETLINK_ROUTE {
        remember_port(bound.port_number());
    }
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| ("connect", e))?;
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_cap_ack(true);
    Ok(socket)
}

/// Port IDs of this process's latest rtnetlink sockets. The kernel's notification of a change
/// carries the port ID of the socket that asked for it, so a watch can tell the changes this
/// process made from everyone else's ([`made_here`]).
static OWN_PORTS: Mutex<VecDeque<u32>> = Mutex::new(VecDeque::new());
/// How many of this process's latest socket port IDs are remembered (a socket may be closed
/// before the watch reads the notifications of its changes).
const OWN_PORTS_KEPT: usize = 64;

fn remember_port(port: u32) {
    let mut ports = OWN_PORTS.lock().unwrap_or_else(PoisonError::into_inner);
    if ports.len() == OWN_PORTS_KEPT {
        ports.pop_front();
    }
    ports.push_back(port);
}

/// Whether a notification from port `port` reports a change this process made through one
/// of its latest rtnetlink sockets (port 0 is the kernel's own: never).
pub fn made_here(port: u32) -> bool {
    port != 0
        && OWN_PORTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&port)
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
        let socket = connected(NETLINK_ROUTE)
            .map_err(|(syscall, source)| NetlinkError::Io { syscall, source })?;
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

#[cfg(test)]
mod test_support {
    use std::net::IpAddr;

    use super::Netlink;
    use crate::netns::NetNs;
    use crate::netns::test_support::new_netns;

    pub(super) const PROTO_SINEW: u8 = 0x5e;
    pub(super) const MAC_A: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x0a];

    pub(super) fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A namespace holding a veth pair `t0` <-> `t1` (both ends inside it), `t0` up.
    pub(super) fn netns_with_veth() -> (NetNs, Netlink, u32) {
        let ns = new_netns();
        let mut nl = Netlink::in_netns(&ns).unwrap();
        nl.create_veth("t0", "t1", &ns, 1500).unwrap();
        let t0 = nl.link_by_name("t0").unwrap().unwrap();
        nl.set_link_up(t0.index).unwrap();
        (ns, nl, t0.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_support::{netns_with_veth, v4};
    use crate::netns::test_support::have_root;

    #[test]
    fn pure_helpers() {
        assert_eq!(align4(0), 0);
        assert_eq!(align4(13), 16);
        assert!(check_prefix("op", v4("10.0.0.0"), 33).is_err());
        assert!(check_prefix("op", "fd00::".parse().unwrap(), 128).is_ok());
        let e = kernel_error("add route", -libc::EEXIST, Some("Route exists".into()));
        assert!(e.is_exists() && !e.is_not_found());
        assert!(e.to_string().contains("Route exists"), "{e}");
        let e = kernel_error("delete route", -libc::ESRCH, None);
        assert!(e.is_not_found());
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
}
