//! sinew's nftables table, programmed over netlink (`NETLINK_NETFILTER`, subsystem
//! `NFNL_SUBSYS_NFTABLES`) without the `nft` program or libnftnl.
//!
//! This is not a general nftables library: it encodes exactly the objects sinew needs
//! (one `inet` table, interval sets of addresses, two base chains and rules made of
//! `meta`, `payload`, `cmp`, `lookup`, `counter`, `immediate` and `masq` expressions),
//! following the kernel's uapi (`linux/netfilter/nfnetlink.h`,
//! `linux/netfilter/nf_tables.h`). The constants below are written from those headers.
//!
//! A replace is one nfnetlink batch (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`): the
//! kernel applies every message of it or none. Each message asks for an acknowledgement and
//! every acknowledgement is read, so the first refused message is reported with the
//! kernel's errno and extended-ack text.
//!
//! The table is the one `nft -f` used to build from this script (see
//! `node-installer/src/nat.rs`), and `nft list table inet sinew` shows it identically:
//!
//! ```text
//! table inet sinew {
//!     set pods4 { type ipv4_addr; flags interval; elements = { ... }; }   # also pods6
//!     set nat4 { ... }   set nat6 { ... }   set nodes4 { ... }   set nodes6 { ... }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr @nat4 ip daddr != @pods4 masquerade
//!         ip6 saddr @nat6 ip6 daddr != @pods6 masquerade
//!     }
//!     chain vxlan-from-nodes-only {
//!         type filter hook input priority filter - 10; policy accept;
//!         ip saddr != @nodes4 udp dport PORT counter drop
//!         ip6 saddr != @nodes6 udp dport PORT counter drop
//!     }
//! }
//! ```
//!
//! Pods' host ports add four DNAT maps, two hairpin sets and four chains to the table
//! (the `host ports` section below, [`crate::hostport`]); the plugin adds and removes a pod's
//! elements itself ([`Nftables::add_host_ports`], [`Nftables::remove_host_ports`]).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use sinew_core::{Cidr, Family};

use crate::consts::NFT_TABLE;
use crate::hostport::HostPort;
use crate::netns::{NetNs, NetnsError};

// ----- netlink (linux/netlink.h) -----
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;

// ----- nfnetlink (linux/netfilter/nfnetlink.h) -----
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNETLINK_V0: u8 = 0;

// ----- netfilter (linux/netfilter.h) -----
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_POST_ROUTING: u32 = 4;
/// `srcnat` (`NF_IP_PRI_NAT_SRC`).
const PRIORITY_SRCNAT: i32 = 100;
/// `filter - 10` (`NF_IP_PRI_FILTER` is 0).
const PRIORITY_FILTER_MINUS_10: i32 = -10;
/// `priority raw`: before connection tracking, so a forged packet makes no conntrack entry.
const PRIORITY_RAW: i32 = -300;
const IPPROTO_UDP: u8 = 17;

// ----- nf_tables messages (enum nf_tables_msg_types) -----
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;

// ----- attributes -----
const NFTA_LIST_ELEM: u16 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFT_SET_INTERVAL: u32 = 0x4;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;

const NFT_FIB_RESULT_OIF: u32 = 1;
const NFTA_FIB_F_SADDR: u32 = 1 << 0;
const NFTA_FIB_F_IIF: u32 = 1 << 3;
const NFTA_FIB_F_PRESENT: u32 = 1 << 5;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 0x1;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

// ----- the `nft` program's user data (not interpreted by the kernel) -----
/// `nft` datatype ids of the set keys, shown by `nft list` as `ipv4_addr` / `ipv6_addr`.
const NFT_TYPE_IPADDR: u32 = 7;
const NFT_TYPE_IP6ADDR: u32 = 8;
/// Set user data TLV "key byte order", value big endian (2): how `nft` prints the keys.
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
/// Element user data TLV "flags", value "interval open": a range reaching the top of the
/// address space has no end element.
const UDATA_SET_ELEM_FLAGS: u8 = 1;
const SET_ELEM_F_INTERVAL_OPEN: u32 = 0x1;

/// Elements per `NFT_MSG_NEWSETELEM` message: the element list is one attribute, whose
/// length must fit in 16 bits (an IPv6 element takes at most 52 bytes).
const ELEMENTS_PER_MESSAGE: usize = 1000;
/// How long to wait for the kernel's acknowledgements (it answers while handling the send,
/// so this only guards against a kernel that never answers).
const RECV_TIMEOUT_SECS: u8 = 10;
const RECV_BUFFER_LEN: usize = 64 * 1024;

/// Name of the NAT chain and of the VXLAN filter chain.
pub const CHAIN_POSTROUTING: &str = "postrouting";
/// Name of the VXLAN filter chain.
pub const CHAIN_VXLAN: &str = "vxlan-from-nodes-only";
/// The chain that drops what a pod sends from an address that is not routed to its own
/// interface (anti-spoofing).
pub const CHAIN_POD_SOURCES: &str = "pod-sources-only";

