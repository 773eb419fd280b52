//! The model in `nft` syntax: what `nft -f` accepts to build the same table. Each rule,
//! chain comment and element reads exactly as `nft list table` prints the kernel's copy
//! (ranges as prefixes or single values where they are one, `ct state` in `nft`'s order),
//! except a [`Value::Prefix`] of one address, which keeps its `/32` or `/128` here (the
//! tables written so far pin that form; use [`Value::Addr`] for one address). The layout
//! differs: a set is one line here. A rule's text ([`Rule`]'s `Display`) is also how errors
//! and logs name it.

use std::fmt::{self, Display, Formatter, Write};

use sinew_core::Family;

use super::model::{
    BaseChain, Chain, ChainKind, CtState, DataType, Dir, Element, Expr, Field, Hook, Icmpv6Type,
    NamedPriority, Op, Policy, Priority, Range, Rule, Set, Table, TimeUnit, Value, Verdict,
};

/// The table as one `nft -f` transaction that replaces it: created empty if absent, deleted,
/// and declared again.
pub fn replace_script(t: &Table) -> String {
    format!(
        "table inet {name} {{}}\ndelete table inet {name}\n{}",
        table(t),
        name = t.name
    )
}

/// The table's declaration: `table inet NAME { ... }`, counters first, then sets, then
/// chains.
pub fn table(t: &Table) -> String {
    let mut s = format!("table inet {} {{\n", t.name);
    for counter in &t.counters {
        let _ = writeln!(s, "    counter {counter} {{ packets 0 bytes 0 }}");
    }
    for set in &t.sets {
        s += &self::set(set);
    }
    for chain in &t.chains {
        s += &self::chain(chain);
    }
    s += "}\n";
    s
}

/// `    set NAME { type T; flags interval; elements = { ... }; }` (or `map`), one line.
fn set(set: &Set) -> String {
    let mut ty = fields(&set.key);
    if let Some(data) = &set.data {
        ty = format!("{ty} : {}", fields(data));
    }
    let kind = if set.is_map() { "map" } else { "set" };
    let flags = if set.interval { " flags interval;" } else { "" };
    let elements = if set.elements.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = set.elements.iter().map(Element::to_string).collect();
        format!(" elements = {{ {} }};", list.join(", "))
    };
    format!(
        "    {kind} {} {{ type {ty};{flags}{elements} }}\n",
        set.name
    )
}

fn fields(types: &[DataType]) -> String {
    join(types, " . ")
}

fn join<T: Display>(items: &[T], sep: &str) -> String {
    let parts: Vec<String> = items.iter().map(T::to_string).collect();
    parts.join(sep)
}

fn chain(chain: &Chain) -> String {
    let mut s = format!("    chain {} {{\n", chain.name);
    if let Some(comment) = &chain.comment {
        let _ = writeln!(s, "        comment {}", quoted(comment));
    }
    if let Some(base) = &chain.hook {
        let _ = writeln!(s, "        {base}");
    }
    for rule in &chain.rules {
        let _ = writeln!(s, "        {rule}");
    }
    s += "    }\n";
    s
}

impl Display for BaseChain {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        };
        let hook = match self.hook {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        };
        let policy = match self.policy {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        };
        write!(
            f,
            "type {kind} hook {hook} priority {}; policy {policy};",
            self.priority
        )
    }
}

impl Display for Priority {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match *self {
            Priority::Number(n) => write!(f, "{n}"),
            Priority::Named(name, offset) => {
                let name = match name {
                    NamedPriority::Raw => "raw",
                    NamedPriority::DstNat => "dstnat",
                    NamedPriority::Filter => "filter",
                    NamedPriority::SrcNat => "srcnat",
                };
                match offset {
                    0 => f.write_str(name),
                    o if o < 0 => write!(f, "{name} - {}", o.unsigned_abs()),
                    o => write!(f, "{name} + {o}"),
                }
            }
        }
    }
}

impl Display for DataType {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::Ipv6Addr => "ipv6_addr",
            DataType::InetProto => "inet_proto",
            DataType::InetService => "inet_service",
            DataType::IfName => "ifname",
            DataType::Verdict => "verdict",
        })
    }
}

impl Display for Value {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Value::Prefix(p) => write!(f, "{p}"),
            Value::Addr(a) => write!(f, "{a}"),
            Value::Proto(p) => write!(f, "{p}"),
            Value::Port(p) => write!(f, "{p}"),
            Value::Range(r) => write!(f, "{r}"),
            Value::IfName(name) => f.write_str(&quoted(name)),
            Value::Verdict(v) => write!(f, "{v}"),
        }
    }
}

impl Display for Range {
    /// As `nft list` prints a range: one value when it holds one, a prefix when it is one,
    /// else `FIRST-LAST`.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match *self {
            Range::Port(first, last) if first == last => write!(f, "{first}"),
            Range::Port(first, last) => write!(f, "{first}-{last}"),
            Range::Addr(first, last) if first == last => write!(f, "{first}"),
            Range::Addr(first, last) => match prefix_len(first, last) {
                Some(len) => write!(f, "{first}/{len}"),
                None => write!(f, "{first}-{last}"),
            },
        }
    }
}

