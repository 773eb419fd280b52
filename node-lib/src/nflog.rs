//! The packets an nftables `log group N` statement sends to user space (nfnetlink_log:
//! `NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_ULOG`): a socket bound to one group that
//! copies each packet's first bytes ([`Nflog`]), and the pure parsers of what arrives
//! ([`parse_message`], [`parse_packet`]). The node agent's drop log reads the policy table's
//! denied packets here (decision 94).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use crate::netlink::nftables::setsockopt;
use crate::netns::{NetNs, NetnsError};

/// `NFNL_SUBSYS_ULOG`.
const NFNL_SUBSYS_ULOG: u16 = 4;
/// `NFULNL_MSG_PACKET`, `NFULNL_MSG_CONFIG`.
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
/// `enum nfulnl_attr_config`.
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
/// `NFULNL_CFG_CMD_BIND`, `NFULNL_CFG_CMD_UNBIND`.
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_CFG_CMD_UNBIND: u8 = 2;
/// `NFULNL_COPY_PACKET`.
const NFULNL_COPY_PACKET: u8 = 2;
/// `enum nfulnl_attr_type`.
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLMSG_HDRLEN: usize = 16;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// How many bytes of each packet the kernel copies: the IP header (IPv6 without extension
/// headers) and the ports, with room to spare.
pub const COPY_BYTES: u32 = 128;

/// Errors of the nflog socket.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("nflog netlink {syscall} failed: {source}")]
    Io {
        syscall: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a configuration message (`EBUSY`: another listener holds the
    /// group).
    #[error("nflog: {op}: {source}")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The network and transport headers of a packet, as far as they were copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// The IP protocol number (`6` TCP, `17` UDP...): IPv6's first next header.
    pub protocol: u8,
    /// TCP, UDP and SCTP only.
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
}

/// One logged packet: the rule's prefix, the interfaces it came in on and would have left
/// by (indexes), and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub prefix: String,
    pub in_interface: Option<u32>,
    pub out_interface: Option<u32>,
    /// `None` when the copied bytes are no IPv4 or IPv6 packet.
    pub packet: Option<Packet>,
}

/// Walks netlink attributes: `(type without flags, payload)`.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?));
        let ty = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?)
            & !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
        let value = data.get(4..len)?;
        data = data.get(len.div_ceil(4) * 4..).unwrap_or_default();
        Some((ty, value))
    })
}

/// An `NFULNL_MSG_PACKET` message's payload (after the netlink header: its `nfgenmsg`, then
/// attributes) as a logged packet.
pub fn parse_message(payload: &[u8]) -> Option<Logged> {
    let mut logged = Logged {
        prefix: String::new(),
        in_interface: None,
        out_interface: None,
        packet: None,
    };
    let be32 = |v: &[u8]| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?));
    for (ty, value) in attributes(payload.get(4..)?) {
        match ty {
            NFULA_PREFIX => {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                logged.prefix = String::from_utf8_lossy(text).into_owned();
            }
            NFULA_IFINDEX_INDEV => logged.in_interface = be32(value),
            NFULA_IFINDEX_OUTDEV => logged.out_interface = be32(value),
            NFULA_PAYLOAD => logged.packet = parse_packet(value),
            _ => {}
        }
    }
    Some(logged)
}

/// The addresses, protocol and ports of an IPv4 or IPv6 packet's first bytes; the ports are
/// `None` past the bytes copied, for other protocols, and behind IPv6 extension headers.
pub fn parse_packet(bytes: &[u8]) -> Option<Packet> {
    let (source, destination, protocol, transport) = match bytes.first()? >> 4 {
        4 => {
            let header = usize::from(bytes.first()? & 0x0f) * 4;
            let addr = |at: usize| -> Option<IpAddr> {
                let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            };
            // A fragment after the first carries no transport header.
            let fragment_offset = u16::from_be_bytes(bytes.get(6..8)?.try_into().ok()?) & 0x1fff;
            let transport = (fragment_offset == 0)
                .then(|| bytes.get(header..))
                .flatten();
            (addr(12)?, addr(16)?, *bytes.get(9)?, transport)
        }
        6 => {
            let addr = |at: usize| -> Option<IpAddr> {
                let b: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            };
            (addr(8)?, addr(24)?, *bytes.get(6)?, bytes.get(40..))
        }
        _ => return None,
    };
    let ports = match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => transport.and_then(|t| {
            let port = |at: usize| Some(u16::from_be_bytes(t.get(at..at + 2)?.try_into().ok()?));
            Some((port(0)?, port(2)?))
        }),
        _ => None,
    };
    Some(Packet {
        source,
        destination,
        protocol,
        source_port: ports.map(|p| p.0),
        destination_port: ports.map(|p| p.1),
    })
}