/// Errors of nftables operations.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A system call on the netlink socket failed.
    #[error("nftables netlink {syscall} failed: {source}")]
    Io {
        /// The failed call (socket, bind, connect, setsockopt, send, recv).
        syscall: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a message (the whole batch was then rolled back).
    #[error("nftables: {op}: {message} (errno {errno})")]
    Kernel {
        /// The refused message, e.g. "add set inet sinew nodes4".
        op: String,
        /// The positive errno, e.g. `libc::ENOENT`.
        errno: i32,
        /// The error text, with the kernel's extended-ack message when it sent one.
        message: String,
    },
    /// The kernel's replies were not what the protocol promises.
    #[error("nftables: {op}: {message}")]
    Protocol {
        /// What was being done.
        op: String,
        /// What went wrong.
        message: String,
    },
    /// Entering the network namespace for the socket failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl NftError {
    /// The kernel's errno, if the kernel refused a message.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True when the kernel said the object does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }

    /// True when this kernel has no nf_tables at all (module absent or disabled).
    pub fn is_unsupported(&self) -> bool {
        match self {
            NftError::Io { syscall, source } => {
                *syscall == "socket" && source.raw_os_error() == Some(libc::EPROTONOSUPPORT)
            }
            NftError::Kernel { errno, .. } => {
                matches!(*errno, libc::EOPNOTSUPP | libc::EPROTONOSUPPORT)
            }
            _ => false,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = NftError> = std::result::Result<T, E>;

/// What sinew's table holds. Prefixes of the wrong family for a set, duplicates and
/// prefixes nested in another one are harmless: each set keeps only its outermost
/// prefixes (the kernel refuses overlapping intervals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinewTable {
    /// Every pool of the cluster (both families): destinations never masqueraded.
    pub pods: Vec<Cidr>,
    /// The pools with `natOutgoing`: sources masqueraded towards the outside.
    pub nat: Vec<Cidr>,
    /// Every node's underlay address: the only sources accepted on the VXLAN port.
    pub nodes: Vec<IpAddr>,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
    /// Every pod's host ports (the IPAM store's, [`crate::hostport::of_store`]): declared
    /// with the maps, so replacing the table keeps them.
    pub host_ports: Vec<HostPort>,
}

/// One element of an interval set, as sent to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalElement {
    /// The address, in network byte order (4 or 16 bytes).
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END`: the first address after an interval.
    pub end: bool,
    /// An interval start that runs to the top of the address space (no end element).
    pub open: bool,
}

/// The outermost prefixes of `family` among `cidrs`, sorted, without duplicates.
pub fn outermost(cidrs: &[Cidr], family: Family) -> Vec<Cidr> {
    let mut v: Vec<Cidr> = cidrs
        .iter()
        .filter(|c| c.family() == family)
        .copied()
        .collect();
    v.sort_by_key(|c| (addr_value(c.network()), c.prefix_len()));
    v.dedup();
    v.iter()
        .filter(|c| !v.iter().any(|o| o != *c && o.contains_cidr(c)))
        .copied()
        .collect()
}

/// The elements `nft` sends for an interval set holding these (disjoint, sorted)
/// prefixes: an end element at address 0 unless the first prefix starts there, then for
/// each prefix its network address and, unless it reaches the top of the address space
/// (then the start is marked open), an end element at its last address + 1.
pub fn interval_elements(prefixes: &[Cidr]) -> Vec<IntervalElement> {
    let mut out = Vec::with_capacity(prefixes.len() * 2 + 1);
    let Some(first) = prefixes.first() else {
        return out;
    };
    let bits = first.family().bits();
    if addr_value(first.network()) != 0 {
        out.push(IntervalElement {
            key: addr_bytes(0, bits),
            end: true,
            open: false,
        });
    }
    let top = max_value(bits);
    for p in prefixes {
        let last = addr_value(p.last());
        out.push(IntervalElement {
            key: addr_bytes(addr_value(p.network()), bits),
            end: false,
            open: last == top,
        });
        if last != top {
            out.push(IntervalElement {
                key: addr_bytes(last + 1, bits),
                end: true,
                open: false,
            });
        }
    }
    out
}

fn addr_value(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn max_value(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

fn addr_bytes(value: u128, bits: u8) -> Vec<u8> {
    if bits == 32 {
        // Callers only pass values below 2^32 for IPv4.
        Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))
            .octets()
            .to_vec()
    } else {
        Ipv6Addr::from(value).octets().to_vec()
    }
}

// ----- encoding -----

/// An expression of a rule (registers: everything goes through `NFT_REG_1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta load KEY => reg 1`.
    Meta { key: u32 },
    /// `cmp eq reg 1 DATA`.
    CmpEq { data: Vec<u8> },
    /// `payload load LEN @ BASE + OFFSET => reg 1`.
    Payload { base: u32, offset: u32, len: u32 },
    /// `lookup reg 1 set NAME` (`!=` when `invert`).
    Lookup {
        set: String,
        set_id: u32,
        invert: bool,
    },
    /// `counter`.
    Counter,
    /// `immediate reg 0 drop`.
    Drop,
    /// `masq`.
    Masq,
    /// `fib saddr . iif oif missing`: loads 1 into reg 1 when the route back to the packet's
    /// source leaves by the interface it came in on, else 0 (the reverse-path check).
    FibSourceViaInputPresent,
    // Host ports (`hostport` section below):
    /// `payload load LEN @ BASE + OFFSET => reg DREG` (a field of a concatenation).
    PayloadTo {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `cmp neq reg 1 DATA`.
    CmpNeq { data: Vec<u8> },
    /// `lookup reg 1 set NAME dreg 1`: the map's value lands in reg 1 onwards.
    MapLookup { set: String, set_id: u32 },
    /// `nat dnat FAMILY addr_min reg 1 proto_min reg PROTO_REG`.
    Dnat { family: u8, proto_reg: u32 },
    /// `fib daddr type => reg 1`.
    FibDaddrType,
    /// `ct load status => reg 1`.
    CtStatus,
    /// `bitwise reg 1 = (reg 1 & MASK) ^ 0`.
    And { mask: Vec<u8> },
    /// `immediate reg 0 jump -> CHAIN`.
    Jump { chain: String },
    /// `immediate reg 0 return`.
    Return,
}

/// Writes netlink attributes into a buffer.
struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        // Attribute payloads here are far below 64 KiB; nests are checked in `nest`.
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad4(self.buf);
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.put(ty, &data);
    }

    fn be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        f(&mut Attrs { buf: self.buf });
        let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// `struct nlmsghdr` + `struct nfgenmsg`, length patched by [`end_message`].
fn begin_message(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(NFNETLINK_V0);
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn end_message(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// Encodes one expression as the content of an `NFTA_LIST_ELEM`.
fn encode_expr(a: &mut Attrs<'_>, expr: &Expr) {
    let data = |a: &mut Attrs<'_>, name: &str, f: &dyn Fn(&mut Attrs<'_>)| {
        a.str(NFTA_EXPR_NAME, name);
        a.nest(NFTA_EXPR_DATA, |d| f(d));
    };
    match expr {
        Expr::Meta { key } => data(a, "meta", &|d| {
            d.be32(NFTA_META_KEY, *key);
            d.be32(NFTA_META_DREG, NFT_REG_1);
        }),
        Expr::CmpEq { data: value } => data(a, "cmp", &|d| {
            d.be32(NFTA_CMP_SREG, NFT_REG_1);
            d.be32(NFTA_CMP_OP, NFT_CMP_EQ);
            d.nest(NFTA_CMP_DATA, |v| v.put(NFTA_DATA_VALUE, value));
        }),
        Expr::Payload { base, offset, len } => data(a, "payload", &|d| {
            d.be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            d.be32(NFTA_PAYLOAD_BASE, *base);
            d.be32(NFTA_PAYLOAD_OFFSET, *offset);
            d.be32(NFTA_PAYLOAD_LEN, *len);
        }),
        Expr::Lookup {
            set,
            set_id,
            invert,
        } => data(a, "lookup", &|d| {
            d.str(NFTA_LOOKUP_SET, set);
            d.be32(NFTA_LOOKUP_SET_ID, *set_id);
            d.be32(NFTA_LOOKUP_SREG, NFT_REG_1);
            d.be32(
                NFTA_LOOKUP_FLAGS,
                if *invert { NFT_LOOKUP_F_INV } else { 0 },
            );
        }),
        // No data: the counter starts at zero.
        Expr::Counter => a.str(NFTA_EXPR_NAME, "counter"),
        Expr::Drop => data(a, "immediate", &|d| {
            d.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            d.nest(NFTA_IMMEDIATE_DATA, |v| {
                v.nest(NFTA_DATA_VERDICT, |c| c.be32(NFTA_VERDICT_CODE, NF_DROP));
            });
        }),
        // No data: plain `masquerade`, no port range, no flags.
        Expr::Masq => a.str(NFTA_EXPR_NAME, "masq"),
        Expr::FibSourceViaInputPresent => data(a, "fib", &|d| {
            d.be32(NFTA_FIB_DREG, NFT_REG_1);
            d.be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_OIF);
            d.be32(
                NFTA_FIB_FLAGS,
                NFTA_FIB_F_SADDR | NFTA_FIB_F_IIF | NFTA_FIB_F_PRESENT,
            );
        }),
        host_port_expr => encode_host_port_expr(a, host_port_expr),
    }
}

/// One nfnetlink batch being built: the messages and, per sequence number, what it does.
struct Batch {
    bytes: Vec<u8>,
    ops: BTreeMap<u32, String>,
    begin_seq: u32,
    next_seq: u32,
}

impl Batch {
    fn new(first_seq: u32) -> Batch {
        let mut bytes = Vec::new();
        begin_message(
            &mut bytes,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        end_message(&mut bytes, 0);
        Batch {
            bytes,
            ops: BTreeMap::new(),
            begin_seq: first_seq,
            next_seq: first_seq.wrapping_add(1),
        }
    }

    fn add(&mut self, op: String, msg: u16, flags: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let start = self.bytes.len();
        begin_message(
            &mut self.bytes,
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
        );
        f(&mut Attrs {
            buf: &mut self.bytes,
        });
        end_message(&mut self.bytes, start);
        self.ops.insert(seq, op);
    }

    /// Appends `NFNL_MSG_BATCH_END`; returns the bytes and the last sequence number used.
    fn finish(mut self) -> (Vec<u8>, BTreeMap<u32, String>, u32, u32) {
        let start = self.bytes.len();
        let end_seq = self.next_seq;
        begin_message(
            &mut self.bytes,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        end_message(&mut self.bytes, start);
        (self.bytes, self.ops, self.begin_seq, end_seq)
    }

    /// `table inet NAME {}` then `delete table inet NAME`: deletes it whether or not it
    /// existed, inside the transaction.
    fn delete_table(&mut self, table: &str) {
        self.add_table(table);
        self.add(
            format!("delete table inet {table}"),
            NFT_MSG_DELTABLE,
            0,
            |a| a.str(NFTA_TABLE_NAME, table),
        );
    }

    fn add_table(&mut self, table: &str) {
        self.add(
            format!("add table inet {table}"),
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            |a| {
                a.str(NFTA_TABLE_NAME, table);
                a.be32(NFTA_TABLE_FLAGS, 0);
            },
        );
    }

    fn add_set(&mut self, table: &str, name: &str, id: u32, family: Family, prefixes: &[Cidr]) {
        let (key_type, key_len) = match family {
            Family::V4 => (NFT_TYPE_IPADDR, 4),
            Family::V6 => (NFT_TYPE_IP6ADDR, 16),
        };
        self.add(
            format!("add set inet {table} {name}"),
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            |a| {
                a.str(NFTA_SET_TABLE, table);
                a.str(NFTA_SET_NAME, name);
                a.be32(NFTA_SET_FLAGS, NFT_SET_INTERVAL);
                a.be32(NFTA_SET_KEY_TYPE, key_type);
                a.be32(NFTA_SET_KEY_LEN, key_len);
                a.be32(NFTA_SET_ID, id);
                a.put(
                    NFTA_SET_USERDATA,
                    &udata(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN),
                );
            },
        );
        let elements = interval_elements(prefixes);
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            self.add(
                format!("add elements to set inet {table} {name}"),
                NFT_MSG_NEWSETELEM,
                NLM_F_CREATE,
                |a| {
                    a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                    a.str(NFTA_SET_ELEM_LIST_SET, name);
                    a.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
                    a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                        for e in chunk {
                            list.nest(NFTA_LIST_ELEM, |el| encode_element(el, e));
                        }
                    });
                },
            );
        }
    }

    fn add_base_chain(&mut self, table: &str, name: &str, kind: &str, hook: u32, priority: i32) {
        self.add(
            format!("add chain inet {table} {name}"),
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            |a| {
                a.str(NFTA_CHAIN_TABLE, table);
                a.str(NFTA_CHAIN_NAME, name);
                a.str(NFTA_CHAIN_TYPE, kind);
                a.be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                a.nest(NFTA_CHAIN_HOOK, |h| {
                    h.be32(NFTA_HOOK_HOOKNUM, hook);
                    h.put(NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
                });
            },
        );
    }

    fn add_rule(&mut self, table: &str, chain: &str, what: &str, exprs: &[Expr]) {
        self.add(
            format!("add rule inet {table} {chain} {what}"),
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            |a| encode_rule(a, table, chain, exprs),
        );
    }
}

fn encode_rule(a: &mut Attrs<'_>, table: &str, chain: &str, exprs: &[Expr]) {
    a.str(NFTA_RULE_TABLE, table);
    a.str(NFTA_RULE_CHAIN, chain);
    a.nest(NFTA_RULE_EXPRESSIONS, |list| {
        for e in exprs {
            list.nest(NFTA_LIST_ELEM, |x| encode_expr(x, e));
        }
    });
}

fn encode_element(a: &mut Attrs<'_>, e: &IntervalElement) {
    if e.end {
        a.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
    }
    a.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &e.key));
    if e.open {
        a.put(
            NFTA_SET_ELEM_USERDATA,
            &udata(UDATA_SET_ELEM_FLAGS, SET_ELEM_F_INTERVAL_OPEN),
        );
    }
}

/// One user-data TLV as `nft` writes it: type, length, host-endian u32 value.
fn udata(ty: u8, value: u32) -> Vec<u8> {
    let mut v = vec![ty, 4];
    v.extend_from_slice(&value.to_ne_bytes());
    v
}

/// `meta nfproto FAMILY`.
fn match_family(family: Family) -> [Expr; 2] {
    let proto = match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    };
    [
        Expr::Meta {
            key: NFT_META_NFPROTO,
        },
        Expr::CmpEq { data: vec![proto] },
    ]
}

/// `ip saddr` / `ip daddr` (and ip6): a load of the address from the network header.
fn load_address(family: Family, source: bool) -> Expr {
    let (offset, len) = match (family, source) {
        (Family::V4, true) => (12, 4),
        (Family::V4, false) => (16, 4),
        (Family::V6, true) => (8, 16),
        (Family::V6, false) => (24, 16),
    };
    Expr::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
    }
}

fn lookup(set: &str, set_id: u32, invert: bool) -> Expr {
    Expr::Lookup {
        set: set.to_string(),
        set_id,
        invert,
    }
}

/// `ip saddr @natN ip daddr != @podsN masquerade`.
fn masquerade_rule(family: Family, nat: (&str, u32), pods: (&str, u32)) -> Vec<Expr> {
    let mut v = match_family(family).to_vec();
    v.push(load_address(family, true));
    v.push(lookup(nat.0, nat.1, false));
    v.push(load_address(family, false));
    v.push(lookup(pods.0, pods.1, true));
    v.push(Expr::Masq);
    v
}

/// `ip saddr != @nodesN udp dport PORT counter drop`.
fn vxlan_rule(family: Family, nodes: (&str, u32), port: u16) -> Vec<Expr> {
    let mut v = match_family(family).to_vec();
    v.push(load_address(family, true));
    v.push(lookup(nodes.0, nodes.1, true));
    v.push(Expr::Meta {
        key: NFT_META_L4PROTO,
    });
    v.push(Expr::CmpEq {
        data: vec![IPPROTO_UDP],
    });
    v.push(Expr::Payload {
        base: NFT_PAYLOAD_TRANSPORT_HEADER,
        offset: 2,
        len: 2,
    });
    v.push(Expr::CmpEq {
        data: port.to_be_bytes().to_vec(),
    });
    v.push(Expr::Counter);
    v.push(Expr::Drop);
    v
}

/// `meta nfproto FAMILY iifname "snw*" [ip6 saddr != @linklocal6] fib saddr . iif oif
/// missing counter drop`: a packet from a pod's veth whose source is not routed back to that
/// veth (not the pod's own address) is dropped. IPv6 link-local sources (neighbour
/// discovery) are left alone: they are never routed off the link.
fn pod_source_rule(family: Family, link_local: (&str, u32)) -> Vec<Expr> {
    let mut v = match_family(family).to_vec();
    v.push(Expr::Meta {
        key: NFT_META_IIFNAME,
    });
    v.push(Expr::CmpEq {
        data: crate::consts::HOST_VETH_PREFIX.as_bytes().to_vec(),
    });
    if family == Family::V6 {
        v.push(load_address(family, true));
        v.push(lookup(link_local.0, link_local.1, true));
    }
    v.push(Expr::FibSourceViaInputPresent);
    // As `nft` encodes `missing`: a 32-bit register compared with zero.
    v.push(Expr::CmpEq { data: vec![0; 4] });
    v.push(Expr::Counter);
    v.push(Expr::Drop);
    v
}

/// The link-local range IPv6 neighbour discovery uses.
fn link_local_v6() -> Cidr {
    Cidr::new_truncating(
        IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        10,
    )
    .unwrap_or_else(|_| Cidr::host(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)))
}

/// Appends to `batch` the creation of the whole table (which must not exist at that point
/// of the transaction).
fn build_table(batch: &mut Batch, table: &str, t: &SinewTable) {
    let nodes: Vec<Cidr> = t.nodes.iter().map(|a| Cidr::host(*a)).collect();
    // (name, id, family, members)
    let link_local = [link_local_v6()];
    let sets: [(&str, u32, Family, &[Cidr]); 7] = [
        ("pods4", 1, Family::V4, &t.pods),
        ("pods6", 2, Family::V6, &t.pods),
        ("nat4", 3, Family::V4, &t.nat),
        ("nat6", 4, Family::V6, &t.nat),
        ("nodes4", 5, Family::V4, &nodes),
        ("nodes6", 6, Family::V6, &nodes),
        ("linklocal6", 7, Family::V6, &link_local),
    ];
    batch.add_table(table);
    for (name, id, family, members) in sets {
        batch.add_set(table, name, id, family, &outermost(members, family));
    }
    batch.add_base_chain(
        table,
        CHAIN_POSTROUTING,
        "nat",
        NF_INET_POST_ROUTING,
        PRIORITY_SRCNAT,
    );
    batch.add_rule(
        table,
        CHAIN_POSTROUTING,
        "ip saddr @nat4 ip daddr != @pods4 masquerade",
        &masquerade_rule(Family::V4, ("nat4", 3), ("pods4", 1)),
    );
    batch.add_rule(
        table,
        CHAIN_POSTROUTING,
        "ip6 saddr @nat6 ip6 daddr != @pods6 masquerade",
        &masquerade_rule(Family::V6, ("nat6", 4), ("pods6", 2)),
    );
    batch.add_base_chain(
        table,
        CHAIN_VXLAN,
        "filter",
        NF_INET_LOCAL_IN,
        PRIORITY_FILTER_MINUS_10,
    );
    let port = t.vxlan_port;
    batch.add_rule(
        table,
        CHAIN_VXLAN,
        &format!("ip saddr != @nodes4 udp dport {port} counter drop"),
        &vxlan_rule(Family::V4, ("nodes4", 5), port),
    );
    batch.add_rule(
        table,
        CHAIN_VXLAN,
        &format!("ip6 saddr != @nodes6 udp dport {port} counter drop"),
        &vxlan_rule(Family::V6, ("nodes6", 6), port),
    );
    batch.add_base_chain(
        table,
        CHAIN_POD_SOURCES,
        "filter",
        NF_INET_PRE_ROUTING,
        PRIORITY_RAW,
    );
    batch.add_rule(
        table,
        CHAIN_POD_SOURCES,
        "meta nfproto ipv4 iifname \"snw*\" fib saddr . iif oif missing counter drop",
        &pod_source_rule(Family::V4, ("linklocal6", 7)),
    );
    batch.add_rule(
        table,
        CHAIN_POD_SOURCES,
        "meta nfproto ipv6 iifname \"snw*\" ip6 saddr != @linklocal6 fib saddr . iif oif missing counter drop",
        &pod_source_rule(Family::V6, ("linklocal6", 7)),
    );
    build_host_ports(batch, table, &t.host_ports);
}

// ----- host ports (`crate::hostport`) -----
//
// ```text
//     map hostports4 { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }
//     map hostports4any { type inet_proto . inet_service : ipv4_addr . inet_service; }
//     map hostports6 { ... ipv6_addr ... }   map hostports6any { ... }
//     set hairpin4 { type ipv4_addr . ipv4_addr; }   set hairpin6 { ... }
//     chain hostports {
//         ip6 daddr ::1 return
//         meta nfproto ipv4 dnat ip to meta l4proto . ip daddr . th dport map @hostports4
//         meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostports4any
//         meta nfproto ipv6 dnat ip6 to meta l4proto . ip6 daddr . th dport map @hostports6
//         meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @hostports6any
//     }
//     chain hostports-prerouting {
//         type nat hook prerouting priority dstnat; policy accept;
//         fib daddr type local jump hostports
//     }
//     chain hostports-output {
//         type nat hook output priority -100; policy accept;
//         fib daddr type local jump hostports
//     }
//     chain hostports-postrouting {
//         type nat hook postrouting priority srcnat; policy accept;
//         ip saddr . ip daddr @hairpin4 masquerade
//         ip6 saddr . ip6 daddr @hairpin6 masquerade
//         ip saddr 127.0.0.0/8 ct status dnat masquerade
//     }
//     chain hostports-loopback-guard {
//         type filter hook input priority filter - 10; policy accept;
//         iifname "snw*" ip daddr 127.0.0.0/8 ct status ! dnat counter drop
//     }
// ```
//
// A key's fields are padded to 4 bytes each (nft's registers), values too. NAT chains see
// only the first packet of a connection, so a flow costs one FIB lookup and at most four
// hash lookups, however many pods have host ports.

const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFT_SET_MAP: u32 = 0x8;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFT_REG_2: u32 = 2;
/// 32-bit registers: `NFT_REG32_00` is 8 and overlays `NFT_REG_1`.
const NFT_REG32_01: u32 = 9;
const NFT_REG32_02: u32 = 10;
const NFT_REG32_05: u32 = 13;
const NFT_META_IIFNAME: u32 = 6;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATUS: u32 = 2;
/// `IPS_DST_NAT` (`linux/netfilter/nf_conntrack_common.h`).
const IPS_DST_NAT: u32 = 1 << 5;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// `RTN_LOCAL` (`linux/rtnetlink.h`): the address is one of this host's.
const RTN_LOCAL: u32 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
/// `dstnat` (`NF_IP_PRI_NAT_DST`).
const PRIORITY_DSTNAT: i32 = -100;
/// `nft` datatype ids (shown by `nft list`; a concatenation packs 6 bits per field).
const NFT_TYPE_INET_PROTOCOL: u32 = 12;
const NFT_TYPE_INET_SERVICE: u32 = 13;
/// Set user data TLV "data byte order" (for maps), next to the key's.
const UDATA_SET_DATABYTEORDER: u8 = 1;
const BYTEORDER_HOST: u32 = 0;

/// The regular chain holding the DNAT rules, jumped to from prerouting and output.
pub const CHAIN_HOSTPORTS: &str = "hostports";
/// Traffic from outside the node to its local addresses.
pub const CHAIN_HOSTPORTS_PREROUTING: &str = "hostports-prerouting";
/// The node's own connections to its local addresses (`127.0.0.1` included).
pub const CHAIN_HOSTPORTS_OUTPUT: &str = "hostports-output";
/// Hairpin and loopback-source masquerading.
pub const CHAIN_HOSTPORTS_POSTROUTING: &str = "hostports-postrouting";
/// Drops what pods send to `127.0.0.0/8` unless it answers a host-port connection:
/// `route_localnet` on a pod's host veth would otherwise let the pod reach the node's
/// loopback services.
pub const CHAIN_HOSTPORTS_GUARD: &str = "hostports-loopback-guard";

/// One of the four DNAT maps, or one of the two hairpin sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostPortSet {
    name: &'static str,
    id: u32,
    key_type: u32,
    key_len: u32,
    /// Data type and length; `None` for a set.
    data: Option<(u32, u32)>,
}

