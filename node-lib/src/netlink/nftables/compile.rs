//! A rule of the model compiled to the kernel's register machine, as `nft` compiles it:
//! fields load into registers (a concatenation into consecutive 4-byte words), and a match of
//! `ip`/`ip6` fields in an `inet` table is preceded once by the family check (`meta nfproto`)
//! and a port match by the protocol check (`meta l4proto`), the implicit dependencies `nft`
//! adds and `nft list` hides. A protocol loaded into a concatenated interval set's key is
//! turned to network order first, as `nft` does (a no-op for one byte, kept so the kernel
//! holds what `nft` would have given it).

use std::net::IpAddr;

use sinew_core::Family;

use super::uapi::*;
use crate::nft::{CtState, Dir, Expr, Field, Op, Rule, Verdict};

/// What the compiler needs to know of the sets a rule reads.
pub(super) trait SetInfo {
    /// The id of a set created in the same batch (0: none).
    fn id(&self, set: &str) -> u32;
    /// Whether the set is an interval set with a concatenated key.
    fn concat_interval(&self, _set: &str) -> bool {
        false
    }
}

impl<F: Fn(&str) -> u32> SetInfo for F {
    fn id(&self, set: &str) -> u32 {
        self(set)
    }
}

/// One expression of a rule as the kernel runs it (what an `NFTA_LIST_ELEM` holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KernelExpr {
    /// `meta load KEY => reg DREG`.
    Meta { key: u32, dreg: u32 },
    /// `cmp OP reg 1 DATA` (`neq` when `neq`).
    Cmp { neq: bool, data: Vec<u8> },
    /// `payload load LEN @ BASE + OFFSET => reg DREG`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `lookup reg 1 set NAME` (`!=` when `invert`), or for a map `... dreg 1`: the value
    /// lands in reg 1 onwards.
    Lookup {
        set: String,
        set_id: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    /// `bitwise reg 1 = (reg 1 & MASK) ^ 0`.
    And { mask: Vec<u8> },
    /// `fib FLAGS => RESULT => reg 1`.
    Fib { result: u32, flags: u32 },
    /// `ct load KEY => reg 1`.
    Ct { key: u32 },
    /// `limit rate RATE/UNIT burst 5 type packets flags 0`.
    Limit { rate: u64, unit: u64 },
    /// `log group GROUP`.
    Log { group: u16, prefix: Option<String> },
    /// `byteorder reg REG = hton(reg REG, SIZE, LEN)`.
    Hton { reg: u32, size: u32, len: u32 },
    /// `counter` (starting at zero).
    Counter,
    /// `objref type counter name NAME`: counts into a named counter.
    CounterRef(String),
    /// `masq` (no port range, no flags).
    Masq,
    /// `nat dnat FAMILY addr_min reg 1 proto_min reg PROTO_REG`.
    Dnat { family: u8, proto_reg: u32 },
    /// `immediate reg 0 VERDICT [CHAIN]`.
    Verdict { code: i32, chain: Option<String> },
}

