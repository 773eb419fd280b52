//! The nftables objects sinew declares, as plain values: a table, its sets and maps with
//! their elements, its chains and their rules, each rule a list of typed expressions in
//! `nft` order. Two models are equal exactly when they declare the same table.
//!
//! The vocabulary is what sinew's tables use, named as `nft` names it; [`super::text`] writes
//! it in `nft` syntax and the netlink encoder (`crate::netlink::nftables`) turns it into
//! nf_tables messages.

use std::collections::BTreeSet;
use std::net::IpAddr;

use sinew_core::interval::outermost;
use sinew_core::{Cidr, Family};

use crate::hostport::Protocol;

/// The longest comment `nft` accepts, in bytes.
pub const COMMENT_MAX: usize = 128;

/// The longest log prefix the kernel takes, in bytes (`NF_LOG_PREFIXLEN` less its NUL).
pub const LOG_PREFIX_MAX: usize = 127;

/// A log prefix as the kernel can hold it: at most [`LOG_PREFIX_MAX`] bytes (cut at a
/// character boundary), a double quote turned into a single one.
pub fn log_prefix(text: impl Into<String>) -> String {
    let mut text = comment(text);
    let mut end = text.len().min(LOG_PREFIX_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// A comment as `nft` can hold it: at most [`COMMENT_MAX`] bytes (cut at a character
/// boundary), a double quote (which `nft` cannot quote) turned into a single one.
pub fn comment(text: impl Into<String>) -> String {
    let mut text: String = text.into().replace('"', "'");
    let mut end = text.len().min(COMMENT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// A table of family `inet` (IPv4 and IPv6): its named counters, its sets and maps, then its
/// chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// Named counter objects (`counter NAME { }`), which rules count into
    /// ([`Expr::CounterRef`]). The kernel keeps their values while the table changes around
    /// them; only deleting one (or the table) resets it.
    pub counters: Vec<String>,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

/// A set, or a map when it has a data type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// The key's type: one type, or the fields of a concatenation (`ipv4_addr . inet_service`).
    pub key: Vec<DataType>,
    /// A map's value type (`None`: a set).
    pub data: Option<Vec<DataType>>,
    /// `flags interval`: the elements are prefixes ([`Value::Prefix`]) or ranges
    /// ([`Value::Range`]), disjoint; with a concatenated key, each field may be one.
    pub interval: bool,
    pub elements: Vec<Element>,
}

impl Set {
    /// An interval set of addresses of `family` holding the outermost prefixes of that family
    /// among `prefixes` (an interval set refuses overlapping ranges), sorted.
    pub fn prefixes(name: &str, family: Family, prefixes: &[Cidr]) -> Set {
        Set {
            name: name.to_string(),
            key: vec![DataType::addr(family)],
            data: None,
            interval: true,
            elements: outermost(prefixes, family)
                .into_iter()
                .map(|p| Element::key([Value::Prefix(p)]))
                .collect(),
        }
    }

    /// A set of keys of this type (one type, or a concatenation), empty.
    pub fn new(name: &str, key: impl Into<Vec<DataType>>) -> Set {
        Set {
            name: name.to_string(),
            key: key.into(),
            data: None,
            interval: false,
            elements: Vec::new(),
        }
    }

    /// A map from keys of type `key` to values of type `data`, empty.
    pub fn map(name: &str, key: impl Into<Vec<DataType>>, data: impl Into<Vec<DataType>>) -> Set {
        Set {
            data: Some(data.into()),
            ..Set::new(name, key)
        }
    }

    /// The same set holding these elements.
    pub fn with_elements(self, elements: impl IntoIterator<Item = Element>) -> Set {
        Set {
            elements: elements.into_iter().collect(),
            ..self
        }
    }

    /// The same set with `flags interval`.
    pub fn interval(self) -> Set {
        Set {
            interval: true,
            ..self
        }
    }

    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }

    /// A verdict map (`type K : verdict`).
    pub fn is_vmap(&self) -> bool {
        self.data.as_deref() == Some(&[DataType::Verdict])
    }

    /// Whether the set and `other` are the same object apart from their elements (same name,
    /// types and flags): one can become the other by adding and removing elements.
    pub fn same_definition(&self, other: &Set) -> bool {
        self.name == other.name
            && self.key == other.key
            && self.data == other.data
            && self.interval == other.interval
    }
}

/// The type of a key or value field (`nft`'s data types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `ipv4_addr`
    Ipv4Addr,
    /// `ipv6_addr`
    Ipv6Addr,
    /// `inet_proto`: an IP protocol number (`tcp`, `udp`, `sctp`).
    InetProto,
    /// `inet_service`: a port.
    InetService,
    /// `ifname`: an interface name (`iifname`, `oifname`).
    IfName,
    /// `verdict`: a map's value only (a verdict map, `vmap`).
    Verdict,
}

impl DataType {
    /// The address type of `family`.
    pub fn addr(family: Family) -> DataType {
        match family {
            Family::V4 => DataType::Ipv4Addr,
            Family::V6 => DataType::Ipv6Addr,
        }
    }
}

/// One element: a key and, in a map, the value it maps to (each one value per field of the
/// set's type), with an optional comment (`nft` prints it after the key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub key: Vec<Value>,
    /// Empty in a set.
    pub data: Vec<Value>,
    pub comment: Option<String>,
}