const fn concat(types: &[u32]) -> u32 {
    let mut t = 0;
    let mut i = 0;
    while i < types.len() {
        t = (t << 6) | types[i];
        i += 1;
    }
    t
}

const V4_SERVICE: u32 = concat(&[NFT_TYPE_IPADDR, NFT_TYPE_INET_SERVICE]);
const V6_SERVICE: u32 = concat(&[NFT_TYPE_IP6ADDR, NFT_TYPE_INET_SERVICE]);

const HOSTPORTS4: HostPortSet = HostPortSet {
    name: "hostports4",
    id: 11,
    key_type: concat(&[
        NFT_TYPE_INET_PROTOCOL,
        NFT_TYPE_IPADDR,
        NFT_TYPE_INET_SERVICE,
    ]),
    key_len: 12,
    data: Some((V4_SERVICE, 8)),
};
const HOSTPORTS4_ANY: HostPortSet = HostPortSet {
    name: "hostports4any",
    id: 12,
    key_type: concat(&[NFT_TYPE_INET_PROTOCOL, NFT_TYPE_INET_SERVICE]),
    key_len: 8,
    data: Some((V4_SERVICE, 8)),
};
const HOSTPORTS6: HostPortSet = HostPortSet {
    name: "hostports6",
    id: 13,
    key_type: concat(&[
        NFT_TYPE_INET_PROTOCOL,
        NFT_TYPE_IP6ADDR,
        NFT_TYPE_INET_SERVICE,
    ]),
    key_len: 24,
    data: Some((V6_SERVICE, 20)),
};
const HOSTPORTS6_ANY: HostPortSet = HostPortSet {
    name: "hostports6any",
    id: 14,
    key_type: concat(&[NFT_TYPE_INET_PROTOCOL, NFT_TYPE_INET_SERVICE]),
    key_len: 8,
    data: Some((V6_SERVICE, 20)),
};
const HAIRPIN4: HostPortSet = HostPortSet {
    name: "hairpin4",
    id: 15,
    key_type: concat(&[NFT_TYPE_IPADDR, NFT_TYPE_IPADDR]),
    key_len: 8,
    data: None,
};
const HAIRPIN6: HostPortSet = HostPortSet {
    name: "hairpin6",
    id: 16,
    key_type: concat(&[NFT_TYPE_IP6ADDR, NFT_TYPE_IP6ADDR]),
    key_len: 32,
    data: None,
};

/// One element of a host-port map or hairpin set, as sent to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPortElement {
    set: HostPortSet,
    key: Vec<u8>,
    data: Option<Vec<u8>>,
}