/// The register of the 4-byte word `word` of the register space, named as `nft` names it:
/// a 16-byte register where one starts there, else the 4-byte one.
fn register(word: u32) -> u32 {
    if word.is_multiple_of(4) {
        NFT_REG_1 + word / 4
    } else {
        NFT_REG32_00 + word
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// `(offset, length)` of an address in the network header.
fn addr_location(family: Family, dir: Dir) -> (u32, u32) {
    match (family, dir) {
        (Family::V4, Dir::Source) => (12, 4),
        (Family::V4, Dir::Destination) => (16, 4),
        (Family::V6, Dir::Source) => (8, 16),
        (Family::V6, Dir::Destination) => (24, 16),
    }
}

fn port_offset(dir: Dir) -> u32 {
    match dir {
        Dir::Source => 0,
        Dir::Destination => 2,
    }
}

pub(super) fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Compiles one rule; `sets` gives the id of a set created in the same batch and its kind.
pub(super) fn compile(rule: &Rule, sets: &dyn SetInfo) -> Vec<KernelExpr> {
    let mut c = Compiler {
        out: Vec::new(),
        family: None,
        l4proto: None,
    };
    for expr in &rule.exprs {
        c.expr(expr, sets);
    }
    c.out
}

/// What the expressions so far established, so each implicit dependency comes once.
struct Compiler {
    out: Vec<KernelExpr>,
    family: Option<Family>,
    l4proto: Option<u8>,
}

impl Compiler {
    fn cmp(&mut self, neq: bool, data: Vec<u8>) {
        self.out.push(KernelExpr::Cmp { neq, data });
    }

    /// `meta nfproto FAMILY`, unless the rule already checked it.
    fn family(&mut self, family: Family) {
        if self.family != Some(family) {
            self.out.push(KernelExpr::Meta {
                key: NFT_META_NFPROTO,
                dreg: NFT_REG_1,
            });
            self.cmp(false, vec![nfproto(family)]);
            self.family = Some(family);
        }
    }

    /// `meta l4proto NUMBER`, unless the rule already checked it.
    fn l4proto(&mut self, number: u8) {
        if self.l4proto != Some(number) {
            self.out.push(KernelExpr::Meta {
                key: NFT_META_L4PROTO,
                dreg: NFT_REG_1,
            });
            self.cmp(false, vec![number]);
            self.l4proto = Some(number);
        }
    }

    /// Loads `fields` into consecutive words from reg 1 on (each field padded to a word),
    /// with their dependencies first; returns the number of words used. `network_order`: the
    /// key of a concatenated interval set, whose protocol field goes to network order.
    fn load(&mut self, fields: &[Field], network_order: bool) -> u32 {
        for family in fields.iter().filter_map(|f| f.family()) {
            self.family(family);
        }
        let mut word = 0;
        for field in fields {
            let dreg = register(word);
            let len = match *field {
                Field::L4Proto => {
                    self.out.push(KernelExpr::Meta {
                        key: NFT_META_L4PROTO,
                        dreg,
                    });
                    if network_order {
                        self.out.push(KernelExpr::Hton {
                            reg: dreg,
                            size: 2,
                            len: 1,
                        });
                    }
                    1
                }
                Field::IifName | Field::OifName => {
                    let key = if *field == Field::IifName {
                        NFT_META_IIFNAME
                    } else {
                        NFT_META_OIFNAME
                    };
                    self.out.push(KernelExpr::Meta { key, dreg });
                    IFNAMSIZ as u32
                }
                Field::Addr(family, dir) => {
                    let (offset, len) = addr_location(family, dir);
                    self.out.push(KernelExpr::Payload {
                        base: NFT_PAYLOAD_NETWORK_HEADER,
                        offset,
                        len,
                        dreg,
                    });
                    len
                }
                Field::ThPort(dir) => {
                    self.out.push(KernelExpr::Payload {
                        base: NFT_PAYLOAD_TRANSPORT_HEADER,
                        offset: port_offset(dir),
                        len: 2,
                        dreg,
                    });
                    2
                }
            };
            word += len.div_ceil(4);
        }
        word
    }

    /// `meta iifname`/`oifname` compared with a name, or with a prefix for `PREFIX*`.
    fn ifname(&mut self, key: u32, name: &str) {
        self.out.push(KernelExpr::Meta {
            key,
            dreg: NFT_REG_1,
        });
        // `PREFIX*` compares the prefix only; a whole name, NUL-padded.
        let data = match name.strip_suffix('*') {
            Some(prefix) => prefix.as_bytes().to_vec(),
            None => {
                let mut v = name.as_bytes().to_vec();
                v.resize(IFNAMSIZ.max(v.len() + 1), 0);
                v
            }
        };
        self.cmp(false, data);
    }

    fn expr(&mut self, expr: &Expr, sets: &dyn SetInfo) {
        match expr {
            Expr::NfProto(family) => {
                self.family = None;
                self.family(*family);
            }
            Expr::IifName(name) => self.ifname(NFT_META_IIFNAME, name),
            Expr::OifName(name) => self.ifname(NFT_META_OIFNAME, name),
            Expr::CtState(states) => {
                let mask = states.iter().fold(0, |m, s| m | ct_state_bit(*s));
                self.out.push(KernelExpr::Ct { key: NFT_CT_STATE });
                self.out.push(KernelExpr::And {
                    mask: mask.to_ne_bytes().to_vec(),
                });
                self.cmp(true, vec![0; 4]);
            }
            Expr::Addr { dir, op, prefix } => {
                let family = prefix.family();
                self.family(family);
                let (offset, full) = addr_location(family, *dir);
                let bits = u32::from(prefix.prefix_len());
                let network = addr_bytes(prefix.network());
                let neq = *op == Op::Neq;
                let payload = |len| KernelExpr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset,
                    len,
                    dreg: NFT_REG_1,
                };
                if bits > 0 && bits.is_multiple_of(8) {
                    // Whole bytes: load and compare only the prefix's bytes.
                    let len = bits / 8;
                    self.out.push(payload(len));
                    self.cmp(neq, network[..len as usize].to_vec());
                } else {
                    let mask = mask_bytes(full as usize, bits);
                    self.out.push(payload(full));
                    self.out.push(KernelExpr::And { mask });
                    self.cmp(neq, network);
                }
            }
            Expr::Icmpv6Type(t) => {
                self.family(Family::V6);
                self.l4proto(IPPROTO_ICMPV6);
                self.out.push(KernelExpr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 0,
                    len: 1,
                    dreg: NFT_REG_1,
                });
                self.cmp(false, vec![t.number()]);
            }
            Expr::Port {
                protocol,
                dir,
                port,
            } => {
                self.l4proto(protocol.number());
                self.out.push(KernelExpr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: port_offset(*dir),
                    len: 2,
                    dreg: NFT_REG_1,
                });
                self.cmp(false, port.to_be_bytes().to_vec());
            }
            Expr::Lookup { key, op, set } => {
                self.load(key, key.len() > 1 && sets.concat_interval(set));
                self.out.push(KernelExpr::Lookup {
                    set: set.clone(),
                    set_id: sets.id(set),
                    dreg: None,
                    invert: *op == Op::Neq,
                });
            }
            Expr::Vmap { key, map } => {
                self.load(key, key.len() > 1 && sets.concat_interval(map));
                self.out.push(KernelExpr::Lookup {
                    set: map.clone(),
                    set_id: sets.id(map),
                    dreg: Some(NFT_REG_VERDICT),
                    invert: false,
                });
            }
            Expr::Limit { rate, per } => self.out.push(KernelExpr::Limit {
                rate: u64::from(*rate),
                unit: per.seconds(),
            }),
            Expr::Log { group, prefix } => self.out.push(KernelExpr::Log {
                group: *group,
                prefix: prefix.clone(),
            }),
            Expr::FibSourceNotViaInput => {
                self.out.push(KernelExpr::Fib {
                    result: NFT_FIB_RESULT_OIF,
                    flags: NFTA_FIB_F_SADDR | NFTA_FIB_F_IIF | NFTA_FIB_F_PRESENT,
                });
                // As `nft` encodes `missing`: a 32-bit register compared with zero.
                self.cmp(false, vec![0; 4]);
            }
            Expr::FibDaddrLocal => {
                self.out.push(KernelExpr::Fib {
                    result: NFT_FIB_RESULT_ADDRTYPE,
                    flags: NFTA_FIB_F_DADDR,
                });
                self.cmp(false, RTN_LOCAL.to_ne_bytes().to_vec());
            }
            Expr::CtDnat(op) => {
                self.out.push(KernelExpr::Ct { key: NFT_CT_STATUS });
                self.out.push(KernelExpr::And {
                    mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
                });
                // The bit set: `!= 0`; not set: `== 0`.
                self.cmp(*op == Op::Eq, vec![0; 4]);
            }
            Expr::Counter => self.out.push(KernelExpr::Counter),
            Expr::CounterRef(name) => self.out.push(KernelExpr::CounterRef(name.clone())),
            Expr::Masquerade => self.out.push(KernelExpr::Masq),
            Expr::DnatMap { family, key, map } => {
                self.family(*family);
                self.load(key, false);
                self.out.push(KernelExpr::Lookup {
                    set: map.clone(),
                    set_id: sets.id(map),
                    dreg: Some(NFT_REG_1),
                    invert: false,
                });
                // The map's value is `address . port`: the port follows the address.
                let (_, addr_len) = addr_location(*family, Dir::Destination);
                self.out.push(KernelExpr::Dnat {
                    family: nfproto(*family),
                    proto_reg: register(addr_len / 4),
                });
            }
            Expr::Verdict(v) => {
                let (code, chain) = verdict(v);
                self.out.push(KernelExpr::Verdict { code, chain });
            }
        }
    }
}

/// A verdict's code and, for a jump, its chain.
pub(super) fn verdict(v: &Verdict) -> (i32, Option<String>) {
    match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(chain) => (NFT_JUMP, Some(chain.clone())),
    }
}

fn ct_state_bit(state: CtState) -> u32 {
    match state {
        CtState::Invalid => NF_CT_STATE_INVALID,
        CtState::Established => NF_CT_STATE_ESTABLISHED,
        CtState::Related => NF_CT_STATE_RELATED,
        CtState::New => NF_CT_STATE_NEW,
        CtState::Untracked => NF_CT_STATE_UNTRACKED,
    }
}

/// `len` bytes whose first `bits` bits are set.
fn mask_bytes(len: usize, bits: u32) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let start = u32::try_from(i * 8).unwrap_or(u32::MAX);
            match bits.saturating_sub(start) {
                0 => 0,
                n if n >= 8 => 0xff,
                n => 0xffu8 << (8 - n),
            }
        })
        .collect()
}