impl Element {
    /// An element of a set.
    pub fn key(key: impl Into<Vec<Value>>) -> Element {
        Element {
            key: key.into(),
            data: Vec::new(),
            comment: None,
        }
    }

    /// An element of a map: `key : data`.
    pub fn mapping(key: impl Into<Vec<Value>>, data: impl Into<Vec<Value>>) -> Element {
        Element {
            key: key.into(),
            data: data.into(),
            comment: None,
        }
    }

    /// The same element with this comment (see [`comment`]).
    pub fn with_comment(self, comment: impl Into<String>) -> Element {
        Element {
            comment: Some(self::comment(comment)),
            ..self
        }
    }
}

/// One field of an element.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// A prefix of an interval set.
    Prefix(Cidr),
    Addr(IpAddr),
    Proto(Protocol),
    Port(u16),
    /// An inclusive range of an interval set: `10.0.0.0-10.0.0.9`, `80-90`.
    Range(Range),
    /// An interface name: `"snw0a1b"`.
    IfName(String),
    /// A verdict map's value: `jump CHAIN`, `accept`...
    Verdict(Verdict),
}

impl Value {
    /// The addresses from `first` to `last`, both included (of one family, `first <= last`).
    pub fn addr_range(first: IpAddr, last: IpAddr) -> Value {
        Value::Range(Range::Addr(first, last))
    }

    /// The ports from `first` to `last`, both included (`first <= last`).
    pub fn port_range(first: u16, last: u16) -> Value {
        Value::Range(Range::Port(first, last))
    }

    /// `jump CHAIN`, a verdict map's value.
    pub fn jump(chain: &str) -> Value {
        Value::Verdict(Verdict::Jump(chain.to_string()))
    }
}

/// An inclusive range of addresses (of one family) or of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Range {
    Addr(IpAddr, IpAddr),
    Port(u16, u16),
}

/// A chain: a base chain when it has a hook, else a regular chain (reached by `jump`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<BaseChain>,
    /// `comment "..."`: the kernel keeps it as the chain's user data, set at creation only.
    pub comment: Option<String>,
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A base chain, attached to a hook, without rules.
    pub fn base(
        name: &str,
        kind: ChainKind,
        hook: Hook,
        priority: Priority,
        policy: Policy,
    ) -> Chain {
        Chain {
            name: name.to_string(),
            hook: Some(BaseChain {
                kind,
                hook,
                priority,
                policy,
            }),
            comment: None,
            rules: Vec::new(),
        }
    }

    /// A regular chain, without rules.
    pub fn regular(name: &str) -> Chain {
        Chain {
            name: name.to_string(),
            hook: None,
            comment: None,
            rules: Vec::new(),
        }
    }

    /// The same chain with this comment (see [`comment`]).
    pub fn with_comment(self, comment: impl Into<String>) -> Chain {
        Chain {
            comment: Some(self::comment(comment)),
            ..self
        }
    }

    /// Whether the chain and `other` are the same object apart from their rules (name, hook,
    /// comment): one can become the other by replacing the rules.
    pub fn same_definition(&self, other: &Chain) -> bool {
        self.name == other.name && self.hook == other.hook && self.comment == other.comment
    }

    /// The same chain with these rules, in order.
    pub fn with_rules(self, rules: impl IntoIterator<Item = Rule>) -> Chain {
        Chain {
            rules: rules.into_iter().collect(),
            ..self
        }
    }
}