/// The length of the prefix whose addresses are exactly `first..=last`, if they are one.
fn prefix_len(first: std::net::IpAddr, last: std::net::IpAddr) -> Option<u8> {
    use std::net::IpAddr::{V4, V6};
    let (first, last, bits) = match (first, last) {
        (V4(a), V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (V6(a), V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return None,
    };
    let span = last.checked_sub(first)?;
    // `span` is the host part's mask when the range is a prefix: all ones, aligned.
    let host_bits = 128 - span.leading_zeros();
    let is_mask = span.checked_add(1).is_none_or(u128::is_power_of_two);
    if !is_mask || first & span != 0 {
        return None;
    }
    u8::try_from(bits - host_bits).ok()
}

/// A string as `nft` quotes it.
fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

impl Display for Element {
    /// `KEY` or `KEY : DATA`, the fields of each joined by ` . `, a comment after the key.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&join(&self.key, " . "))?;
        if let Some(comment) = &self.comment {
            write!(f, " comment {}", quoted(comment))?;
        }
        if !self.data.is_empty() {
            write!(f, " : {}", join(&self.data, " . "))?;
        }
        Ok(())
    }
}

impl Display for Rule {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&join(&self.exprs, " "))?;
        match &self.comment {
            Some(comment) => write!(f, " comment {}", quoted(comment)),
            None => Ok(()),
        }
    }
}

fn family_word(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn addr_word(dir: Dir) -> &'static str {
    match dir {
        Dir::Source => "saddr",
        Dir::Destination => "daddr",
    }
}

fn port_word(dir: Dir) -> &'static str {
    match dir {
        Dir::Source => "sport",
        Dir::Destination => "dport",
    }
}

fn op_word(op: Op) -> &'static str {
    match op {
        Op::Eq => "",
        Op::Neq => "!= ",
    }
}

impl Display for Field {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match *self {
            Field::L4Proto => f.write_str("meta l4proto"),
            Field::Addr(family, dir) => write!(f, "{} {}", family_word(family), addr_word(dir)),
            Field::ThPort(dir) => write!(f, "th {}", port_word(dir)),
            Field::IifName => f.write_str("iifname"),
            Field::OifName => f.write_str("oifname"),
        }
    }
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::NfProto(Family::V4) => f.write_str("meta nfproto ipv4"),
            Expr::NfProto(Family::V6) => f.write_str("meta nfproto ipv6"),
            Expr::IifName(name) => write!(f, "iifname {}", quoted(name)),
            Expr::OifName(name) => write!(f, "oifname {}", quoted(name)),
            Expr::CtState(states) => {
                let names: Vec<&str> = states.iter().map(|s| ct_state_word(*s)).collect();
                write!(f, "ct state {}", names.join(","))
            }
            Expr::Icmpv6Type(t) => f.write_str(match t {
                Icmpv6Type::NeighborSolicit => "icmpv6 type nd-neighbor-solicit",
                Icmpv6Type::NeighborAdvert => "icmpv6 type nd-neighbor-advert",
            }),
            Expr::Addr { dir, op, prefix } => {
                let field = Field::Addr(prefix.family(), *dir);
                let op = op_word(*op);
                if prefix.prefix_len() == prefix.family().bits() {
                    write!(f, "{field} {op}{}", prefix.network())
                } else {
                    write!(f, "{field} {op}{prefix}")
                }
            }
            Expr::Port {
                protocol,
                dir,
                port,
            } => write!(f, "{protocol} {} {port}", port_word(*dir)),
            Expr::Lookup { key, op, set } => {
                write!(f, "{} {}@{set}", join(key, " . "), op_word(*op))
            }
            Expr::FibSourceNotViaInput => f.write_str("fib saddr . iif oif missing"),
            Expr::FibDaddrLocal => f.write_str("fib daddr type local"),
            Expr::CtDnat(Op::Eq) => f.write_str("ct status dnat"),
            Expr::CtDnat(Op::Neq) => f.write_str("ct status & dnat == 0"),
            Expr::Counter => f.write_str("counter"),
            Expr::CounterRef(name) => write!(f, "counter name {}", quoted(name)),
            Expr::Masquerade => f.write_str("masquerade"),
            Expr::DnatMap { family, key, map } => write!(
                f,
                "dnat {} to {} map @{map}",
                family_word(*family),
                join(key, " . ")
            ),
            Expr::Vmap { key, map } => write!(f, "{} vmap @{map}", join(key, " . ")),
            Expr::Limit { rate, per } => {
                let per = match per {
                    TimeUnit::Second => "second",
                    TimeUnit::Minute => "minute",
                    TimeUnit::Hour => "hour",
                };
                write!(f, "limit rate {rate}/{per}")
            }
            Expr::Log {
                group,
                prefix: None,
            } => write!(f, "log group {group}"),
            Expr::Log {
                group,
                prefix: Some(prefix),
            } => write!(f, "log prefix {} group {group}", quoted(prefix)),
            Expr::Verdict(v) => write!(f, "{v}"),
        }
    }
}

