//! The model ([`crate::nft`]) as nf_tables messages: a generic encoder of tables, sets and
//! their elements, chains and rules (compiled by [`super::compile`]), framed in one nfnetlink
//! batch. No socket here ([`super::socket`] sends the bytes) and no policy (the caller's
//! model says what exists).

use std::collections::{BTreeMap, BTreeSet};

use sinew_core::Family;
use sinew_core::interval;

use super::compile::{KernelExpr, SetInfo, addr_bytes, compile, verdict};
use super::uapi::*;
use crate::nft::{
    Chain, ChainKind, Change, DataType, Element, Hook, Policy, Range, Rule, Set, Table, Value,
};

/// Elements per `NFT_MSG_NEWSETELEM` message at most; fewer when they would not fit in the
/// element list, one attribute whose length is 16 bits.
pub(super) const ELEMENTS_PER_MESSAGE: usize = 1000;
/// The most bytes of elements a message carries (below the 64 KiB an attribute can hold).
const ELEMENT_BYTES_PER_MESSAGE: usize = 60 * 1024;

/// Writes netlink attributes into a buffer.
pub(super) struct Attrs<'a> {
    pub(super) buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    pub(super) fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        // Attribute payloads here are far below 64 KiB; nests are checked in `nest`.
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad4(self.buf);
    }

    pub(super) fn str(&mut self, ty: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.put(ty, &data);
    }

    pub(super) fn be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    pub(super) fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        f(&mut Attrs { buf: self.buf });
        let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }
}

pub(super) fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// `struct nlmsghdr` + `struct nfgenmsg`, length patched by [`end_message`].
pub(super) fn begin_message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
) {
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(NFNETLINK_V0);
    buf.extend_from_slice(&res_id.to_be_bytes());
}