impl HostPortElement {
    /// How errors and logs name it, in `nft` words.
    fn describe(&self) -> String {
        format!(
            "element {} of map inet {NFT_TABLE} {}",
            hex(&self.key),
            self.set.name
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn padded(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    pad4(&mut v);
    v
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The map element of one host port (`proto . [daddr .] dport : podIP . port`).
fn map_element(hp: &HostPort) -> HostPortElement {
    let v6 = hp.pod_ip.is_ipv6();
    let set = match (v6, hp.host_ip.is_some()) {
        (false, true) => HOSTPORTS4,
        (false, false) => HOSTPORTS4_ANY,
        (true, true) => HOSTPORTS6,
        (true, false) => HOSTPORTS6_ANY,
    };
    let mut key = padded(&[hp.protocol.number()]);
    if let Some(ip) = hp.host_ip {
        key.extend(ip_bytes(ip));
    }
    key.extend(padded(&hp.host_port.to_be_bytes()));
    let mut data = ip_bytes(hp.pod_ip);
    data.extend(padded(&hp.container_port.to_be_bytes()));
    HostPortElement {
        set,
        key,
        data: Some(data),
    }
}

/// The hairpin element of a pod address (`podIP . podIP`): a pod reaching its own host port
/// gets its own address back as destination, which it would drop as a martian unless the
/// source is masqueraded.
fn hairpin_element(pod_ip: IpAddr) -> HostPortElement {
    let set = if pod_ip.is_ipv6() { HAIRPIN6 } else { HAIRPIN4 };
    let mut key = ip_bytes(pod_ip);
    key.extend(ip_bytes(pod_ip));
    HostPortElement {
        set,
        key,
        data: None,
    }
}

/// Every element these host ports need: one per host port, one hairpin per pod address.
fn host_port_elements(ports: &[HostPort]) -> Vec<HostPortElement> {
    let mut out: Vec<HostPortElement> = ports.iter().map(map_element).collect();
    let mut pods: Vec<IpAddr> = ports.iter().map(|p| p.pod_ip).collect();
    pods.sort();
    pods.dedup();
    out.extend(pods.into_iter().map(hairpin_element));
    out
}

fn encode_host_port_expr(a: &mut Attrs<'_>, expr: &Expr) {
    let data = |a: &mut Attrs<'_>, name: &str, f: &dyn Fn(&mut Attrs<'_>)| {
        a.str(NFTA_EXPR_NAME, name);
        a.nest(NFTA_EXPR_DATA, |d| f(d));
    };
    let verdict = |a: &mut Attrs<'_>, code: i32, chain: Option<&str>| {
        data(a, "immediate", &|d| {
            d.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            d.nest(NFTA_IMMEDIATE_DATA, |v| {
                v.nest(NFTA_DATA_VERDICT, |c| {
                    c.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
                    if let Some(chain) = chain {
                        c.str(NFTA_VERDICT_CHAIN, chain);
                    }
                });
            });
        });
    };
    match expr {
        Expr::PayloadTo {
            base,
            offset,
            len,
            dreg,
        } => data(a, "payload", &|d| {
            d.be32(NFTA_PAYLOAD_DREG, *dreg);
            d.be32(NFTA_PAYLOAD_BASE, *base);
            d.be32(NFTA_PAYLOAD_OFFSET, *offset);
            d.be32(NFTA_PAYLOAD_LEN, *len);
        }),
        Expr::CmpNeq { data: value } => data(a, "cmp", &|d| {
            d.be32(NFTA_CMP_SREG, NFT_REG_1);
            d.be32(NFTA_CMP_OP, NFT_CMP_NEQ);
            d.nest(NFTA_CMP_DATA, |v| v.put(NFTA_DATA_VALUE, value));
        }),
        Expr::MapLookup { set, set_id } => data(a, "lookup", &|d| {
            d.str(NFTA_LOOKUP_SET, set);
            d.be32(NFTA_LOOKUP_SET_ID, *set_id);
            d.be32(NFTA_LOOKUP_SREG, NFT_REG_1);
            d.be32(NFTA_LOOKUP_DREG, NFT_REG_1);
        }),
        Expr::Dnat { family, proto_reg } => data(a, "nat", &|d| {
            d.be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
            d.be32(NFTA_NAT_FAMILY, u32::from(*family));
            d.be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
            d.be32(NFTA_NAT_REG_PROTO_MIN, *proto_reg);
        }),
        Expr::FibDaddrType => data(a, "fib", &|d| {
            d.be32(NFTA_FIB_DREG, NFT_REG_1);
            d.be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
            d.be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
        }),
        Expr::CtStatus => data(a, "ct", &|d| {
            d.be32(NFTA_CT_DREG, NFT_REG_1);
            d.be32(NFTA_CT_KEY, NFT_CT_STATUS);
        }),
        Expr::And { mask } => data(a, "bitwise", &|d| {
            d.be32(NFTA_BITWISE_SREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_DREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_LEN, u32::try_from(mask.len()).unwrap_or(0));
            d.nest(NFTA_BITWISE_MASK, |v| v.put(NFTA_DATA_VALUE, mask));
            d.nest(NFTA_BITWISE_XOR, |v| {
                v.put(NFTA_DATA_VALUE, &vec![0; mask.len()])
            });
        }),
        Expr::Jump { chain } => verdict(a, NFT_JUMP, Some(chain)),
        Expr::Return => verdict(a, NFT_RETURN, None),
        // The table's other expressions are encoded by `encode_expr` itself.
        Expr::Meta { .. }
        | Expr::CmpEq { .. }
        | Expr::Payload { .. }
        | Expr::Lookup { .. }
        | Expr::Counter
        | Expr::Drop
        | Expr::Masq
        | Expr::FibSourceViaInputPresent => encode_expr(a, expr),
    }
}

/// `meta l4proto . [ip daddr .] th dport`, loaded as the map's key from reg 1 on.
fn host_port_key(family: Family, with_daddr: bool) -> Vec<Expr> {
    let mut v = vec![Expr::Meta {
        key: NFT_META_L4PROTO,
    }];
    let port_reg = if with_daddr {
        let (offset, len, next) = match family {
            Family::V4 => (16, 4, NFT_REG32_02),
            Family::V6 => (24, 16, NFT_REG32_05),
        };
        v.push(Expr::PayloadTo {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len,
            dreg: NFT_REG32_01,
        });
        next
    } else {
        NFT_REG32_01
    };
    v.push(Expr::PayloadTo {
        base: NFT_PAYLOAD_TRANSPORT_HEADER,
        offset: 2,
        len: 2,
        dreg: port_reg,
    });
    v
}

/// `meta nfproto F dnat F to meta l4proto . [daddr .] th dport map @SET`.
fn dnat_rule(family: Family, set: HostPortSet) -> Vec<Expr> {
    let mut v = match_family(family).to_vec();
    v.extend(host_port_key(family, set.key_len > 8));
    v.push(Expr::MapLookup {
        set: set.name.to_string(),
        set_id: set.id,
    });
    let (nat_family, proto_reg) = match family {
        Family::V4 => (NFPROTO_IPV4, NFT_REG32_01),
        Family::V6 => (NFPROTO_IPV6, NFT_REG_2),
    };
    v.push(Expr::Dnat {
        family: nat_family,
        proto_reg,
    });
    v
}

/// `ip saddr . ip daddr @hairpinN masquerade`.
fn hairpin_rule(family: Family, set: HostPortSet) -> Vec<Expr> {
    let mut v = match_family(family).to_vec();
    v.push(load_address(family, true));
    let (offset, len, dreg) = match family {
        Family::V4 => (16, 4, NFT_REG32_01),
        Family::V6 => (24, 16, NFT_REG_2),
    };
    v.push(Expr::PayloadTo {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
        dreg,
    });
    v.push(lookup(set.name, set.id, false));
    v.push(Expr::Masq);
    v
}

/// `ct status dnat` (or `ct status ! dnat`).
fn ct_dnat(dnat: bool) -> [Expr; 3] {
    let zero = vec![0; 4];
    [
        Expr::CtStatus,
        Expr::And {
            mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
        },
        if dnat {
            Expr::CmpNeq { data: zero }
        } else {
            Expr::CmpEq { data: zero }
        },
    ]
}

/// `ip saddr|daddr 127.0.0.0/8` (nft compares the first byte).
fn ipv4_loopback(source: bool) -> [Expr; 4] {
    let [nfproto, v4] = match_family(Family::V4);
    [
        nfproto,
        v4,
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: if source { 12 } else { 16 },
            len: 1,
        },
        Expr::CmpEq { data: vec![127] },
    ]
}

impl Batch {
    fn add_host_port_set(&mut self, table: &str, set: HostPortSet) {
        self.add(
            format!("add map inet {table} {}", set.name),
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            |a| {
                a.str(NFTA_SET_TABLE, table);
                a.str(NFTA_SET_NAME, set.name);
                a.be32(
                    NFTA_SET_FLAGS,
                    if set.data.is_some() { NFT_SET_MAP } else { 0 },
                );
                a.be32(NFTA_SET_KEY_TYPE, set.key_type);
                a.be32(NFTA_SET_KEY_LEN, set.key_len);
                if let Some((data_type, data_len)) = set.data {
                    a.be32(NFTA_SET_DATA_TYPE, data_type);
                    a.be32(NFTA_SET_DATA_LEN, data_len);
                }
                a.be32(NFTA_SET_ID, set.id);
                let mut udata = udata(UDATA_SET_KEYBYTEORDER, BYTEORDER_HOST);
                if set.data.is_some() {
                    udata.extend(self::udata(UDATA_SET_DATABYTEORDER, BYTEORDER_HOST));
                }
                a.put(NFTA_SET_USERDATA, &udata);
            },
        );
    }

    /// One element message: `NFT_MSG_NEWSETELEM` or `NFT_MSG_DELSETELEM`, by the set's name
    /// (and its id when the set is created in the same batch).
    fn host_port_element(
        &mut self,
        table: &str,
        msg: u16,
        element: &HostPortElement,
        with_id: bool,
    ) {
        let verb = if msg == NFT_MSG_DELSETELEM {
            "delete"
        } else {
            "add"
        };
        self.add(
            format!("{verb} {}", element.describe()),
            msg,
            if msg == NFT_MSG_DELSETELEM {
                0
            } else {
                NLM_F_CREATE
            },
            |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, element.set.name);
                if with_id {
                    a.be32(NFTA_SET_ELEM_LIST_SET_ID, element.set.id);
                }
                a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                    list.nest(NFTA_LIST_ELEM, |el| {
                        el.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &element.key));
                        if msg != NFT_MSG_DELSETELEM
                            && let Some(data) = &element.data
                        {
                            el.nest(NFTA_SET_ELEM_DATA, |d| d.put(NFTA_DATA_VALUE, data));
                        }
                    });
                });
            },
        );
    }

    fn add_regular_chain(&mut self, table: &str, name: &str) {
        self.add(
            format!("add chain inet {table} {name}"),
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            |a| {
                a.str(NFTA_CHAIN_TABLE, table);
                a.str(NFTA_CHAIN_NAME, name);
            },
        );
    }
}

/// Appends to `batch` the host-port maps (holding `ports`), the hairpin sets and their
/// chains (see the section's comment).
fn build_host_ports(batch: &mut Batch, table: &str, ports: &[HostPort]) {
    let all = [
        HOSTPORTS4,
        HOSTPORTS4_ANY,
        HOSTPORTS6,
        HOSTPORTS6_ANY,
        HAIRPIN4,
        HAIRPIN6,
    ];
    for set in all {
        batch.add_host_port_set(table, set);
    }
    for element in host_port_elements(ports) {
        batch.host_port_element(table, NFT_MSG_NEWSETELEM, &element, true);
    }
    batch.add_regular_chain(table, CHAIN_HOSTPORTS);
    let mut return_on_v6_loopback = match_family(Family::V6).to_vec();
    return_on_v6_loopback.extend([
        load_address(Family::V6, false),
        Expr::CmpEq {
            data: Ipv6Addr::LOCALHOST.octets().to_vec(),
        },
        Expr::Return,
    ]);
    batch.add_rule(
        table,
        CHAIN_HOSTPORTS,
        "ip6 daddr ::1 return",
        &return_on_v6_loopback,
    );
    for (family, set, what) in [
        (
            Family::V4,
            HOSTPORTS4,
            "ip to meta l4proto . ip daddr . th dport",
        ),
        (Family::V4, HOSTPORTS4_ANY, "ip to meta l4proto . th dport"),
        (
            Family::V6,
            HOSTPORTS6,
            "ip6 to meta l4proto . ip6 daddr . th dport",
        ),
        (Family::V6, HOSTPORTS6_ANY, "ip6 to meta l4proto . th dport"),
    ] {
        batch.add_rule(
            table,
            CHAIN_HOSTPORTS,
            &format!("dnat {what} map @{}", set.name),
            &dnat_rule(family, set),
        );
    }
    let jump = [
        Expr::FibDaddrType,
        Expr::CmpEq {
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
        Expr::Jump {
            chain: CHAIN_HOSTPORTS.to_string(),
        },
    ];
    for (chain, hook) in [
        (CHAIN_HOSTPORTS_PREROUTING, NF_INET_PRE_ROUTING),
        (CHAIN_HOSTPORTS_OUTPUT, NF_INET_LOCAL_OUT),
    ] {
        batch.add_base_chain(table, chain, "nat", hook, PRIORITY_DSTNAT);
        batch.add_rule(table, chain, "fib daddr type local jump hostports", &jump);
    }
    let post = CHAIN_HOSTPORTS_POSTROUTING;
    batch.add_base_chain(table, post, "nat", NF_INET_POST_ROUTING, PRIORITY_SRCNAT);
    batch.add_rule(
        table,
        post,
        "ip saddr . ip daddr @hairpin4 masquerade",
        &hairpin_rule(Family::V4, HAIRPIN4),
    );
    batch.add_rule(
        table,
        post,
        "ip6 saddr . ip6 daddr @hairpin6 masquerade",
        &hairpin_rule(Family::V6, HAIRPIN6),
    );
    let mut loopback_source = ipv4_loopback(true).to_vec();
    loopback_source.extend(ct_dnat(true));
    loopback_source.push(Expr::Masq);
    batch.add_rule(
        table,
        post,
        "ip saddr 127.0.0.0/8 ct status dnat masquerade",
        &loopback_source,
    );
    let guard = CHAIN_HOSTPORTS_GUARD;
    batch.add_base_chain(
        table,
        guard,
        "filter",
        NF_INET_LOCAL_IN,
        PRIORITY_FILTER_MINUS_10,
    );
    let mut from_pods = vec![
        Expr::Meta {
            key: NFT_META_IIFNAME,
        },
        Expr::CmpEq {
            data: crate::consts::HOST_VETH_PREFIX.as_bytes().to_vec(),
        },
    ];
    from_pods.extend(ipv4_loopback(false));
    from_pods.extend(ct_dnat(false));
    from_pods.extend([Expr::Counter, Expr::Drop]);
    batch.add_rule(
        table,
        guard,
        "iifname \"snw*\" ip daddr 127.0.0.0/8 ct status ! dnat counter drop",
        &from_pods,
    );
}

/// The host-port part of the table in `nft -f` syntax (the lines inside `table inet sinew
/// { ... }`): what `nft list` shows of it, and what the agent compares to decide when to
/// replace the table.
pub fn render_host_ports(ports: &[HostPort]) -> String {
    let ty = |t: u32| -> &'static str {
        match t {
            NFT_TYPE_IPADDR => "ipv4_addr",
            NFT_TYPE_IP6ADDR => "ipv6_addr",
            NFT_TYPE_INET_PROTOCOL => "inet_proto",
            _ => "inet_service",
        }
    };
    let type_of = |mut t: u32| -> String {
        let mut parts = Vec::new();
        while t != 0 {
            parts.push(ty(t & 0x3f));
            t >>= 6;
        }
        parts.reverse();
        parts.join(" . ")
    };
    let mut s = String::new();
    for set in [
        HOSTPORTS4,
        HOSTPORTS4_ANY,
        HOSTPORTS6,
        HOSTPORTS6_ANY,
        HAIRPIN4,
        HAIRPIN6,
    ] {
        let mut elements: Vec<String> = Vec::new();
        for hp in ports {
            if map_element(hp).set == set {
                let on = hp.host_ip.map(|ip| format!("{ip} . ")).unwrap_or_default();
                elements.push(format!(
                    "{} . {on}{} : {} . {}",
                    hp.protocol, hp.host_port, hp.pod_ip, hp.container_port
                ));
            }
        }
        let mut pods: Vec<IpAddr> = ports.iter().map(|p| p.pod_ip).collect();
        pods.sort();
        pods.dedup();
        for pod in pods {
            if hairpin_element(pod).set == set {
                elements.push(format!("{pod} . {pod}"));
            }
        }
        let (kind, ty) = match set.data {
            Some((data, _)) => (
                "map",
                format!("{} : {}", type_of(set.key_type), type_of(data)),
            ),
            None => ("set", type_of(set.key_type)),
        };
        let elements = if elements.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", elements.join(", "))
        };
        s += &format!("    {kind} {} {{ type {ty};{elements} }}\n", set.name);
    }
    s += "    chain hostports {\n";
    s += "        ip6 daddr ::1 return\n";
    s +=
        "        meta nfproto ipv4 dnat ip to meta l4proto . ip daddr . th dport map @hostports4\n";
    s += "        meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostports4any\n";
    s += "        meta nfproto ipv6 dnat ip6 to meta l4proto . ip6 daddr . th dport map @hostports6\n";
    s += "        meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @hostports6any\n";
    s += "    }\n";
    s += "    chain hostports-prerouting {\n        type nat hook prerouting priority dstnat; policy accept;\n";
    s += "        fib daddr type local jump hostports\n    }\n";
    s += "    chain hostports-output {\n        type nat hook output priority -100; policy accept;\n";
    s += "        fib daddr type local jump hostports\n    }\n";
    s += "    chain hostports-postrouting {\n        type nat hook postrouting priority srcnat; policy accept;\n";
    s += "        ip saddr . ip daddr @hairpin4 masquerade\n";
    s += "        ip6 saddr . ip6 daddr @hairpin6 masquerade\n";
    s += "        ip saddr 127.0.0.0/8 ct status dnat masquerade\n    }\n";
    s += "    chain hostports-loopback-guard {\n        type filter hook input priority filter - 10; policy accept;\n";
    s +=
        "        iifname \"snw*\" ip daddr 127.0.0.0/8 ct status & dnat == 0 counter drop\n    }\n";
    s
}