fn ct_state_word(state: CtState) -> &'static str {
    match state {
        CtState::Invalid => "invalid",
        CtState::Established => "established",
        CtState::Related => "related",
        CtState::New => "new",
        CtState::Untracked => "untracked",
    }
}

impl Display for Verdict {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostport::Protocol;

    fn cidr(s: &str) -> sinew_core::Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn expressions_read_as_nft_writes_them() {
        let rule = Rule::new([
            Expr::NfProto(Family::V6),
            Expr::IifName("snw*".into()),
            Expr::not_in_set(Field::Addr(Family::V6, Dir::Source), "linklocal6"),
            Expr::FibSourceNotViaInput,
            Expr::Counter,
            Expr::Verdict(Verdict::Drop),
        ]);
        assert_eq!(
            rule.to_string(),
            "meta nfproto ipv6 iifname \"snw*\" ip6 saddr != @linklocal6 fib saddr . iif oif missing counter drop"
        );
        let hairpin = Rule::new([
            Expr::Lookup {
                key: vec![
                    Field::Addr(Family::V4, Dir::Source),
                    Field::Addr(Family::V4, Dir::Destination),
                ],
                op: Op::Eq,
                set: "hairpin4".into(),
            },
            Expr::Masquerade,
        ]);
        assert_eq!(
            hairpin.to_string(),
            "ip saddr . ip daddr @hairpin4 masquerade"
        );
        for (expr, text) in [
            (
                Expr::Addr {
                    dir: Dir::Destination,
                    op: Op::Eq,
                    prefix: cidr("::1/128"),
                },
                "ip6 daddr ::1",
            ),
            (
                Expr::Addr {
                    dir: Dir::Source,
                    op: Op::Neq,
                    prefix: cidr("127.0.0.0/8"),
                },
                "ip saddr != 127.0.0.0/8",
            ),
            (
                Expr::Port {
                    protocol: Protocol::Udp,
                    dir: Dir::Destination,
                    port: 4789,
                },
                "udp dport 4789",
            ),
            (Expr::CtDnat(Op::Neq), "ct status & dnat == 0"),
            (
                Expr::DnatMap {
                    family: Family::V6,
                    key: vec![Field::L4Proto, Field::ThPort(Dir::Destination)],
                    map: "hostports6any".into(),
                },
                "dnat ip6 to meta l4proto . th dport map @hostports6any",
            ),
            (Expr::jump("hostports"), "jump hostports"),
        ] {
            assert_eq!(expr.to_string(), text);
        }
    }

    #[test]
    fn priorities_are_named_with_their_offset() {
        let text = |p: Priority| p.to_string();
        assert_eq!(text(Priority::named(NamedPriority::SrcNat)), "srcnat");
        assert_eq!(
            text(Priority::Named(NamedPriority::Filter, -10)),
            "filter - 10"
        );
        assert_eq!(
            text(Priority::Named(NamedPriority::Filter, 5)),
            "filter + 5"
        );
        assert_eq!(text(Priority::Number(-100)), "-100");
        assert_eq!(Priority::Named(NamedPriority::Filter, -10).value(), -10);
        assert_eq!(Priority::named(NamedPriority::Raw).value(), -300);
    }

    #[test]
    fn a_table_is_its_counters_then_its_sets_then_its_chains() {
        let t = Table {
            name: "t".into(),
            counters: vec!["c".into()],
            sets: vec![
                Set::prefixes("a4", Family::V4, &[cidr("10.0.0.0/8"), cidr("10.1.0.0/16")]),
                Set::prefixes("a6", Family::V6, &[cidr("10.0.0.0/8")]),
                Set::map(
                    "m",
                    [DataType::InetProto, DataType::InetService],
                    [DataType::Ipv4Addr, DataType::InetService],
                )
                .with_elements([Element::mapping(
                    [Value::Proto(Protocol::Tcp), Value::Port(80)],
                    [Value::Addr("10.0.0.1".parse().unwrap()), Value::Port(8080)],
                )]),
            ],
            chains: vec![
                Chain::regular("r").with_rules([Rule::new([
                    Expr::CounterRef("c".into()),
                    Expr::Verdict(Verdict::Return),
                ])]),
                Chain::base(
                    "b",
                    ChainKind::Filter,
                    Hook::Input,
                    Priority::Named(NamedPriority::Filter, -10),
                    Policy::Accept,
                )
                .with_rules([Rule::new([Expr::jump("r")])]),
            ],
        };
        assert_eq!(
            replace_script(&t),
            "table inet t {}
delete table inet t
table inet t {
    counter c { packets 0 bytes 0 }
    set a4 { type ipv4_addr; flags interval; elements = { 10.0.0.0/8 }; }
    set a6 { type ipv6_addr; flags interval; }
    map m { type inet_proto . inet_service : ipv4_addr . inet_service; elements = { tcp . 80 : 10.0.0.1 . 8080 }; }
    chain r {
        counter name \"c\" return
    }
    chain b {
        type filter hook input priority filter - 10; policy accept;
        jump r
    }
}
"
        );
    }
}