pub(super) fn end_message(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub(super) fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// One request of `family` inet on its own (not in a batch): header, attributes, length.
pub(super) fn request(msg: u16, seq: u32, f: impl FnOnce(&mut Attrs<'_>)) -> Vec<u8> {
    let mut bytes = Vec::new();
    begin_message(
        &mut bytes,
        nft_type(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
    );
    f(&mut Attrs { buf: &mut bytes });
    end_message(&mut bytes, 0);
    bytes
}

/// Encodes one kernel expression as the content of an `NFTA_LIST_ELEM`.
pub(super) fn encode_expr(a: &mut Attrs<'_>, expr: &KernelExpr) {
    let data = |a: &mut Attrs<'_>, name: &str, f: &dyn Fn(&mut Attrs<'_>)| {
        a.str(NFTA_EXPR_NAME, name);
        a.nest(NFTA_EXPR_DATA, |d| f(d));
    };
    match expr {
        KernelExpr::Meta { key, dreg } => data(a, "meta", &|d| {
            d.be32(NFTA_META_KEY, *key);
            d.be32(NFTA_META_DREG, *dreg);
        }),
        KernelExpr::Cmp { neq, data: value } => data(a, "cmp", &|d| {
            d.be32(NFTA_CMP_SREG, NFT_REG_1);
            d.be32(NFTA_CMP_OP, if *neq { NFT_CMP_NEQ } else { NFT_CMP_EQ });
            d.nest(NFTA_CMP_DATA, |v| v.put(NFTA_DATA_VALUE, value));
        }),
        KernelExpr::Payload {
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
        KernelExpr::Lookup {
            set,
            set_id,
            dreg,
            invert,
        } => data(a, "lookup", &|d| {
            d.str(NFTA_LOOKUP_SET, set);
            d.be32(NFTA_LOOKUP_SET_ID, *set_id);
            d.be32(NFTA_LOOKUP_SREG, NFT_REG_1);
            match dreg {
                Some(dreg) => d.be32(NFTA_LOOKUP_DREG, *dreg),
                None => d.be32(
                    NFTA_LOOKUP_FLAGS,
                    if *invert { NFT_LOOKUP_F_INV } else { 0 },
                ),
            }
        }),
        KernelExpr::And { mask } => data(a, "bitwise", &|d| {
            d.be32(NFTA_BITWISE_SREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_DREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_LEN, u32::try_from(mask.len()).unwrap_or(0));
            d.nest(NFTA_BITWISE_MASK, |v| v.put(NFTA_DATA_VALUE, mask));
            d.nest(NFTA_BITWISE_XOR, |v| {
                v.put(NFTA_DATA_VALUE, &vec![0; mask.len()])
            });
        }),
        KernelExpr::Fib { result, flags } => data(a, "fib", &|d| {
            d.be32(NFTA_FIB_DREG, NFT_REG_1);
            d.be32(NFTA_FIB_RESULT, *result);
            d.be32(NFTA_FIB_FLAGS, *flags);
        }),
        KernelExpr::Ct { key } => data(a, "ct", &|d| {
            d.be32(NFTA_CT_DREG, NFT_REG_1);
            d.be32(NFTA_CT_KEY, *key);
        }),
        KernelExpr::Limit { rate, unit } => data(a, "limit", &|d| {
            d.put(NFTA_LIMIT_RATE, &rate.to_be_bytes());
            d.put(NFTA_LIMIT_UNIT, &unit.to_be_bytes());
            d.be32(NFTA_LIMIT_BURST, NFT_LIMIT_DEFAULT_BURST);
            d.be32(NFTA_LIMIT_TYPE, NFT_LIMIT_PKTS);
            d.be32(NFTA_LIMIT_FLAGS, 0);
        }),
        KernelExpr::Log { group, prefix } => data(a, "log", &|d| {
            d.put(NFTA_LOG_GROUP, &group.to_be_bytes());
            if let Some(prefix) = prefix {
                d.str(NFTA_LOG_PREFIX, prefix);
            }
        }),
        KernelExpr::Hton { reg, size, len } => data(a, "byteorder", &|d| {
            d.be32(NFTA_BYTEORDER_SREG, *reg);
            d.be32(NFTA_BYTEORDER_DREG, *reg);
            d.be32(NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON);
            d.be32(NFTA_BYTEORDER_LEN, *len);
            d.be32(NFTA_BYTEORDER_SIZE, *size);
        }),
        // No data: the counter starts at zero.
        KernelExpr::Counter => a.str(NFTA_EXPR_NAME, "counter"),
        KernelExpr::CounterRef(name) => data(a, "objref", &|d| {
            d.be32(NFTA_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER);
            d.str(NFTA_OBJREF_IMM_NAME, name);
        }),
        // No data: plain `masquerade`, no port range, no flags.
        KernelExpr::Masq => a.str(NFTA_EXPR_NAME, "masq"),
        KernelExpr::Dnat { family, proto_reg } => data(a, "nat", &|d| {
            d.be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
            d.be32(NFTA_NAT_FAMILY, u32::from(*family));
            d.be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
            d.be32(NFTA_NAT_REG_PROTO_MIN, *proto_reg);
        }),
        KernelExpr::Verdict { code, chain } => data(a, "immediate", &|d| {
            d.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            d.nest(NFTA_IMMEDIATE_DATA, |v| {
                v.nest(NFTA_DATA_VERDICT, |c| {
                    c.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
                    if let Some(chain) = chain {
                        c.str(NFTA_VERDICT_CHAIN, chain);
                    }
                });
            });
        }),
    }
}

// ----- sets and elements -----

/// `(nft type id, length in bytes)` of one field.
fn type_info(t: DataType) -> (u32, u32) {
    match t {
        DataType::Ipv4Addr => (NFT_TYPE_IPADDR, 4),
        DataType::Ipv6Addr => (NFT_TYPE_IP6ADDR, 16),
        DataType::InetProto => (NFT_TYPE_INET_PROTOCOL, 1),
        DataType::InetService => (NFT_TYPE_INET_SERVICE, 2),
        DataType::IfName => (NFT_TYPE_IFNAME, IFNAMSIZ as u32),
        // The kernel sizes verdicts itself.
        DataType::Verdict => (NFT_DATA_VERDICT, 0),
    }
}

/// The type id `nft` gives a key or value: one type's, or a concatenation's (6 bits per
/// field, first field highest).
pub(super) fn type_id(types: &[DataType]) -> u32 {
    match types {
        [one] => type_info(*one).0,
        _ => types.iter().fold(0, |id, t| (id << 6) | type_info(*t).0),
    }
}

/// A key's or value's length: one type's, or a concatenation's (each field in a 4-byte word).
fn type_len(types: &[DataType]) -> u32 {
    match types {
        [one] => type_info(*one).1,
        _ => types.iter().map(|t| type_info(*t).1.div_ceil(4) * 4).sum(),
    }
}

/// The byte order `nft` records for a key or value: a concatenation's, a protocol's and a
/// verdict's as it always did, an interface name's in host order, an address's or port's in
/// network order.
fn byte_order(types: &[DataType]) -> u32 {
    match types {
        [DataType::InetProto | DataType::Verdict] => BYTEORDER_HOST,
        [DataType::IfName] => BYTEORDER_HOST_ENDIAN,
        [_] => BYTEORDER_BIG_ENDIAN,
        _ => BYTEORDER_HOST,
    }
}

/// The first and last bytes a field of an element covers: the same for a single value, the
/// ends of a prefix or range. `None` for a verdict (never a key).
fn value_bounds(v: &Value) -> Option<(Vec<u8>, Vec<u8>)> {
    let same = |b: Vec<u8>| Some((b.clone(), b));
    match v {
        Value::Prefix(p) => Some((addr_bytes(p.network()), addr_bytes(p.last()))),
        Value::Addr(a) => same(addr_bytes(*a)),
        Value::Proto(p) => same(vec![p.number()]),
        Value::Port(p) => same(p.to_be_bytes().to_vec()),
        Value::Range(Range::Addr(first, last)) => Some((addr_bytes(*first), addr_bytes(*last))),
        Value::Range(Range::Port(first, last)) => {
            Some((first.to_be_bytes().to_vec(), last.to_be_bytes().to_vec()))
        }
        Value::IfName(name) => {
            let mut b = name.as_bytes().to_vec();
            b.resize(IFNAMSIZ.max(b.len() + 1), 0);
            same(b)
        }
        Value::Verdict(_) => None,
    }
}

/// The bytes of a key (`last`: the last value each field covers, else the first): one
/// value's, or a concatenation's (each padded to a word).
fn key_bytes(values: &[Value], last: bool) -> Vec<u8> {
    let field = |v: &Value| {
        value_bounds(v)
            .map(|(f, l)| if last { l } else { f })
            .unwrap_or_default()
    };
    match values {
        [one] => field(one),
        _ => {
            let mut out = Vec::new();
            for v in values {
                out.extend(field(v));
                pad4(&mut out);
            }
            out
        }
    }
}

/// A key's or value's bytes: one value's, or a concatenation's (each padded to a word).
pub(super) fn values_bytes(values: &[Value]) -> Vec<u8> {
    key_bytes(values, false)
}

/// `bytes` read as a big-endian number plus one; `None` past the top.
fn next(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for b in out.iter_mut().rev() {
        if *b == u8::MAX {
            *b = 0;
        } else {
            *b += 1;
            return Some(out);
        }
    }
    None
}

/// One user-data TLV as `nft` writes it: type, length, host-endian u32 value.
fn udata(ty: u8, value: u32) -> Vec<u8> {
    let mut v = vec![ty, 4];
    v.extend_from_slice(&value.to_ne_bytes());
    v
}

/// A comment as user data: TLV "comment" with the text and its NUL, the text cut to what
/// `nft` accepts ([`crate::nft::model::comment`]; the model's constructors cut it already).
fn comment_udata(comment: &str) -> Vec<u8> {
    let text = crate::nft::model::comment(comment);
    let mut v = vec![
        UDATA_COMMENT,
        u8::try_from(text.len() + 1).unwrap_or(u8::MAX),
    ];
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

/// One element as the kernel takes it: key (and key end), value or verdict (maps), flags and
/// user data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KernelElement {
    pub(super) key: Vec<u8>,
    /// A concatenated interval set's element: the last value of each field.
    pub(super) key_end: Option<Vec<u8>>,
    pub(super) data: Option<Vec<u8>>,
    /// A verdict map's value: code and chain.
    pub(super) verdict: Option<(i32, Option<String>)>,
    /// `NFT_SET_ELEM_INTERVAL_END`: the first address after an interval.
    pub(super) end: bool,
    /// An interval start that runs to the top of the address space (no end element).
    pub(super) open: bool,
    pub(super) comment: Option<String>,
}

impl KernelElement {
    /// An element of a set without intervals, or of a concatenated interval set.
    pub(super) fn of(element: &Element) -> KernelElement {
        let verdict = match element.data.as_slice() {
            [Value::Verdict(v)] => Some(verdict(v)),
            _ => None,
        };
        let ranges = element
            .key
            .iter()
            .any(|v| matches!(v, Value::Prefix(_) | Value::Range(_)));
        KernelElement {
            key: key_bytes(&element.key, false),
            key_end: ranges.then(|| key_bytes(&element.key, true)),
            data: (!element.data.is_empty() && verdict.is_none())
                .then(|| values_bytes(&element.data)),
            verdict,
            end: false,
            open: false,
            comment: element.comment.clone(),
        }
    }

    /// A concatenated interval set's element: every element has a key end.
    fn of_concat_interval(element: &Element) -> KernelElement {
        KernelElement {
            key_end: Some(key_bytes(&element.key, true)),
            ..KernelElement::of(element)
        }
    }

    fn boundary(key: Vec<u8>, end: bool, open: bool, comment: Option<String>) -> KernelElement {
        KernelElement {
            key,
            key_end: None,
            data: None,
            verdict: None,
            end,
            open,
            comment,
        }
    }

    /// Encodes the element (the content of an `NFTA_LIST_ELEM`); `with_data`: its value and
    /// user data too (a delete names the key only).
    pub(super) fn encode(&self, a: &mut Attrs<'_>, with_data: bool) {
        if self.end {
            a.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        a.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &self.key));
        if let Some(end) = &self.key_end {
            a.nest(NFTA_SET_ELEM_KEY_END, |k| k.put(NFTA_DATA_VALUE, end));
        }
        if !with_data {
            return;
        }
        if let Some(data) = &self.data {
            a.nest(NFTA_SET_ELEM_DATA, |d| d.put(NFTA_DATA_VALUE, data));
        }
        if let Some((code, chain)) = &self.verdict {
            a.nest(NFTA_SET_ELEM_DATA, |d| {
                d.nest(NFTA_DATA_VERDICT, |v| {
                    v.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
                    if let Some(chain) = chain {
                        v.str(NFTA_VERDICT_CHAIN, chain);
                    }
                });
            });
        }
        let mut user = Vec::new();
        if let Some(comment) = &self.comment {
            user.extend(comment_udata(comment));
        }
        if self.open {
            user.extend(udata(UDATA_SET_ELEM_FLAGS, SET_ELEM_F_INTERVAL_OPEN));
        }
        if !user.is_empty() {
            a.put(NFTA_SET_ELEM_USERDATA, &user);
        }
    }
}

/// The elements the kernel holds for a whole set of the model: an interval set of one field
/// as range boundaries (an end at zero first unless a range starts there, as `nft` sends
/// them), a concatenated interval set's with their key ends, others one each.
pub(super) fn kernel_elements(set: &Set) -> Vec<KernelElement> {
    if !set.interval || set.key.len() > 1 {
        return set_elements(set, &set.elements);
    }
    let plain_prefixes = set.elements.iter().all(|e| {
        e.comment.is_none() && matches!(e.key.as_slice(), [Value::Prefix(_) | Value::Addr(_)])
    });
    if plain_prefixes
        && matches!(
            set.key.as_slice(),
            [DataType::Ipv4Addr | DataType::Ipv6Addr]
        )
    {
        // Prefixes only: the outermost ones (nested prefixes are left out).
        let prefixes: Vec<_> = set
            .elements
            .iter()
            .flat_map(|e| e.key.first())
            .filter_map(|v| match v {
                Value::Prefix(p) => Some(*p),
                Value::Addr(a) => Some(sinew_core::Cidr::host(*a)),
                _ => None,
            })
            .collect();
        let family = match set.key.first() {
            Some(DataType::Ipv6Addr) => Family::V6,
            _ => Family::V4,
        };
        return interval::bounds(&interval::outermost(&prefixes, family))
            .into_iter()
            .map(|b| KernelElement::boundary(addr_bytes(b.addr), b.end, b.open, None))
            .collect();
    }
    let mut out = set_elements(set, &set.elements);
    if let Some(first) = out.first()
        && first.key.iter().any(|b| *b != 0)
    {
        let zero = vec![0; first.key.len()];
        out.insert(0, KernelElement::boundary(zero, true, false, None));
    }
    out
}

/// The kernel elements of some elements of `set` (all of them, or those added or removed):
/// in an interval set of one field each range is a start and, unless it runs to the top, an
/// end at its last value + 1 (the ranges must be disjoint), sorted.
pub(super) fn set_elements(set: &Set, elements: &[Element]) -> Vec<KernelElement> {
    if !set.interval {
        return elements.iter().map(KernelElement::of).collect();
    }
    if set.key.len() > 1 {
        return elements
            .iter()
            .map(KernelElement::of_concat_interval)
            .collect();
    }
    let mut ranges: Vec<(Vec<u8>, Vec<u8>, Option<String>)> = elements
        .iter()
        .filter_map(|e| {
            let (first, last) = value_bounds(e.key.first()?)?;
            Some((first, last, e.comment.clone()))
        })
        .collect();
    ranges.sort();
    let mut out = Vec::with_capacity(ranges.len() * 2);
    for (first, last, comment) in ranges {
        let after = next(&last);
        out.push(KernelElement::boundary(
            first,
            false,
            after.is_none(),
            comment,
        ));
        if let Some(after) = after {
            out.push(KernelElement::boundary(after, true, false, None));
        }
    }
    out
}

// ----- the batch -----

/// One nfnetlink batch being built: the messages and, per sequence number, what it does.
pub(super) struct Batch {
    pub(super) bytes: Vec<u8>,
    pub(super) ops: BTreeMap<u32, String>,
    pub(super) begin_seq: u32,
    pub(super) next_seq: u32,
}

impl Batch {
    pub(super) fn new(first_seq: u32) -> Batch {
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

    /// Appends `NFNL_MSG_BATCH_END`; returns the bytes, what each message does, and the
    /// first and last sequence numbers used.
    pub(super) fn finish(mut self) -> (Vec<u8>, BTreeMap<u32, String>, u32, u32) {
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
    pub(super) fn delete_table(&mut self, table: &str) {
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

    /// Creates the whole table (which must not exist at that point of the transaction):
    /// the table, its named counters, the chains (so a rule or a verdict map may jump to any chain), each set
    /// with its elements, then the rules. Sets get ids 1, 2, ... in order, which the rules'
    /// lookups name.
    pub(super) fn table(&mut self, t: &Table) {
        self.add_table(&t.name);
        for counter in &t.counters {
            self.add_counter(&t.name, counter);
        }
        for chain in &t.chains {
            self.add_chain(&t.name, chain);
        }
        let mut sets = Sets::of(t);
        for set in &t.sets {
            let id = sets.create(&set.name);
            self.add_set(&t.name, set, id);
            let elements = kernel_elements(set);
            self.elements(&t.name, set, Some(id), &elements, false);
        }
        for chain in &t.chains {
            for rule in &chain.rules {
                self.add_rule(&t.name, &chain.name, rule, &sets);
            }
        }
    }

    /// Applies `changes` (from [`crate::nft::diff`]) to table `new.name`, which holds the
    /// table they start from; `new` is the table they lead to (what the rules' lookups read).
    pub(super) fn changes(&mut self, new: &Table, changes: &[Change]) {
        let table = new.name.as_str();
        let mut sets = Sets::of(new);
        for change in changes {
            match change {
                Change::AddCounter(counter) => self.add_counter(table, counter),
                Change::DeleteCounter(counter) => self.add(
                    format!("delete counter inet {table} {counter}"),
                    NFT_MSG_DELOBJ,
                    0,
                    |a| {
                        a.str(NFTA_OBJ_TABLE, table);
                        a.str(NFTA_OBJ_NAME, counter);
                        a.be32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
                    },
                ),
                Change::AddChain(chain) => self.add_chain(table, chain),
                Change::FlushChain(chain) => self.add(
                    format!("flush chain inet {table} {chain}"),
                    NFT_MSG_DELRULE,
                    0,
                    |a| {
                        a.str(NFTA_RULE_TABLE, table);
                        a.str(NFTA_RULE_CHAIN, chain);
                    },
                ),
                Change::DeleteElements(set) => {
                    let elements = set_elements(set, &set.elements);
                    self.elements(table, set, None, &elements, true);
                }
                Change::DeleteSet(set) => self.add(
                    format!("delete set inet {table} {set}"),
                    NFT_MSG_DELSET,
                    0,
                    |a| {
                        a.str(NFTA_SET_TABLE, table);
                        a.str(NFTA_SET_NAME, set);
                    },
                ),
                Change::AddSet(set) => {
                    let id = sets.create(&set.name);
                    self.add_set(table, set, id);
                    let elements = kernel_elements(set);
                    self.elements(table, set, Some(id), &elements, false);
                }
                Change::AddElements(set) => {
                    let elements = set_elements(set, &set.elements);
                    self.elements(table, set, None, &elements, false);
                }
                Change::AddRules { chain, rules } => {
                    for rule in rules {
                        self.add_rule(table, chain, rule, &sets);
                    }
                }
                Change::DeleteChain(chain) => self.add(
                    format!("delete chain inet {table} {chain}"),
                    NFT_MSG_DELCHAIN,
                    0,
                    |a| {
                        a.str(NFTA_CHAIN_TABLE, table);
                        a.str(NFTA_CHAIN_NAME, chain);
                    },
                ),
            }
        }
    }

    /// A named counter, at zero.
    fn add_counter(&mut self, table: &str, counter: &str) {
        self.add(
            format!("add counter inet {table} {counter}"),
            NFT_MSG_NEWOBJ,
            NLM_F_CREATE,
            |a| {
                a.str(NFTA_OBJ_TABLE, table);
                a.str(NFTA_OBJ_NAME, counter);
                a.be32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
                a.nest(NFTA_OBJ_DATA, |d| {
                    d.put(NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
                    d.put(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
                });
            },
        );
    }

    fn add_set(&mut self, table: &str, set: &Set, id: u32) {
        let kind = if set.is_map() { "map" } else { "set" };
        let concat_interval = set.interval && set.key.len() > 1;
        self.add(
            format!("add {kind} inet {table} {}", set.name),
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            |a| {
                let mut flags = 0;
                if set.interval {
                    flags |= NFT_SET_INTERVAL;
                }
                if set.is_map() {
                    flags |= NFT_SET_MAP;
                }
                if concat_interval {
                    flags |= NFT_SET_CONCAT;
                }
                a.str(NFTA_SET_TABLE, table);
                a.str(NFTA_SET_NAME, &set.name);
                a.be32(NFTA_SET_FLAGS, flags);
                a.be32(NFTA_SET_KEY_TYPE, type_id(&set.key));
                a.be32(NFTA_SET_KEY_LEN, type_len(&set.key));
                let mut udata = udata(UDATA_SET_KEYBYTEORDER, byte_order(&set.key));
                if let Some(data) = &set.data {
                    a.be32(NFTA_SET_DATA_TYPE, type_id(data));
                    a.be32(NFTA_SET_DATA_LEN, type_len(data));
                    udata.extend(self::udata(UDATA_SET_DATABYTEORDER, byte_order(data)));
                }
                a.be32(NFTA_SET_ID, id);
                if concat_interval {
                    // The length of each field, so the kernel can match ranges per field.
                    a.nest(NFTA_SET_DESC, |desc| {
                        desc.nest(NFTA_SET_DESC_CONCAT, |fields| {
                            for t in &set.key {
                                fields.nest(NFTA_LIST_ELEM, |f| {
                                    f.be32(NFTA_SET_FIELD_LEN, type_info(*t).1);
                                });
                            }
                        });
                    });
                }
                a.put(NFTA_SET_USERDATA, &udata);
            },
        );
    }

    /// `NFT_MSG_NEWSETELEM` (or, `delete`, `NFT_MSG_DELSETELEM`) messages adding `elements`
    /// to `set` (by name, and by `id` when the set is created in this batch), as many
    /// elements a message as fit.
    pub(super) fn elements(
        &mut self,
        table: &str,
        set: &Set,
        id: Option<u32>,
        elements: &[KernelElement],
        delete: bool,
    ) {
        let kind = if set.is_map() { "map" } else { "set" };
        let (verb, msg, flags) = if delete {
            ("delete elements from", NFT_MSG_DELSETELEM, 0)
        } else {
            ("add elements to", NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        };
        let op = format!("{verb} {kind} inet {table} {}", set.name);
        let mut rest = elements;
        while !rest.is_empty() {
            let mut bytes = 0;
            let count = rest
                .iter()
                .take(ELEMENTS_PER_MESSAGE)
                .take_while(|e| {
                    let mut buf = Vec::new();
                    e.encode(&mut Attrs { buf: &mut buf }, !delete);
                    bytes += buf.len() + 4;
                    bytes <= ELEMENT_BYTES_PER_MESSAGE
                })
                .count()
                .max(1);
            let (chunk, tail) = rest.split_at(count.min(rest.len()));
            rest = tail;
            self.add(op.clone(), msg, flags, |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, &set.name);
                if let Some(id) = id {
                    a.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
                }
                a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                    for e in chunk {
                        list.nest(NFTA_LIST_ELEM, |el| e.encode(el, !delete));
                    }
                });
            });
        }
    }

    /// One element added to or deleted from an existing set, by name: `op` names it in
    /// errors.
    pub(super) fn element(
        &mut self,
        op: String,
        table: &str,
        set: &str,
        element: &KernelElement,
        delete: bool,
    ) {
        let (msg, flags) = if delete {
            (NFT_MSG_DELSETELEM, 0)
        } else {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        };
        self.add(op, msg, flags, |a| {
            a.str(NFTA_SET_ELEM_LIST_TABLE, table);
            a.str(NFTA_SET_ELEM_LIST_SET, set);
            a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                list.nest(NFTA_LIST_ELEM, |el| element.encode(el, !delete));
            });
        });
    }

    fn add_chain(&mut self, table: &str, chain: &Chain) {
        self.add(
            format!("add chain inet {table} {}", chain.name),
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            |a| {
                a.str(NFTA_CHAIN_TABLE, table);
                a.str(NFTA_CHAIN_NAME, &chain.name);
                if let Some(comment) = &chain.comment {
                    a.put(NFTA_CHAIN_USERDATA, &comment_udata(comment));
                }
                let Some(base) = &chain.hook else {
                    return;
                };
                a.str(
                    NFTA_CHAIN_TYPE,
                    match base.kind {
                        ChainKind::Filter => "filter",
                        ChainKind::Nat => "nat",
                    },
                );
                let policy = match base.policy {
                    Policy::Accept => NF_ACCEPT,
                    Policy::Drop => NF_DROP,
                };
                a.put(NFTA_CHAIN_POLICY, &policy.to_be_bytes());
                let hook = match base.hook {
                    Hook::Prerouting => NF_INET_PRE_ROUTING,
                    Hook::Input => NF_INET_LOCAL_IN,
                    Hook::Forward => NF_INET_FORWARD,
                    Hook::Output => NF_INET_LOCAL_OUT,
                    Hook::Postrouting => NF_INET_POST_ROUTING,
                };
                a.nest(NFTA_CHAIN_HOOK, |h| {
                    h.be32(NFTA_HOOK_HOOKNUM, hook);
                    h.put(NFTA_HOOK_PRIORITY, &base.priority.value().to_be_bytes());
                });
            },
        );
    }

    pub(super) fn add_rule(&mut self, table: &str, chain: &str, rule: &Rule, sets: &dyn SetInfo) {
        let exprs = compile(rule, sets);
        self.add(
            format!("add rule inet {table} {chain} {rule}"),
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            |a| {
                a.str(NFTA_RULE_TABLE, table);
                a.str(NFTA_RULE_CHAIN, chain);
                a.nest(NFTA_RULE_EXPRESSIONS, |list| {
                    for e in &exprs {
                        list.nest(NFTA_LIST_ELEM, |x| encode_expr(x, e));
                    }
                });
                if let Some(comment) = &rule.comment {
                    a.put(NFTA_RULE_USERDATA, &comment_udata(comment));
                }
            },
        );
    }
}

/// The sets of the table a batch leads to, for the rules' lookups: which are concatenated
/// interval sets, and the ids of those created in the batch.
struct Sets<'a> {
    concat_interval: BTreeSet<&'a str>,
    ids: BTreeMap<String, u32>,
}

impl<'a> Sets<'a> {
    fn of(t: &'a Table) -> Sets<'a> {
        Sets {
            concat_interval: t
                .sets
                .iter()
                .filter(|s| s.interval && s.key.len() > 1)
                .map(|s| s.name.as_str())
                .collect(),
            ids: BTreeMap::new(),
        }
    }

    /// The id of a set created now: 1, 2, ... in order.
    fn create(&mut self, name: &str) -> u32 {
        let id = u32::try_from(self.ids.len() + 1).unwrap_or(u32::MAX);
        self.ids.insert(name.to_string(), id);
        id
    }
}

impl SetInfo for Sets<'_> {
    fn id(&self, set: &str) -> u32 {
        self.ids.get(set).copied().unwrap_or(0)
    }

    fn concat_interval(&self, set: &str) -> bool {
        self.concat_interval.contains(set)
    }
}