/// Walks netlink attributes: `(type without flags, payload)`.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?));
        let ty = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & !NLA_F_NESTED;
        let value = data.get(4..len)?;
        data = data.get(super::align4(len)..).unwrap_or_default();
        Some((ty, value))
    })
}

/// The value of the first attribute of type `ty`.
fn attribute(data: &[u8], ty: u16) -> Option<&[u8]> {
    attributes(data).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

/// The data of the element in a `NFT_MSG_NEWSETELEM` reply (after its `nfgenmsg`).
fn element_data(payload: &[u8]) -> Option<Vec<u8>> {
    let list = attribute(payload.get(4..)?, NFTA_SET_ELEM_LIST_ELEMENTS)?;
    let element = attribute(list, NFTA_LIST_ELEM)?;
    let data = attribute(element, NFTA_SET_ELEM_DATA)?;
    attribute(data, NFTA_DATA_VALUE).map(<[u8]>::to_vec)
}

impl Nftables {
    /// Maps `ports` (one pod's host ports) in sinew's table, whose maps the agent declared.
    /// An element of the same key mapping elsewhere is replaced: the IPAM store gives a key to
    /// one pod at a time, so such an element is a leftover of a pod that is gone. Fails with
    /// `ENOENT` when the table or its maps do not exist (yet).
    pub fn add_host_ports(&mut self, ports: &[HostPort]) -> Result<()> {
        let elements = host_port_elements(ports);
        if elements.is_empty() {
            return Ok(());
        }
        let mut batch = self.batch();
        for e in &elements {
            batch.host_port_element(NFT_TABLE, NFT_MSG_NEWSETELEM, e, false);
        }
        match self.commit(batch) {
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            other => return other,
        }
        for e in &elements {
            let mut batch = self.batch();
            batch.host_port_element(NFT_TABLE, NFT_MSG_NEWSETELEM, e, false);
            match self.commit(batch) {
                Err(err) if err.errno() == Some(libc::EEXIST) => {
                    tracing::info!(element = %e.describe(), "replacing a host port left by a pod that is gone");
                    let mut batch = self.batch();
                    batch.host_port_element(NFT_TABLE, NFT_MSG_DELSETELEM, e, false);
                    batch.host_port_element(NFT_TABLE, NFT_MSG_NEWSETELEM, e, false);
                    self.commit(batch)?;
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Removes `ports` (one pod's host ports) from sinew's table, each element only while it
    /// still maps to this pod (added and deleted in one transaction: the add fails for an
    /// element mapping elsewhere). What is already gone, the table included, is fine.
    pub fn remove_host_ports(&mut self, ports: &[HostPort]) -> Result<()> {
        let elements = host_port_elements(ports);
        if elements.is_empty() {
            return Ok(());
        }
        let remove = |nft: &mut Nftables, elements: &[HostPortElement]| {
            let mut batch = nft.batch();
            for e in elements {
                batch.host_port_element(NFT_TABLE, NFT_MSG_NEWSETELEM, e, false);
                batch.host_port_element(NFT_TABLE, NFT_MSG_DELSETELEM, e, false);
            }
            nft.commit(batch)
        };
        match remove(self, &elements) {
            Err(e) if e.is_not_found() || e.is_unsupported() => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                for element in &elements {
                    match remove(self, std::slice::from_ref(element)) {
                        Err(e) if e.errno() == Some(libc::EEXIST) => {
                            tracing::debug!(element = %element.describe(), "maps to another pod now; left alone");
                        }
                        Err(e) if e.is_not_found() => {}
                        other => other?,
                    }
                }
                Ok(())
            }
            other => other,
        }
    }

    /// The host ports of `ports` that the kernel does not map as recorded (missing, or to
    /// another pod), each with what is wrong; empty when all are in place.
    pub fn host_port_differences(&mut self, ports: &[HostPort]) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for hp in ports {
            let want = map_element(hp);
            match self.get_element(&want)? {
                None => problems.push(format!("host port {hp} is not mapped")),
                Some(data) if Some(&data) != want.data.as_ref() => {
                    problems.push(format!("host port {hp} maps elsewhere"))
                }
                Some(_) => {}
            }
        }
        let mut pods: Vec<IpAddr> = ports.iter().map(|p| p.pod_ip).collect();
        pods.sort();
        pods.dedup();
        for pod in pods {
            if self.get_element(&hairpin_element(pod))?.is_none() {
                problems.push(format!("the hairpin entry of {pod} is missing"));
            }
        }
        Ok(problems)
    }

    /// The element of `want`'s key: `None` if absent (the table or map too), else its data
    /// (empty for a set).
    fn get_element(&mut self, want: &HostPortElement) -> Result<Option<Vec<u8>>> {
        let op = format!("get {}", want.describe());
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut bytes = Vec::new();
        begin_message(
            &mut bytes,
            nft_type(NFT_MSG_GETSETELEM),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_INET,
            0,
        );
        let mut a = Attrs { buf: &mut bytes };
        a.str(NFTA_SET_ELEM_LIST_TABLE, NFT_TABLE);
        a.str(NFTA_SET_ELEM_LIST_SET, want.set.name);
        a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
            list.nest(NFTA_LIST_ELEM, |el| {
                el.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &want.key));
            });
        });
        end_message(&mut bytes, 0);
        self.get_object(&op, &bytes, seq, NFT_MSG_NEWSETELEM)
            .map(|found| found.map(|payload| element_data(&payload).unwrap_or_default()))
    }
}

// ----- the socket -----

/// A blocking `NETLINK_NETFILTER` socket bound to one network namespace.
#[derive(Debug)]
pub struct Nftables {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nftables {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn new() -> Result<Nftables> {
        let io_err = |syscall| move |source| NftError::Io { syscall, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io_err("socket"))?;
        socket.bind_auto().map_err(io_err("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io_err("connect"))?;
        // Best effort: error messages from the kernel, and short error replies.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS.into(),
            tv_usec: 0,
        };
        setsockopt(&socket, libc::SO_RCVTIMEO, &timeout).map_err(io_err("setsockopt"))?;
        // Sequence numbers only need to differ from another socket's in-flight ones.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Ok(Nftables {
            socket,
            seq,
            buf: vec![0; RECV_BUFFER_LEN],
        })
    }

    /// Opens a socket inside `ns` (on a short-lived thread). The socket keeps talking
    /// to `ns` from whatever thread uses it afterwards.
    pub fn in_netns(ns: &NetNs) -> Result<Nftables> {
        ns.run_in(Nftables::new)?
    }

    /// Whether table `inet NAME` exists.
    pub fn table_exists(&mut self, table: &str) -> Result<bool> {
        let op = format!("get table inet {table}");
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut bytes = Vec::new();
        begin_message(
            &mut bytes,
            nft_type(NFT_MSG_GETTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_INET,
            0,
        );
        Attrs { buf: &mut bytes }.str(NFTA_TABLE_NAME, table);
        end_message(&mut bytes, 0);
        Ok(self
            .get_object(&op, &bytes, seq, NFT_MSG_NEWTABLE)?
            .is_some())
    }

    /// Sends one `GET` request (`seq`) and returns the payload of the object the kernel
    /// answers with (a message of type `reply`); `None` when it says there is none (`ENOENT`).
    fn get_object(
        &mut self,
        op: &str,
        request: &[u8],
        seq: u32,
        reply: u16,
    ) -> Result<Option<Vec<u8>>> {
        self.send(request)?;
        let mut found = None;
        loop {
            let len = self.recv(op)?;
            for m in Messages::new(&self.buf[..len]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        return match m.error(op) {
                            None => Ok(found),
                            Some(e) if e.is_not_found() => Ok(None),
                            Some(e) => Err(e),
                        };
                    }
                    NLMSG_DONE => return Ok(found),
                    t if t == nft_type(reply) => found = Some(m.payload.to_vec()),
                    _ => {}
                }
            }
        }
    }

    /// Replaces sinew's table (`inet sinew`) by `t` in one transaction: whoever lists the
    /// ruleset sees the old table or the new one, never a mix or none.
    pub fn replace_sinew_table(&mut self, t: &SinewTable) -> Result<()> {
        self.replace_table(NFT_TABLE, t)
    }

    /// [`Nftables::replace_sinew_table`] for a table of another name.
    pub fn replace_table(&mut self, table: &str, t: &SinewTable) -> Result<()> {
        let mut batch = self.batch();
        batch.delete_table(table);
        build_table(&mut batch, table, t);
        self.commit(batch)
    }

    /// Deletes table `inet NAME` if it exists.
    pub fn delete_table(&mut self, table: &str) -> Result<()> {
        let mut batch = self.batch();
        batch.delete_table(table);
        self.commit(batch)
    }

    fn batch(&mut self) -> Batch {
        self.seq = self.seq.wrapping_add(1);
        Batch::new(self.seq)
    }

    /// Sends the batch and reads an acknowledgement for each of its messages.
    fn commit(&mut self, batch: Batch) -> Result<()> {
        let (bytes, ops, begin_seq, end_seq) = batch.finish();
        self.seq = end_seq;
        self.ensure_sndbuf(bytes.len())?;
        self.send(&bytes)?;
        let mut pending = ops.clone();
        let mut errors: BTreeMap<u32, NftError> = BTreeMap::new();
        let whole = "commit nftables batch".to_string();
        while !pending.is_empty() {
            let len = match self.recv(&whole) {
                Ok(len) => len,
                // Replies stopped: report what the kernel refused, if anything.
                Err(e) if !errors.is_empty() => {
                    tracing::debug!(error = %e, "no further nftables acknowledgements");
                    break;
                }
                Err(e) => return Err(e),
            };
            for m in Messages::new(&self.buf[..len]) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                if m.seq == begin_seq || m.seq == end_seq {
                    // The batch as a whole was refused (e.g. no nf_tables in this kernel).
                    if let Some(e) = m.error(&whole) {
                        return Err(e);
                    }
                    continue;
                }
                if let Some(op) = pending.remove(&m.seq)
                    && let Some(e) = m.error(&op)
                {
                    errors.insert(m.seq, e);
                }
            }
        }
        // The first refused message explains the others (which fail because of it).
        match errors.into_values().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A batch is one datagram: make sure the socket may send it.
    fn ensure_sndbuf(&self, len: usize) -> Result<()> {
        let want = len.saturating_add(4096);
        let fd = self.socket.as_raw_fd();
        let mut current: libc::c_int = 0;
        let mut optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `current` and `optlen` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut current as *mut libc::c_int).cast(),
                &mut optlen,
            )
        };
        if rc == 0 && usize::try_from(current).is_ok_and(|c| c >= want) {
            return Ok(());
        }
        let value = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
        // SO_SNDBUFFORCE ignores wmem_max (needs CAP_NET_ADMIN, which programming
        // nftables needs anyway); SO_SNDBUF is the fallback.
        setsockopt(&self.socket, libc::SO_SNDBUFFORCE, &value)
            .or_else(|_| setsockopt(&self.socket, libc::SO_SNDBUF, &value))
            .map_err(|source| NftError::Io {
                syscall: "setsockopt",
                source,
            })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        loop {
            match self.socket.send(bytes, 0) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    let message = format!("sent {n} of {} bytes", bytes.len());
                    return Err(NftError::Io {
                        syscall: "send",
                        source: io::Error::other(message),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(NftError::Io {
                        syscall: "send",
                        source,
                    });
                }
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it first if the datagram is larger.
    fn recv(&mut self, op: &str) -> Result<usize> {
        let pending = self.recv_once(op, libc::MSG_PEEK | libc::MSG_TRUNC, true)?;
        if pending > self.buf.len() {
            self.buf.resize(pending, 0);
        }
        self.recv_once(op, 0, false)
    }

    fn recv_once(&mut self, op: &str, flags: libc::c_int, peek: bool) -> Result<usize> {
        loop {
            let result = if peek {
                self.socket.recv(&mut &mut [0u8; 0][..], flags)
            } else {
                self.socket.recv(&mut &mut self.buf[..], flags)
            };
            match result {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NftError::Protocol {
                        op: op.to_string(),
                        message: format!("no answer from the kernel within {RECV_TIMEOUT_SECS} s"),
                    });
                }
                Err(source) => {
                    return Err(NftError::Io {
                        syscall: "recv",
                        source,
                    });
                }
            }
        }
    }
}

