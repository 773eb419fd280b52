//! The model ([`crate::nft`]) as nf_tables messages: a generic encoder of tables, sets and
//! their elements, chains and rules (compiled by [`super::compile`]), framed in one nfnetlink
//! batch. No socket here ([`super::socket`] sends the bytes) and no policy (the caller's
//! model says what exists).

use std::collections::BTreeMap;

use sinew_core::Family;
use sinew_core::interval;

use super::compile::{KernelExpr, addr_bytes, compile};
use super::uapi::*;
use crate::nft::{Chain, ChainKind, DataType, Element, Hook, Policy, Rule, Set, Table, Value};

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
        // No data: the counter starts at zero.
        KernelExpr::Counter => a.str(NFTA_EXPR_NAME, "counter"),
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
    }
}

/// The type id `nft` gives a key or value: one type's, or a concatenation's (6 bits per
/// field, first field highest).
pub(super) fn type_id(types: &[DataType]) -> u32 {
    types.iter().fold(0, |id, t| (id << 6) | type_info(*t).0)
}

/// A key's or value's length: one type's, or a concatenation's (each field in a 4-byte word).
fn type_len(types: &[DataType]) -> u32 {
    match types {
        [one] => type_info(*one).1,
        _ => types.iter().map(|t| type_info(*t).1.div_ceil(4) * 4).sum(),
    }
}

/// The byte order `nft` records for a key or value: a concatenation's in host order, an
/// address's or port's in network order.
fn byte_order(types: &[DataType]) -> u32 {
    match types {
        [DataType::InetProto] => BYTEORDER_HOST,
        [_] => BYTEORDER_BIG_ENDIAN,
        _ => BYTEORDER_HOST,
    }
}

fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::Prefix(p) => addr_bytes(p.network()),
        Value::Addr(a) => addr_bytes(*a),
        Value::Proto(p) => vec![p.number()],
        Value::Port(p) => p.to_be_bytes().to_vec(),
    }
}

/// A key's or value's bytes: one value's, or a concatenation's (each padded to a word).
pub(super) fn values_bytes(values: &[Value]) -> Vec<u8> {
    match values {
        [one] => value_bytes(one),
        _ => {
            let mut out = Vec::new();
            for v in values {
                out.extend(value_bytes(v));
                pad4(&mut out);
            }
            out
        }
    }
}

/// One user-data TLV as `nft` writes it: type, length, host-endian u32 value.
fn udata(ty: u8, value: u32) -> Vec<u8> {
    let mut v = vec![ty, 4];
    v.extend_from_slice(&value.to_ne_bytes());
    v
}

/// One element as the kernel takes it: key, value (maps), flags and user data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KernelElement {
    pub(super) key: Vec<u8>,
    pub(super) data: Option<Vec<u8>>,
    /// `NFT_SET_ELEM_INTERVAL_END`: the first address after an interval.
    pub(super) end: bool,
    /// An interval start that runs to the top of the address space (no end element).
    pub(super) open: bool,
}

impl KernelElement {
    pub(super) fn of(element: &Element) -> KernelElement {
        KernelElement {
            key: values_bytes(&element.key),
            data: (!element.data.is_empty()).then(|| values_bytes(&element.data)),
            end: false,
            open: false,
        }
    }

    /// Encodes the element (the content of an `NFTA_LIST_ELEM`); `with_data`: its value too
    /// (a delete names the key only).
    pub(super) fn encode(&self, a: &mut Attrs<'_>, with_data: bool) {
        if self.end {
            a.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        a.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &self.key));
        if with_data && let Some(data) = &self.data {
            a.nest(NFTA_SET_ELEM_DATA, |d| d.put(NFTA_DATA_VALUE, data));
        }
        if self.open {
            a.put(
                NFTA_SET_ELEM_USERDATA,
                &udata(UDATA_SET_ELEM_FLAGS, SET_ELEM_F_INTERVAL_OPEN),
            );
        }
    }
}