/// What attaches a base chain to the packet path: `type KIND hook HOOK priority P; policy X;`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainKind,
    pub hook: Hook,
    pub priority: Priority,
    pub policy: Policy,
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Filter,
    /// Sees the first packet of each connection only.
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// A base chain's priority: a standard name with an offset (`filter - 10`), or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Named(NamedPriority, i32),
    Number(i32),
}

impl Priority {
    /// The named priority itself, without offset.
    pub fn named(name: NamedPriority) -> Priority {
        Priority::Named(name, 0)
    }

    /// The number the kernel orders chains of one hook by.
    pub fn value(self) -> i32 {
        match self {
            Priority::Named(name, offset) => name.value().saturating_add(offset),
            Priority::Number(n) => n,
        }
    }
}

/// The standard priorities `nft` names (`NF_IP_PRI_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedPriority {
    /// Before connection tracking.
    Raw,
    /// Destination NAT (prerouting only).
    DstNat,
    Filter,
    /// Source NAT (postrouting).
    SrcNat,
}

impl NamedPriority {
    pub fn value(self) -> i32 {
        match self {
            NamedPriority::Raw => -300,
            NamedPriority::DstNat => -100,
            NamedPriority::Filter => 0,
            NamedPriority::SrcNat => 100,
        }
    }
}

/// What a base chain does with a packet no rule decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// A rule: its expressions in order, matches first, then statements, and an optional
/// comment (`nft` prints it last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(exprs: impl Into<Vec<Expr>>) -> Rule {
        Rule {
            exprs: exprs.into(),
            comment: None,
        }
    }

    /// The same rule with this comment (see [`comment`]).
    pub fn with_comment(self, comment: impl Into<String>) -> Rule {
        Rule {
            comment: Some(self::comment(comment)),
            ..self
        }
    }
}

/// Whether a match compares for equality or difference (`!=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
}

/// Source or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Source,
    Destination,
}

/// A field of the packet a rule reads as (part of) a set's or map's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `meta l4proto`: the transport protocol (`inet_proto`).
    L4Proto,
    /// `ip saddr`, `ip6 daddr`...: an address of the network header.
    Addr(Family, Dir),
    /// `th dport`: a port of the transport header, whatever the protocol.
    ThPort(Dir),
    /// `iifname`: the name of the interface the packet came in on (`ifname`).
    IifName,
    /// `oifname`: the name of the interface the packet leaves by (`ifname`).
    OifName,
}

/// One expression of a rule: a match, or a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta nfproto ipv4`: the packet is of this family.
    NfProto(Family),
    /// `iifname "NAME"`: the input interface; a trailing `*` matches every name starting with
    /// what precedes it.
    IifName(String),
    /// `oifname "NAME"`: the output interface, like [`Expr::IifName`].
    OifName(String),
    /// `ct state established,related`: the connection is in one of these states.
    CtState(BTreeSet<CtState>),
    /// `icmpv6 type nd-neighbor-solicit`: an ICMPv6 packet of this type.
    Icmpv6Type(Icmpv6Type),
    /// `ip saddr 127.0.0.0/8`, `ip6 daddr ::1`, `ip daddr != 10.0.0.0/8`.
    Addr { dir: Dir, op: Op, prefix: Cidr },
    /// `udp dport 4789`: the packet is of this protocol, to (or from) this port.
    Port {
        protocol: Protocol,
        dir: Dir,
        port: u16,
    },
    /// `ip saddr @nat4`, `ip saddr != @nodes4`, `ip saddr . ip daddr @hairpin4`: the key made
    /// of these fields is (not) in the set.
    Lookup {
        key: Vec<Field>,
        op: Op,
        set: String,
    },
    /// `fib saddr . iif oif missing`: the route back to the source does not leave by the
    /// interface the packet came in on (the reverse-path check).
    FibSourceNotViaInput,
    /// `fib daddr type local`: the destination is one of this host's addresses.
    FibDaddrLocal,
    /// `ct status dnat` (`Op::Eq`: the connection is destination-NATed) or `ct status & dnat
    /// == 0` (`Op::Neq`: it is not).
    CtDnat(Op),
    /// `counter`
    Counter,
    /// `counter name "NAME"`: counts into the table's named counter `NAME`
    /// ([`Table::counters`]), which outlives the rule.
    CounterRef(String),
    /// `masquerade`
    Masquerade,
    /// `dnat ip to KEY map @MAP`: destination NAT to the address and port the map gives for the
    /// key made of these fields.
    DnatMap {
        family: Family,
        key: Vec<Field>,
        map: String,
    },
    /// `oifname vmap @MAP`: the verdict the map gives for the key made of these fields (no
    /// verdict when the key is not in the map: the rule does nothing).
    Vmap { key: Vec<Field>, map: String },
    /// `limit rate N/second`: matches at most this many packets per unit of time (with the
    /// burst of 5 packets `nft` gives by default).
    Limit { rate: u32, per: TimeUnit },
    /// `log prefix "PREFIX" group N`: the packet goes to this nflog group, with this prefix
    /// (see [`log_prefix`]) when there is one.
    Log { group: u16, prefix: Option<String> },
    /// `accept`, `drop`, `return`, `jump CHAIN`.
    Verdict(Verdict),
}