fn setsockopt<T>(socket: &Socket, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `value` points to a live `T` of `len` bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ----- decoding replies -----

/// One netlink message of a datagram.
struct Message<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

impl Message<'_> {
    /// For an `NLMSG_ERROR`: `None` for an acknowledgement, the error otherwise.
    fn error(&self, op: &str) -> Option<NftError> {
        let code = i32::from_ne_bytes(self.payload.get(..4)?.try_into().ok()?);
        if code == 0 {
            return None;
        }
        let ext = super::error_ext_ack(self.flags, self.payload.get(4..).unwrap_or_default());
        let errno = code.checked_abs().unwrap_or(i32::MAX);
        let text = io::Error::from_raw_os_error(errno).to_string();
        let text = text
            .trim_end_matches(&format!(" (os error {errno})"))
            .to_string();
        let message = match ext {
            Some(ext) if !ext.is_empty() => format!("{text}: {ext}"),
            _ => text,
        };
        Some(NftError::Kernel {
            op: op.to_string(),
            errno,
            message,
        })
    }
}

/// Iterates over the messages of a datagram, stopping at the first malformed header.
struct Messages<'a> {
    data: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(data: &'a [u8]) -> Self {
        Messages { data }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let h = self.data.get(..NLMSG_HDRLEN)?;
        let len = u32::from_ne_bytes(h[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > self.data.len() {
            self.data = &[];
            return None;
        }
        let m = Message {
            ty: u16::from_ne_bytes(h[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(h[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(h[8..12].try_into().ok()?),
            payload: &self.data[NLMSG_HDRLEN..len],
        };
        self.data = self.data.get(super::align4(len)..).unwrap_or_default();
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::netns::test_support::{have_root, new_netns};

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn element(key: &[u8], end: bool, open: bool) -> IntervalElement {
        IntervalElement {
            key: key.to_vec(),
            end,
            open,
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn expressions_encode_to_the_kernel_layout() {
        let mut buf = Vec::new();
        encode_expr(
            &mut Attrs { buf: &mut buf },
            &Expr::CmpEq {
                data: vec![IPPROTO_UDP],
            },
        );
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            8, 0, 1, 0, b'c', b'm', b'p', 0,        // NFTA_EXPR_NAME "cmp"
            32, 0, 2, 0x80,                         // NFTA_EXPR_DATA (nested)
            8, 0, 1, 0, 0, 0, 0, 1,                 //   NFTA_CMP_SREG reg 1 (be32)
            8, 0, 2, 0, 0, 0, 0, 0,                 //   NFTA_CMP_OP eq
            12, 0, 3, 0x80,                         //   NFTA_CMP_DATA (nested)
            5, 0, 1, 0, 17, 0, 0, 0,                //     NFTA_DATA_VALUE 0x11, padded
        ];
        assert_eq!(buf, want);

        let mut buf = Vec::new();
        encode_expr(&mut Attrs { buf: &mut buf }, &Expr::Drop);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            14, 0, 1, 0, b'i', b'm', b'm', b'e', b'd', b'i', b'a', b't', b'e', 0, 0, 0,
            28, 0, 2, 0x80,
            8, 0, 1, 0, 0, 0, 0, 0,                 // NFTA_IMMEDIATE_DREG verdict
            16, 0, 2, 0x80,                         // NFTA_IMMEDIATE_DATA
            12, 0, 2, 0x80,                         //   NFTA_DATA_VERDICT
            8, 0, 1, 0, 0, 0, 0, 0,                 //     NFTA_VERDICT_CODE NF_DROP
        ];
        assert_eq!(buf, want);

        let mut buf = Vec::new();
        encode_expr(&mut Attrs { buf: &mut buf }, &lookup("nodes4", 5, true));
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            11, 0, 1, 0, b'l', b'o', b'o', b'k', b'u', b'p', 0, 0,
            40, 0, 2, 0x80,
            11, 0, 1, 0, b'n', b'o', b'd', b'e', b's', b'4', 0, 0,
            8, 0, 4, 0, 0, 0, 0, 5,                 // NFTA_LOOKUP_SET_ID
            8, 0, 2, 0, 0, 0, 0, 1,                 // NFTA_LOOKUP_SREG
            8, 0, 5, 0, 0, 0, 0, 1,                 // NFTA_LOOKUP_FLAGS inverted
        ];
        assert_eq!(buf, want);
    }

    #[test]
    fn rules_are_the_expressions_nft_generates() {
        let rule = vxlan_rule(Family::V6, ("nodes6", 6), 4789);
        assert_eq!(
            rule,
            vec![
                Expr::Meta { key: 15 },
                Expr::CmpEq { data: vec![10] },
                Expr::Payload {
                    base: 1,
                    offset: 8,
                    len: 16
                },
                lookup("nodes6", 6, true),
                Expr::Meta { key: 16 },
                Expr::CmpEq { data: vec![17] },
                Expr::Payload {
                    base: 2,
                    offset: 2,
                    len: 2
                },
                Expr::CmpEq {
                    data: vec![0x12, 0xb5]
                },
                Expr::Counter,
                Expr::Drop,
            ]
        );
        let rule = masquerade_rule(Family::V4, ("nat4", 3), ("pods4", 1));
        assert_eq!(
            rule[2..5],
            [
                Expr::Payload {
                    base: 1,
                    offset: 12,
                    len: 4
                },
                lookup("nat4", 3, false),
                Expr::Payload {
                    base: 1,
                    offset: 16,
                    len: 4
                },
            ]
        );
        assert_eq!(rule[6], Expr::Masq);
    }

    #[test]
    fn host_port_elements_are_padded_concatenations() {
        let ports = host_ports();
        let loopback = ports
            .iter()
            .find(|p| p.host_ip == Some("127.0.0.1".parse().unwrap()))
            .unwrap();
        let tcp_on_loopback = map_element(loopback);
        assert_eq!(tcp_on_loopback.set, HOSTPORTS4);
        #[rustfmt::skip]
        assert_eq!(
            tcp_on_loopback.key,
            [6, 0, 0, 0, 127, 0, 0, 1, 0xd4, 0x33, 0, 0],
            "tcp . 127.0.0.1 . 54323, each field in a 4-byte register"
        );
        assert_eq!(
            tcp_on_loopback.data,
            Some(vec![10, 244, 1, 5, 0x1f, 0x90, 0, 0]),
            "10.244.1.5 . 8080"
        );
        let v6_any = ports
            .iter()
            .find(|p| p.pod_ip.is_ipv6() && p.host_ip.is_none())
            .map(map_element)
            .unwrap();
        assert_eq!(v6_any.set, HOSTPORTS6_ANY);
        assert_eq!(v6_any.key, [6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(v6_any.data.as_ref().map(Vec::len), Some(20));
        let elements = host_port_elements(&ports);
        assert_eq!(
            elements.iter().filter(|e| e.set == HAIRPIN4).count(),
            4,
            "one hairpin per pod address, however many ports it has"
        );
        let hairpin = hairpin_element("fd00::1".parse().unwrap());
        assert_eq!(
            (hairpin.set, hairpin.key.len(), hairpin.data),
            (HAIRPIN6, 32, None)
        );
        assert_eq!(
            HOSTPORTS4.key_type, 0xc1cd,
            "what nft sends for the concatenation"
        );
        assert_eq!(V4_SERVICE, 0x1cd);
    }

    #[test]
    fn host_port_rules_are_the_expressions_nft_generates() {
        // `nft --debug=netlink` for `meta nfproto ipv6 dnat ip6 to meta l4proto . ip6 daddr .
        // th dport map @hostports6`
        assert_eq!(
            dnat_rule(Family::V6, HOSTPORTS6),
            vec![
                Expr::Meta { key: 15 },
                Expr::CmpEq { data: vec![10] },
                Expr::Meta { key: 16 },
                Expr::PayloadTo {
                    base: 1,
                    offset: 24,
                    len: 16,
                    dreg: 9
                },
                Expr::PayloadTo {
                    base: 2,
                    offset: 2,
                    len: 2,
                    dreg: 13
                },
                Expr::MapLookup {
                    set: "hostports6".into(),
                    set_id: 13
                },
                Expr::Dnat {
                    family: 10,
                    proto_reg: 2
                },
            ]
        );
        // ... `dnat ip to meta l4proto . th dport map @hostports4any`
        assert_eq!(
            dnat_rule(Family::V4, HOSTPORTS4_ANY)[2..],
            [
                Expr::Meta { key: 16 },
                Expr::PayloadTo {
                    base: 2,
                    offset: 2,
                    len: 2,
                    dreg: 9
                },
                Expr::MapLookup {
                    set: "hostports4any".into(),
                    set_id: 12
                },
                Expr::Dnat {
                    family: 2,
                    proto_reg: 9
                },
            ]
        );
        // `ip saddr . ip daddr @hairpin4 masquerade`
        assert_eq!(
            hairpin_rule(Family::V4, HAIRPIN4)[2..],
            [
                Expr::Payload {
                    base: 1,
                    offset: 12,
                    len: 4
                },
                Expr::PayloadTo {
                    base: 1,
                    offset: 16,
                    len: 4,
                    dreg: 9
                },
                lookup("hairpin4", 15, false),
                Expr::Masq,
            ]
        );
        let mut buf = Vec::new();
        encode_expr(
            &mut Attrs { buf: &mut buf },
            &Expr::Jump {
                chain: "hostports".into(),
            },
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.contains("immediate") && text.contains("hostports"),
            "{text:?}"
        );
        assert!(
            buf.windows(4).any(|w| w == (-3i32).to_be_bytes()),
            "NFT_JUMP, big endian"
        );
    }

    #[test]
    fn element_replies_decode_to_their_data() {
        let e = map_element(&host_ports()[1]);
        let mut msg = vec![1, 0, 0, 0]; // nfgenmsg
        let mut a = Attrs { buf: &mut msg };
        a.str(NFTA_SET_ELEM_LIST_TABLE, "sinew");
        a.str(NFTA_SET_ELEM_LIST_SET, e.set.name);
        a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
            list.nest(NFTA_LIST_ELEM, |el| {
                el.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &e.key));
                el.nest(NFTA_SET_ELEM_DATA, |d| {
                    d.put(NFTA_DATA_VALUE, e.data.as_ref().unwrap())
                });
                el.be32(NFTA_SET_ELEM_FLAGS, 0);
            });
        });
        assert_eq!(element_data(&msg), e.data);
        assert_eq!(
            element_data(&msg[..7]),
            None,
            "truncated: nothing, no panic"
        );
        assert_eq!(element_data(&[]), None);
    }

    #[test]
    fn interval_ends_are_last_address_plus_one() {
        assert_eq!(interval_elements(&[]), vec![]);
        assert_eq!(
            interval_elements(&[cidr("10.244.0.0/16"), cidr("10.245.0.0/16")]),
            vec![
                element(&[0, 0, 0, 0], true, false),
                element(&[10, 244, 0, 0], false, false),
                element(&[10, 245, 0, 0], true, false),
                element(&[10, 245, 0, 0], false, false),
                element(&[10, 246, 0, 0], true, false),
            ]
        );
        // a host: end is the next address; carries into the next octet
        assert_eq!(
            interval_elements(&[cidr("10.99.0.255/32")]),
            vec![
                element(&[0, 0, 0, 0], true, false),
                element(&[10, 99, 0, 255], false, false),
                element(&[10, 99, 1, 0], true, false),
            ]
        );
        // starting at address 0: no leading end element
        assert_eq!(
            interval_elements(&[cidr("0.0.0.0/8")]),
            vec![
                element(&[0, 0, 0, 0], false, false),
                element(&[1, 0, 0, 0], true, false),
            ]
        );
        // /0: one open start, nothing else
        assert_eq!(
            interval_elements(&[cidr("0.0.0.0/0")]),
            vec![element(&[0, 0, 0, 0], false, true)]
        );
        assert_eq!(
            interval_elements(&[cidr("::/0")]),
            vec![element(&[0; 16], false, true)]
        );
        // the top of the address space has no end element
        assert_eq!(
            interval_elements(&[cidr("10.0.0.0/8"), cidr("255.255.255.255/32")]),
            vec![
                element(&[0, 0, 0, 0], true, false),
                element(&[10, 0, 0, 0], false, false),
                element(&[11, 0, 0, 0], true, false),
                element(&[255, 255, 255, 255], false, true),
            ]
        );
        let mut ffff = [0u8; 16];
        ffff[..2].copy_from_slice(&[0xff, 0xff]);
        let mut fd00 = [0u8; 16];
        fd00[0] = 0xfd;
        let mut fd00_end = fd00;
        fd00_end[6] = 1; // fd00::/56 ends before fd00:0:0:100::
        assert_eq!(
            interval_elements(&[cidr("fd00::/56"), cidr("ffff::/16")]),
            vec![
                element(&[0; 16], true, false),
                element(&fd00, false, false),
                element(&fd00_end, true, false),
                element(&ffff, false, true),
            ]
        );
    }

    #[test]
    fn sets_keep_outermost_prefixes_of_their_family() {
        let all = [
            cidr("10.1.0.0/16"),
            cidr("fd00::/56"),
            cidr("10.0.0.0/8"),
            cidr("10.0.0.0/8"),
            cidr("192.168.0.0/24"),
            cidr("10.0.0.0/9"),
        ];
        assert_eq!(
            outermost(&all, Family::V4),
            vec![cidr("10.0.0.0/8"), cidr("192.168.0.0/24")]
        );
        assert_eq!(outermost(&all, Family::V6), vec![cidr("fd00::/56")]);
    }

    #[test]
    fn a_batch_is_framed_and_every_message_asks_for_an_ack() {
        let mut batch = Batch::new(100);
        batch.delete_table("sinew");
        let no_nat6 = SinewTable {
            nat: vec![cidr("10.244.0.0/16")],
            ..realistic(4789)
        };
        build_table(&mut batch, "sinew", &no_nat6);
        let (bytes, ops, begin, end) = batch.finish();
        assert_eq!(begin, 100);
        assert_eq!(end, 101 + ops.len() as u32);
        let messages: Vec<Message<'_>> = Messages::new(&bytes).collect();
        assert_eq!(messages.len(), ops.len() + 2);
        let (first, last) = (&messages[0], &messages[messages.len() - 1]);
        assert_eq!((first.ty, first.seq), (NFNL_MSG_BATCH_BEGIN, 100));
        assert_eq!((last.ty, last.seq), (NFNL_MSG_BATCH_END, end));
        for m in [first, last] {
            assert_eq!(m.payload, [0, 0, 0, 10], "AF_UNSPEC, v0, res_id NFTABLES");
        }
        for m in &messages[1..messages.len() - 1] {
            assert_eq!(m.ty >> 8, NFNL_SUBSYS_NFTABLES);
            assert_ne!(m.flags & NLM_F_ACK, 0);
            assert_eq!(m.payload[..4], [NFPROTO_INET, 0, 0, 0]);
            assert!(ops.contains_key(&m.seq));
        }
        let names: Vec<&str> = ops.values().map(String::as_str).collect();
        assert_eq!(
            names[..3],
            [
                "add table inet sinew",
                "delete table inet sinew",
                "add table inet sinew"
            ]
        );
        assert!(names.contains(&"add elements to set inet sinew nodes4"));
        assert!(
            !names.contains(&"add elements to set inet sinew nat6"),
            "an empty set gets no element message"
        );
    }

    #[test]
    fn large_sets_are_split_across_messages() {
        let nodes: Vec<IpAddr> = (0..3000u32)
            .map(|i| IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i) << 16)))
            .collect();
        let mut batch = Batch::new(1);
        build_table(
            &mut batch,
            "sinew",
            &SinewTable {
                nodes,
                vxlan_port: 4789,
                ..SinewTable::default()
            },
        );
        let (bytes, ops, _, _) = batch.finish();
        let chunks = ops
            .values()
            .filter(|o| o.as_str() == "add elements to set inet sinew nodes6")
            .count();
        assert_eq!(chunks, 7, "6001 elements, 1000 a message");
        assert_eq!(Messages::new(&bytes).count(), ops.len() + 2);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn replies_decode_into_acks_and_errors() {
        let mut datagram = Vec::new();
        // ack of seq 7
        datagram.extend_from_slice(&36u32.to_ne_bytes());
        datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        datagram.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
        datagram.extend_from_slice(&7u32.to_ne_bytes());
        datagram.extend_from_slice(&0u32.to_ne_bytes());
        datagram.extend_from_slice(&0i32.to_ne_bytes());
        datagram.extend_from_slice(&[0; 16]);
        // ENOENT for seq 8 with an extended-ack message
        let ext = b"No such set\0";
        let len = 16 + 4 + 16 + 4 + ext.len();
        datagram.extend_from_slice(&(len as u32).to_ne_bytes());
        datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        datagram.extend_from_slice(&0x300u16.to_ne_bytes()); // CAPPED | ACK_TLVS
        datagram.extend_from_slice(&8u32.to_ne_bytes());
        datagram.extend_from_slice(&0u32.to_ne_bytes());
        datagram.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        datagram.extend_from_slice(&[0; 16]);
        datagram.extend_from_slice(&((4 + ext.len()) as u16).to_ne_bytes());
        datagram.extend_from_slice(&1u16.to_ne_bytes());
        datagram.extend_from_slice(ext);
        let messages: Vec<Message<'_>> = Messages::new(&datagram).collect();
        assert_eq!(messages.len(), 2);
        assert!(messages[0].error("x").is_none());
        let e = messages[1]
            .error("add rule inet sinew postrouting")
            .unwrap();
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "nftables: add rule inet sinew postrouting: No such file or directory: No such set (errno 2)"
        );
        // truncated garbage is ignored, not a panic
        assert_eq!(Messages::new(&datagram[..20]).count(), 0);
    }

    /// Two IPv4 pools (one with natOutgoing), one IPv6 pool with natOutgoing, three nodes.
    fn realistic(port: u16) -> SinewTable {
        SinewTable {
            pods: vec![
                cidr("10.244.0.0/16"),
                cidr("10.245.0.0/16"),
                cidr("fd00:10:244::/56"),
            ],
            nat: vec![cidr("10.244.0.0/16"), cidr("fd00:10:244::/56")],
            nodes: vec![
                "192.168.10.11".parse().unwrap(),
                "192.168.10.12".parse().unwrap(),
                "fd00:99::13".parse().unwrap(),
            ],
            vxlan_port: port,
            host_ports: host_ports(),
        }
    }

    /// The conformance spec's three pods on one port (127.0.0.1/TCP, node IP/TCP, node
    /// IP/UDP) and a dual-stack pod on every local address.
    fn host_ports() -> Vec<HostPort> {
        use crate::hostport::{PortMapping, Protocol};
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let m = |host_port, protocol, host_ip: Option<&str>| PortMapping {
            host_port,
            container_port: 8080,
            protocol,
            host_ip: host_ip.map(ip),
        };
        let mut v = crate::hostport::host_ports(
            &[m(54323, Protocol::Tcp, Some("127.0.0.1"))],
            [ip("10.244.1.5")],
        );
        v.extend(crate::hostport::host_ports(
            &[m(54323, Protocol::Tcp, Some("192.168.10.11"))],
            [ip("10.244.1.6")],
        ));
        v.extend(crate::hostport::host_ports(
            &[m(54323, Protocol::Udp, Some("192.168.10.11"))],
            [ip("10.244.1.7")],
        ));
        v.extend(crate::hostport::host_ports(
            &[
                m(80, Protocol::Tcp, None),
                m(5000, Protocol::Sctp, Some("fd00:99::13")),
            ],
            [ip("10.244.1.8"), ip("fd00:10:244::8")],
        ));
        v.sort();
        v
    }

    /// What `nat::render` gave `nft -f` for [`realistic`].
    fn old_script(port: u16) -> String {
        format!(
            "table inet sinew {{}}\ndelete table inet sinew\ntable inet sinew {{
    set pods4 {{ type ipv4_addr; flags interval; elements = {{ 10.244.0.0/16, 10.245.0.0/16 }}; }}
    set pods6 {{ type ipv6_addr; flags interval; elements = {{ fd00:10:244::/56 }}; }}
    set nat4 {{ type ipv4_addr; flags interval; elements = {{ 10.244.0.0/16 }}; }}
    set nat6 {{ type ipv6_addr; flags interval; elements = {{ fd00:10:244::/56 }}; }}
    set nodes4 {{ type ipv4_addr; flags interval; elements = {{ 192.168.10.11/32, 192.168.10.12/32 }}; }}
    set nodes6 {{ type ipv6_addr; flags interval; elements = {{ fd00:99::13/128 }}; }}
    set linklocal6 {{ type ipv6_addr; flags interval; elements = {{ fe80::/10 }}; }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr @nat4 ip daddr != @pods4 masquerade
        ip6 saddr @nat6 ip6 daddr != @pods6 masquerade
    }}
    chain vxlan-from-nodes-only {{
        type filter hook input priority filter - 10; policy accept;
        ip saddr != @nodes4 udp dport {port} counter drop
        ip6 saddr != @nodes6 udp dport {port} counter drop
    }}
    chain pod-sources-only {{
        type filter hook prerouting priority raw; policy accept;
        meta nfproto ipv4 iifname \"snw*\" fib saddr . iif oif missing counter drop
        meta nfproto ipv6 iifname \"snw*\" ip6 saddr != @linklocal6 fib saddr . iif oif missing counter drop
    }}
{}}}
",
            render_host_ports(&host_ports())
        )
    }

    fn ns_name(ns: &NetNs) -> String {
        ns.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// `nft ARGS` inside the namespace (the CLI only verifies here).
    fn nft(ns: &NetNs, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns_name(ns), "nft"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ip netns exec nft");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn listing(ns: &NetNs) -> String {
        nft(ns, &["list", "table", "inet", "sinew"], None)
    }

    fn have_nft(test: &str) -> bool {
        let ok = Command::new("nft").arg("--version").output().is_ok();
        if !ok {
            eprintln!("*** SKIPPING {test}: needs the nft program to verify ***");
        }
        ok
    }

    #[test]
    fn the_table_is_what_the_nft_script_made() {
        let test = "the_table_is_what_the_nft_script_made";
        if !have_root(test) || !have_nft(test) {
            return;
        }
        let by_script = new_netns();
        nft(&by_script, &["-f", "-"], Some(&old_script(4789)));
        let by_netlink = new_netns();
        let mut nft_nl = Nftables::in_netns(&by_netlink).unwrap();
        assert!(!nft_nl.table_exists("sinew").unwrap());
        nft_nl.replace_sinew_table(&realistic(4789)).unwrap();
        assert!(nft_nl.table_exists("sinew").unwrap());
        let want = listing(&by_script);
        let got = listing(&by_netlink);
        assert_eq!(got, want);
        // and the JSON form, handles aside, is the same too
        let json = |ns: &NetNs| {
            let text = nft(ns, &["-j", "list", "table", "inet", "sinew"], None);
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            strip_handles(&mut v);
            v
        };
        assert_eq!(json(&by_netlink), json(&by_script));
        for line in [
            "elements = { 10.244.0.0/16, 10.245.0.0/16 }",
            "elements = { 192.168.10.11, 192.168.10.12 }",
            "elements = { fd00:99::13 }",
            "type nat hook postrouting priority srcnat; policy accept;",
            "ip6 saddr @nat6 ip6 daddr != @pods6 masquerade",
            "type filter hook input priority filter - 10; policy accept;",
            "ip saddr != @nodes4 udp dport 4789 counter packets 0 bytes 0 drop",
        ] {
            assert!(got.contains(line), "{line:?} missing from\n{got}");
        }
    }

    fn strip_handles(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("handle");
                map.values_mut().for_each(strip_handles);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_handles),
            _ => {}
        }
    }

    #[test]
    fn replace_is_atomic_and_remove_is_idempotent() {
        let test = "replace_is_atomic_and_remove_is_idempotent";
        if !have_root(test) || !have_nft(test) {
            return;
        }
        let ns = new_netns();
        let mut nl = Nftables::in_netns(&ns).unwrap();
        // removing what is not there is fine
        nl.delete_table("sinew").unwrap();
        nl.replace_sinew_table(&realistic(4789)).unwrap();
        // someone else's table is left alone
        nft(&ns, &["add", "table", "ip", "other"], None);

        // changed pools, port and nodes: the new table replaces the old one
        let changed = SinewTable {
            pods: vec![cidr("10.50.0.0/16"), cidr("0.0.0.0/0")],
            nat: vec![cidr("10.50.0.0/16")],
            nodes: vec!["255.255.255.255".parse().unwrap()],
            vxlan_port: 8472,
            host_ports: Vec::new(),
        };
        nl.replace_sinew_table(&changed).unwrap();
        let got = listing(&ns);
        assert!(got.contains("elements = { 0.0.0.0/0 }"), "{got}");
        assert!(got.contains("elements = { 10.50.0.0/16 }"), "{got}");
        assert!(got.contains("elements = { 255.255.255.255 }"), "{got}");
        assert!(got.contains("udp dport 8472"), "{got}");
        assert!(
            !got.contains("10.244.0.0") && !got.contains("4789"),
            "{got}"
        );

        // a batch the kernel refuses half-way changes nothing
        let before = listing(&ns);
        let mut batch = nl.batch();
        batch.delete_table("sinew");
        build_table(&mut batch, "sinew", &realistic(4789));
        batch.add_rule(
            "sinew",
            CHAIN_POSTROUTING,
            "ip saddr @missing masquerade",
            &[
                load_address(Family::V4, true),
                lookup("missing", 99, false),
                Expr::Masq,
            ],
        );
        let err = nl.commit(batch).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(
            err.to_string()
                .starts_with("nftables: add rule inet sinew postrouting ip saddr @missing"),
            "{err}"
        );
        assert_eq!(
            listing(&ns),
            before,
            "the refused batch left the table as it was"
        );
        // the socket is still in step after an error
        assert!(nl.table_exists("sinew").unwrap());

        nl.delete_table("sinew").unwrap();
        assert!(!nl.table_exists("sinew").unwrap());
        nl.delete_table("sinew").unwrap();
        let rest = nft(&ns, &["list", "ruleset"], None);
        assert!(rest.contains("table ip other"), "{rest}");
        assert!(!rest.contains("sinew"), "{rest}");
    }

    /// The plugin's element operations against a real table: ADD before the agent declared
    /// the maps fails, a leftover element of the same key is replaced, DEL removes only what
    /// still maps to its pod and tolerates what is gone, CHECK names each difference.
    #[test]
    fn host_ports_are_added_replaced_checked_and_removed() {
        use crate::hostport::{self, PortMapping, Protocol};
        let test = "host_ports_are_added_replaced_checked_and_removed";
        if !have_root(test) || !have_nft(test) {
            return;
        }
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mapping = |protocol, host_ip: Option<&str>| PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol,
            host_ip: host_ip.map(ip),
        };
        let pod_a = hostport::host_ports(
            &[
                mapping(Protocol::Tcp, None),
                mapping(Protocol::Udp, Some("10.78.0.1")),
            ],
            [ip("10.244.1.5"), ip("fd00:10:244::5")],
        );
        assert_eq!(pod_a.len(), 3);
        let ns = new_netns();
        let mut nl = Nftables::in_netns(&ns).unwrap();
        let err = nl.add_host_ports(&pod_a).unwrap_err();
        assert!(err.is_not_found(), "no table yet: {err}");
        nl.remove_host_ports(&pod_a).unwrap();

        nl.replace_sinew_table(&SinewTable {
            host_ports: Vec::new(),
            ..realistic(4789)
        })
        .unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_a).unwrap().len(),
            5,
            "3 ports, 2 hairpins"
        );
        nl.add_host_ports(&pod_a).unwrap();
        nl.add_host_ports(&pod_a).unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_a).unwrap(),
            Vec::<String>::new()
        );
        let got = listing(&ns);
        for line in [
            "tcp . 8080 : 10.244.1.5 . 80",
            "udp . 10.78.0.1 . 8080 : 10.244.1.5 . 80",
            "tcp . 8080 : fd00:10:244::5 . 80",
            "10.244.1.5 . 10.244.1.5",
            "fd00:10:244::5 . fd00:10:244::5",
        ] {
            assert!(got.contains(line), "{line:?} missing from\n{got}");
        }

        // A leftover of a pod that is gone holds udp/8080 on 10.78.0.1: the next pod with
        // that key takes it over.
        let pod_b = hostport::host_ports(
            &[mapping(Protocol::Udp, Some("10.78.0.1"))],
            [ip("10.244.1.6")],
        );
        nl.add_host_ports(&pod_b).unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_b).unwrap(),
            Vec::<String>::new()
        );
        let a_now = nl.host_port_differences(&pod_a).unwrap();
        assert_eq!(
            a_now,
            vec!["host port udp 10.78.0.1 port 8080 -> 10.244.1.5:80 maps elsewhere".to_string()]
        );
        // Removing A leaves B's element alone, and takes A's hairpins.
        nl.remove_host_ports(&pod_a).unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_b).unwrap(),
            Vec::<String>::new()
        );
        let got = listing(&ns);
        assert!(!got.contains("10.244.1.5"), "{got}");
        assert!(!got.contains("fd00:10:244::5"), "{got}");
        assert!(
            got.contains("udp . 10.78.0.1 . 8080 : 10.244.1.6 . 80"),
            "{got}"
        );
        nl.remove_host_ports(&pod_a).unwrap();
        nl.remove_host_ports(&pod_b).unwrap();
        assert_eq!(nl.host_port_differences(&pod_b).unwrap().len(), 2);
        nl.delete_table("sinew").unwrap();
        assert_eq!(
            nl.host_port_differences(&pod_b).unwrap().len(),
            2,
            "no table: all missing"
        );
    }

    /// Writes a sysctl of the namespace (from a thread inside it).
    fn sysctl(ns: &NetNs, path: &'static str, value: &'static str) {
        ns.run_in(|| std::fs::write(path, value))
            .unwrap()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    fn udp_socket(ns: &NetNs, addr: &'static str) -> std::net::UdpSocket {
        let s = ns
            .run_in(|| std::net::UdpSocket::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
            .unwrap();
        s
    }

    /// A pod behind a node that routes to an outside host: the pod's packets leave
    /// masqueraded; VXLAN from a host that is not a node is dropped (and counted).
    #[test]
    fn pods_are_masqueraded_and_vxlan_is_filtered() {
        use crate::netlink::{Netlink, Route};
        let test = "pods_are_masqueraded_and_vxlan_is_filtered";
        if !have_root(test) || !have_nft(test) {
            return;
        }
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (node, pod, outside) = (new_netns(), new_netns(), new_netns());
        let mut nl = Netlink::in_netns(&node).unwrap();
        nl.create_veth("to-pod", "eth0", &pod, 1500).unwrap();
        nl.create_veth("to-out", "eth0", &outside, 1500).unwrap();
        for (name, addr) in [("to-pod", "10.244.1.1"), ("to-out", "192.0.2.1")] {
            let link = nl.link_by_name(name).unwrap().unwrap();
            nl.add_address(link.index, ip(addr), 24, false).unwrap();
            nl.set_link_up(link.index).unwrap();
        }
        for (ns, addr, dst, prefix, gw) in [
            (&pod, "10.244.1.2", "0.0.0.0", 0, "10.244.1.1"),
            // a route back to the pods: without NAT the pod's own address would arrive
            (&outside, "192.0.2.2", "10.244.0.0", 16, "192.0.2.1"),
        ] {
            let mut nl = Netlink::in_netns(ns).unwrap();
            let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
            nl.add_address(eth0.index, ip(addr), 24, false).unwrap();
            nl.set_link_up(eth0.index).unwrap();
            nl.add_route(&Route {
                gateway: Some(ip(gw)),
                ..Route::new(ip(dst), prefix)
            })
            .unwrap();
        }
        sysctl(&node, "/proc/sys/net/ipv4/conf/all/forwarding", "1");

        let mut nft_nl = Nftables::in_netns(&node).unwrap();
        let mut table = SinewTable {
            pods: vec![cidr("10.244.0.0/16")],
            nat: vec![cidr("10.244.0.0/16")],
            nodes: vec![ip("192.0.2.9")],
            vxlan_port: 4789,
            host_ports: Vec::new(),
        };
        nft_nl.replace_sinew_table(&table).unwrap();

        let rx = udp_socket(&outside, "192.0.2.2:9999");
        let tx = udp_socket(&pod, "10.244.1.2:0");
        tx.send_to(b"masq", "192.0.2.2:9999").unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).expect("the pod's packet arrives");
        assert_eq!(&buf[..n], b"masq");
        assert_eq!(
            from.ip(),
            ip("192.0.2.1"),
            "masqueraded to the node's address"
        );

        // VXLAN from 192.0.2.2, which is not a node: dropped before any socket sees it
        let vxlan = udp_socket(&node, "0.0.0.0:4789");
        let sender = udp_socket(&outside, "192.0.2.2:0");
        sender.send_to(b"vxlan", "192.0.2.1:4789").unwrap();
        assert!(vxlan.recv_from(&mut buf).is_err(), "dropped");
        let listed = listing(&node);
        assert!(
            listed.contains("ip saddr != @nodes4 udp dport 4789 counter packets 1 bytes 33 drop"),
            "{listed}"
        );
        // once it is a node, its VXLAN packets pass
        table.nodes.push(ip("192.0.2.2"));
        nft_nl.replace_sinew_table(&table).unwrap();
        sender.send_to(b"vxlan", "192.0.2.1:4789").unwrap();
        let (n, from) = vxlan
            .recv_from(&mut buf)
            .expect("a node's VXLAN packet arrives");
        assert_eq!((&buf[..n], from.ip()), (&b"vxlan"[..], ip("192.0.2.2")));
    }
}