/// A socket bound to one nflog group: it receives the packets `log group N` sends (the first
/// [`COPY_BYTES`] of each). Unbinds the group when dropped.
#[derive(Debug)]
pub struct Nflog {
    socket: Socket,
    group: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl Nflog {
    /// Binds `group` in the calling thread's network namespace; `recv` waits at most
    /// `wait` for packets (so its caller can look up between packets).
    pub fn bind(group: u16, wait: Duration) -> Result<Nflog, NflogError> {
        let socket = crate::netlink::connected(NETLINK_NETFILTER)
            .map_err(|(syscall, source)| NflogError::Io { syscall, source })?;
        let timeout = libc::timeval {
            // Bounded to a day, so the cast to the platform's `time_t` loses nothing.
            tv_sec: wait.as_secs().min(86_400) as _,
            tv_usec: wait.subsec_micros().max(1).into(),
        };
        setsockopt(&socket, libc::SO_RCVTIMEO, &timeout).map_err(|source| NflogError::Io {
            syscall: "setsockopt",
            source,
        })?;
        let mut nflog = Nflog {
            socket,
            group,
            seq: 0,
            buf: vec![0; 64 * 1024],
        };
        nflog.config("bind the nflog group", |a| {
            put(a, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        })?;
        nflog.config("copy packets", |a| {
            // `struct nfulnl_msg_config_mode`: copy range (big-endian), mode, padding.
            let mut mode = COPY_BYTES.to_be_bytes().to_vec();
            mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
            put(a, NFULA_CFG_MODE, &mode);
        })?;
        nflog.config("send each packet at once", |a| {
            put(a, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
        })?;
        Ok(nflog)
    }

    /// Binds `group` inside `ns` (the socket keeps listening there from any thread).
    pub fn bind_in_netns(ns: &NetNs, group: u16, wait: Duration) -> Result<Nflog, NflogError> {
        ns.run_in(move || Nflog::bind(group, wait))?
    }

    /// One `NFULNL_MSG_CONFIG` message for the group, acknowledged.
    fn config(&mut self, op: &'static str, f: impl FnOnce(&mut Vec<u8>)) -> Result<(), NflogError> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::new();
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // `struct nfgenmsg`: AF_UNSPEC, version 0, the group (big-endian).
        msg.extend_from_slice(&[0, 0]);
        msg.extend_from_slice(&self.group.to_be_bytes());
        f(&mut msg);
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        self.socket.send(&msg, 0).map_err(|source| NflogError::Io {
            syscall: "send",
            source,
        })?;
        loop {
            let n = self.recv_datagram()?.ok_or(NflogError::Kernel {
                op,
                source: io::Error::from(io::ErrorKind::TimedOut),
            })?;
            for (ty, seq, payload) in messages(&self.buf[..n]) {
                if ty == NLMSG_ERROR && seq == self.seq {
                    let errno = i32::from_ne_bytes(
                        payload
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or_default(),
                    );
                    return match errno {
                        0 => Ok(()),
                        e => Err(NflogError::Kernel {
                            op,
                            source: io::Error::from_raw_os_error(-e),
                        }),
                    };
                }
            }
        }
    }

    /// One datagram into the buffer; `None` when none came within the wait.
    fn recv_datagram(&mut self) -> Result<Option<usize>, NflogError> {
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                // The socket's queue overflowed: packets were lost, the socket goes on.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Some(0)),
                Err(source) => {
                    return Err(NflogError::Io {
                        syscall: "recv",
                        source,
                    });
                }
            }
        }
    }

    /// The packets logged since the last call, waiting at most the socket's wait for the
    /// first; empty when none came.
    pub fn recv(&mut self) -> Result<Vec<Logged>, NflogError> {
        let Some(n) = self.recv_datagram()? else {
            return Ok(Vec::new());
        };
        Ok(messages(&self.buf[..n])
            .filter(|(ty, _, _)| *ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
            .filter_map(|(_, _, payload)| parse_message(payload))
            .collect())
    }
}

impl Drop for Nflog {
    fn drop(&mut self) {
        let _ = self.config("unbind the nflog group", |a| {
            put(a, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_UNBIND]);
        });
    }
}

/// Appends one attribute, padded.
fn put(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// The netlink messages of a datagram: `(type, sequence number, payload)`.
fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::try_from(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?)).ok()?;
        let ty = u16::from_ne_bytes(data.get(4..6)?.try_into().ok()?);
        let seq = u32::from_ne_bytes(data.get(8..12)?.try_into().ok()?);
        let payload = data.get(NLMSG_HDRLEN..len)?;
        data = data.get(len.div_ceil(4) * 4..).unwrap_or_default();
        Some((ty, seq, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP SYN from 10.0.1.3:40000 to 10.0.1.1:80 (20-byte header, then the ports).
    fn tcp4() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 1, 3, 10, 0, 1, 1,
        ];
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&80u16.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    /// An IPv6 UDP datagram from fd00:1::2:5353 to fd00:1::1:6000.
    fn udp6() -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 13, 17, 64];
        p.extend_from_slice(&"fd00:1::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00:1::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&5353u16.to_be_bytes());
        p.extend_from_slice(&6000u16.to_be_bytes());
        p.extend_from_slice(&[0, 13, 0, 0, b'x']);
        p
    }