/// The elements the kernel holds for a set of the model: an interval set's prefixes as
/// range boundaries ([`interval::bounds`] of its outermost prefixes), others one each.
pub(super) fn kernel_elements(set: &Set) -> Vec<KernelElement> {
    if !set.interval {
        return set.elements.iter().map(KernelElement::of).collect();
    }
    let prefixes: Vec<_> = set
        .elements
        .iter()
        .flat_map(|e| e.key.first())
        .filter_map(|v| match v {
            Value::Prefix(p) => Some(*p),
            Value::Addr(a) => Some(sinew_core::Cidr::host(*a)),
            Value::Proto(_) | Value::Port(_) => None,
        })
        .collect();
    let family = match set.key.first() {
        Some(DataType::Ipv6Addr) => Family::V6,
        _ => Family::V4,
    };
    interval::bounds(&interval::outermost(&prefixes, family))
        .into_iter()
        .map(|b| KernelElement {
            key: addr_bytes(b.addr),
            data: None,
            end: b.end,
            open: b.open,
        })
        .collect()
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
    /// the table, each set with its elements, the chains, then the rules (so a rule may jump
    /// to any chain). Sets get ids 1, 2, ... in order, which the rules' lookups name.
    pub(super) fn table(&mut self, t: &Table) {
        self.add_table(&t.name);
        let ids: BTreeMap<&str, u32> = t
            .sets
            .iter()
            .zip(1u32..)
            .map(|(s, id)| (s.name.as_str(), id))
            .collect();
        for (set, id) in t.sets.iter().zip(1u32..) {
            self.add_set(&t.name, set, id);
            let elements = kernel_elements(set);
            self.elements(&t.name, set, Some(id), &elements);
        }
        for chain in &t.chains {
            self.add_chain(&t.name, chain);
        }
        let set_id = |name: &str| ids.get(name).copied().unwrap_or(0);
        for chain in &t.chains {
            for rule in &chain.rules {
                self.add_rule(&t.name, &chain.name, rule, &set_id);
            }
        }
    }

    fn add_set(&mut self, table: &str, set: &Set, id: u32) {
        let kind = if set.is_map() { "map" } else { "set" };
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
                a.put(NFTA_SET_USERDATA, &udata);
            },
        );
    }

    /// `NFT_MSG_NEWSETELEM` messages adding `elements` to `set` (by name, and by `id` when
    /// the set is created in this batch), as many elements a message as fit.
    pub(super) fn elements(
        &mut self,
        table: &str,
        set: &Set,
        id: Option<u32>,
        elements: &[KernelElement],
    ) {
        let kind = if set.is_map() { "map" } else { "set" };
        let op = format!("add elements to {kind} inet {table} {}", set.name);
        let mut rest = elements;
        while !rest.is_empty() {
            let mut bytes = 0;
            let count = rest
                .iter()
                .take(ELEMENTS_PER_MESSAGE)
                .take_while(|e| {
                    let mut buf = Vec::new();
                    e.encode(&mut Attrs { buf: &mut buf }, true);
                    bytes += buf.len() + 4;
                    bytes <= ELEMENT_BYTES_PER_MESSAGE
                })
                .count()
                .max(1);
            let (chunk, tail) = rest.split_at(count.min(rest.len()));
            rest = tail;
            self.add(op.clone(), NFT_MSG_NEWSETELEM, NLM_F_CREATE, |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, &set.name);
                if let Some(id) = id {
                    a.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
                }
                a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                    for e in chunk {
                        list.nest(NFTA_LIST_ELEM, |el| e.encode(el, true));
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

    pub(super) fn add_rule(
        &mut self,
        table: &str,
        chain: &str,
        rule: &Rule,
        set_id: &dyn Fn(&str) -> u32,
    ) {
        let exprs = compile(rule, set_id);
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
            },
        );
    }
}