/// A connection's state as `ct state` names it, in the order `nft` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    Invalid,
    Established,
    Related,
    New,
    Untracked,
}

/// ICMPv6 types, as `nft` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv6Type {
    /// `nd-neighbor-solicit` (135).
    NeighborSolicit,
    /// `nd-neighbor-advert` (136).
    NeighborAdvert,
}

impl Icmpv6Type {
    pub fn number(self) -> u8 {
        match self {
            Icmpv6Type::NeighborSolicit => 135,
            Icmpv6Type::NeighborAdvert => 136,
        }
    }
}

/// The unit of a rate (`limit rate 10/second`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Second,
    Minute,
    Hour,
}

impl TimeUnit {
    pub fn seconds(self) -> u64 {
        match self {
            TimeUnit::Second => 1,
            TimeUnit::Minute => 60,
            TimeUnit::Hour => 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
}

impl Expr {
    /// `ip saddr @SET` and the like: `field` is in `set`.
    pub fn in_set(field: Field, set: &str) -> Expr {
        Expr::Lookup {
            key: vec![field],
            op: Op::Eq,
            set: set.to_string(),
        }
    }

    /// `ip saddr != @SET` and the like: `field` is not in `set`.
    pub fn not_in_set(field: Field, set: &str) -> Expr {
        Expr::Lookup {
            key: vec![field],
            op: Op::Neq,
            set: set.to_string(),
        }
    }

    /// `jump CHAIN`
    pub fn jump(chain: &str) -> Expr {
        Expr::Verdict(Verdict::Jump(chain.to_string()))
    }

    /// `ct state S1,S2`
    pub fn ct_state(states: impl IntoIterator<Item = CtState>) -> Expr {
        Expr::CtState(states.into_iter().collect())
    }

    /// `FIELD vmap @MAP`
    pub fn vmap(field: Field, map: &str) -> Expr {
        Expr::Vmap {
            key: vec![field],
            map: map.to_string(),
        }
    }

    /// The set or map the expression reads, if any.
    pub fn set(&self) -> Option<&str> {
        match self {
            Expr::Lookup { set, .. } => Some(set),
            Expr::Vmap { map, .. } | Expr::DnatMap { map, .. } => Some(map),
            _ => None,
        }
    }

    /// The chain the expression jumps to, if any.
    pub fn jumps_to(&self) -> Option<&str> {
        match self {
            Expr::Verdict(v) => v.chain(),
            _ => None,
        }
    }
}

impl Verdict {
    /// The chain a `jump` goes to.
    pub fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(chain) => Some(chain),
            _ => None,
        }
    }
}

impl Field {
    /// The family of an address field (the others are of both).
    pub fn family(self) -> Option<Family> {
        match self {
            Field::Addr(family, _) => Some(family),
            Field::L4Proto | Field::ThPort(_) | Field::IifName | Field::OifName => None,
        }
    }
}