    #[test]
    fn ip_packets_give_their_addresses_protocol_and_ports() {
        assert_eq!(
            parse_packet(&tcp4()),
            Some(Packet {
                source: "10.0.1.3".parse().unwrap(),
                destination: "10.0.1.1".parse().unwrap(),
                protocol: 6,
                source_port: Some(40000),
                destination_port: Some(80),
            })
        );
        assert_eq!(
            parse_packet(&udp6()),
            Some(Packet {
                source: "fd00:1::2".parse().unwrap(),
                destination: "fd00:1::1".parse().unwrap(),
                protocol: 17,
                source_port: Some(5353),
                destination_port: Some(6000),
            })
        );
        // ICMP: no ports; cut before the ports: none either
        let mut icmp = tcp4();
        icmp[9] = 1;
        assert_eq!(parse_packet(&icmp).unwrap().destination_port, None);
        assert_eq!(parse_packet(&tcp4()[..22]).unwrap().destination_port, None);
        // a later fragment carries no ports
        let mut fragment = tcp4();
        fragment[7] = 8;
        assert_eq!(parse_packet(&fragment).unwrap().source_port, None);
        // not IP, or too short for the addresses
        assert_eq!(parse_packet(&[0x20; 40]), None);
        assert_eq!(parse_packet(&tcp4()[..16]), None);
        assert_eq!(parse_packet(&[]), None);
    }

    #[test]
    fn a_packet_message_gives_prefix_interfaces_and_headers() {
        // nfgenmsg (AF_INET, v0, group 1), then the attributes as the kernel sends them
        let mut m = vec![2, 0, 0, 1];
        put(&mut m, 1, &[0x08, 0x00, 2, 0]); // NFULA_PACKET_HDR
        put(
            &mut m,
            NFULA_IFINDEX_INDEV | NLA_F_NET_BYTEORDER,
            &7u32.to_be_bytes(),
        );
        put(&mut m, NFULA_IFINDEX_OUTDEV, &9u32.to_be_bytes());
        put(&mut m, NFULA_PREFIX, b"ingress-0 default/allow-web\0");
        put(&mut m, NFULA_PAYLOAD, &tcp4());
        let logged = parse_message(&m).unwrap();
        assert_eq!(logged.prefix, "ingress-0 default/allow-web");
        assert_eq!(logged.in_interface, Some(7));
        assert_eq!(logged.out_interface, Some(9));
        assert_eq!(logged.packet.unwrap().destination_port, Some(80));
        // no attributes: nothing known; truncated: what came before the cut
        let bare = parse_message(&[2, 0, 0, 1]).unwrap();
        assert_eq!((bare.prefix.as_str(), bare.packet), ("", None));
        let cut = parse_message(&m[..m.len() - 10]).unwrap();
        assert_eq!(cut.out_interface, Some(9));
        assert_eq!(cut.packet, None);
        assert_eq!(parse_message(&[2]), None);
        // two messages in one datagram
        let mut datagram = Vec::new();
        for seq in [1u32, 2] {
            let len = u32::try_from(NLMSG_HDRLEN + m.len()).unwrap();
            datagram.extend_from_slice(&len.to_ne_bytes());
            datagram
                .extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET).to_ne_bytes());
            datagram.extend_from_slice(&[0, 0]);
            datagram.extend_from_slice(&seq.to_ne_bytes());
            datagram.extend_from_slice(&[0; 4]);
            datagram.extend_from_slice(&m);
        }
        let seqs: Vec<u32> = messages(&datagram).map(|(_, seq, _)| seq).collect();
        assert_eq!(seqs, [1, 2]);
    }
}
