//! The encoder against the kernel's layout and `nft`'s encoding, and tables replaced in
//! throwaway namespaces. sinew's own table is tested where it is declared (the agent's
//! `nat` module).

use std::net::{IpAddr, Ipv6Addr};

use sinew_core::{Cidr, Family};

use super::compile::{KernelExpr, compile};
use super::encode::{Attrs, Batch, KernelElement, encode_expr, type_id};
use super::socket::{Message, Messages};
use super::uapi::*;
use super::*;
use crate::hostport::{self, HostPort, Protocol};
use crate::netns::NetNs;
use crate::netns::test_support::{have_root, new_netns};
use crate::nft::golden::{have_nft, nft};
use crate::nft::{
    Chain, ChainKind, DataType, Dir, Expr, Field, Hook, NamedPriority, Op, Policy, Priority, Rule,
    Set, Verdict,
};

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn saddr(f: Family) -> Field {
    Field::Addr(f, Dir::Source)
}

fn daddr(f: Family) -> Field {
    Field::Addr(f, Dir::Destination)
}

/// `payload load LEN @ network header + OFFSET => reg DREG`.
fn net(offset: u32, len: u32, dreg: u32) -> KernelExpr {
    KernelExpr::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
        dreg,
    }
}

fn cmp_eq(data: &[u8]) -> KernelExpr {
    KernelExpr::Cmp {
        neq: false,
        data: data.to_vec(),
    }
}

fn meta(key: u32) -> KernelExpr {
    KernelExpr::Meta { key, dreg: 1 }
}

fn lookup(set: &str, set_id: u32, invert: bool) -> KernelExpr {
    KernelExpr::Lookup {
        set: set.to_string(),
        set_id,
        dreg: None,
        invert,
    }
}

fn ids(name: &str) -> u32 {
    match name {
        "nat4" => 3,
        "pods4" => 1,
        "nodes6" => 6,
        "hostports4any" => 12,
        "hostports6" => 13,
        "hairpin4" => 15,
        _ => 0,
    }
}

/// `ip saddr != @nodesN udp dport PORT counter drop`, as the agent declares it.
fn vxlan_rule(f: Family, set: &str, port: u16) -> Rule {
    Rule::new([
        Expr::not_in_set(saddr(f), set),
        Expr::Port {
            protocol: Protocol::Udp,
            dir: Dir::Destination,
            port,
        },
        Expr::Counter,
        Expr::Verdict(Verdict::Drop),
    ])
}

/// `ip saddr @natN ip daddr != @podsN masquerade`.
fn masquerade_rule(f: Family, nat: &str, pods: &str) -> Rule {
    Rule::new([
        Expr::in_set(saddr(f), nat),
        Expr::not_in_set(daddr(f), pods),
        Expr::Masquerade,
    ])
}

/// `meta nfproto F dnat F to meta l4proto . [daddr .] th dport map @MAP`.
fn dnat_rule(f: Family, map: &str, on_address: bool) -> Rule {
    let mut key = vec![Field::L4Proto];
    key.extend(on_address.then_some(daddr(f)));
    key.push(Field::ThPort(Dir::Destination));
    Rule::new([
        Expr::NfProto(f),
        Expr::DnatMap {
            family: f,
            key,
            map: map.into(),
        },
    ])
}

#[cfg(target_endian = "little")]
#[test]
fn expressions_encode_to_the_kernel_layout() {
    let mut buf = Vec::new();
    encode_expr(&mut Attrs { buf: &mut buf }, &cmp_eq(&[17]));
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
    let drop = KernelExpr::Verdict {
        code: NF_DROP,
        chain: None,
    };
    encode_expr(&mut Attrs { buf: &mut buf }, &drop);
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
    assert_eq!(
        compile(&vxlan_rule(Family::V6, "nodes6", 4789), &ids),
        vec![
            meta(15),
            cmp_eq(&[10]),
            net(8, 16, 1),
            lookup("nodes6", 6, true),
            meta(16),
            cmp_eq(&[17]),
            KernelExpr::Payload {
                base: 2,
                offset: 2,
                len: 2,
                dreg: 1
            },
            cmp_eq(&[0x12, 0xb5]),
            KernelExpr::Counter,
            KernelExpr::Verdict {
                code: 0,
                chain: None
            },
        ]
    );
    let rule = compile(&masquerade_rule(Family::V4, "nat4", "pods4"), &ids);
    assert_eq!(rule[..2], [meta(15), cmp_eq(&[2])]);
    assert_eq!(
        rule[2..5],
        [net(12, 4, 1), lookup("nat4", 3, false), net(16, 4, 1)]
    );
    assert_eq!(rule[5], lookup("pods4", 1, true));
    assert_eq!(rule[6], KernelExpr::Masq);
    assert_eq!(rule.len(), 7, "the family is checked once");
}

#[test]
fn anti_spoofing_and_loopback_rules_are_the_expressions_nft_generates() {
    // `meta nfproto ipv6 iifname "snw*" ip6 saddr != @linklocal6 fib saddr . iif oif missing
    // counter drop`
    let spoofed = Rule::new([
        Expr::NfProto(Family::V6),
        Expr::IifName("snw*".into()),
        Expr::not_in_set(saddr(Family::V6), "linklocal6"),
        Expr::FibSourceNotViaInput,
        Expr::Counter,
        Expr::Verdict(Verdict::Drop),
    ]);
    let got = compile(&spoofed, &|_: &str| 7);
    assert_eq!(
        got[..6],
        [
            meta(15),
            cmp_eq(&[10]),
            meta(6),
            cmp_eq(b"snw"),
            net(8, 16, 1),
            lookup("linklocal6", 7, true),
        ]
    );
    assert_eq!(
        got[6..8],
        [
            KernelExpr::Fib {
                result: 1,
                flags: 1 | 8 | 32
            },
            cmp_eq(&[0; 4]),
        ]
    );
    // `iifname "snw*" ip daddr 127.0.0.0/8 ct status & dnat == 0 counter drop`: the family
    // check comes before the address, the /8 compares one byte.
    let guard = Rule::new([
        Expr::IifName("snw*".into()),
        Expr::Addr {
            dir: Dir::Destination,
            op: Op::Eq,
            prefix: cidr("127.0.0.0/8"),
        },
        Expr::CtDnat(Op::Neq),
    ]);
    assert_eq!(
        compile(&guard, &ids),
        vec![
            meta(6),
            cmp_eq(b"snw"),
            meta(15),
            cmp_eq(&[2]),
            net(16, 1, 1),
            cmp_eq(&[127]),
            KernelExpr::Ct { key: 2 },
            KernelExpr::And {
                mask: (1u32 << 5).to_ne_bytes().to_vec()
            },
            cmp_eq(&[0; 4]),
        ]
    );
    // a prefix that is not whole bytes is masked; a whole interface name is NUL-padded
    let other = Rule::new([
        Expr::IifName("eth0".into()),
        Expr::Addr {
            dir: Dir::Source,
            op: Op::Neq,
            prefix: cidr("10.0.0.0/9"),
        },
    ]);
    let got = compile(&other, &ids);
    let mut eth0 = b"eth0".to_vec();
    eth0.resize(16, 0);
    assert_eq!(got[1], cmp_eq(&eth0));
    assert_eq!(
        got[4..],
        [
            net(12, 4, 1),
            KernelExpr::And {
                mask: vec![255, 128, 0, 0]
            },
            KernelExpr::Cmp {
                neq: true,
                data: vec![10, 0, 0, 0]
            },
        ]
    );
}

#[test]
fn host_port_rules_are_the_expressions_nft_generates() {
    // `nft --debug=netlink` for `meta nfproto ipv6 dnat ip6 to meta l4proto . ip6 daddr .
    // th dport map @hostports6`
    assert_eq!(
        compile(&dnat_rule(Family::V6, "hostports6", true), &ids),
        vec![
            meta(15),
            cmp_eq(&[10]),
            meta(16),
            net(24, 16, 9),
            KernelExpr::Payload {
                base: 2,
                offset: 2,
                len: 2,
                dreg: 13
            },
            KernelExpr::Lookup {
                set: "hostports6".into(),
                set_id: 13,
                dreg: Some(1),
                invert: false,
            },
            KernelExpr::Dnat {
                family: 10,
                proto_reg: 2
            },
        ]
    );
    // ... `dnat ip to meta l4proto . th dport map @hostports4any`
    assert_eq!(
        compile(&dnat_rule(Family::V4, "hostports4any", false), &ids)[2..],
        [
            meta(16),
            KernelExpr::Payload {
                base: 2,
                offset: 2,
                len: 2,
                dreg: 9
            },
            KernelExpr::Lookup {
                set: "hostports4any".into(),
                set_id: 12,
                dreg: Some(1),
                invert: false,
            },
            KernelExpr::Dnat {
                family: 2,
                proto_reg: 9
            },
        ]
    );
    // `ip saddr . ip daddr @hairpin4 masquerade`
    let hairpin = Rule::new([
        Expr::Lookup {
            key: vec![saddr(Family::V4), daddr(Family::V4)],
            op: Op::Eq,
            set: "hairpin4".into(),
        },
        Expr::Masquerade,
    ]);
    assert_eq!(
        compile(&hairpin, &ids)[2..],
        [
            net(12, 4, 1),
            net(16, 4, 9),
            lookup("hairpin4", 15, false),
            KernelExpr::Masq,
        ]
    );
    // `fib daddr type local jump hostports`
    let jump = compile(
        &Rule::new([Expr::FibDaddrLocal, Expr::jump("hostports")]),
        &ids,
    );
    assert_eq!(
        jump[..2],
        [
            KernelExpr::Fib {
                result: 3,
                flags: 2
            },
            cmp_eq(&2u32.to_ne_bytes()),
        ]
    );
    let mut buf = Vec::new();
    encode_expr(&mut Attrs { buf: &mut buf }, &jump[2]);
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

/// The conformance spec's three pods on one port (127.0.0.1/TCP, node IP/TCP, node IP/UDP)
/// and a dual-stack pod on every local address.
fn host_ports() -> Vec<HostPort> {
    use crate::hostport::PortMapping;
    let m = |host_port, protocol, host_ip: Option<&str>| PortMapping {
        host_port,
        container_port: 8080,
        protocol,
        host_ip: host_ip.map(ip),
    };
    let mut v = hostport::host_ports(
        &[m(54323, Protocol::Tcp, Some("127.0.0.1"))],
        [ip("10.244.1.5")],
    );
    v.extend(hostport::host_ports(
        &[m(54323, Protocol::Tcp, Some("192.168.10.11"))],
        [ip("10.244.1.6")],
    ));
    v.extend(hostport::host_ports(
        &[m(54323, Protocol::Udp, Some("192.168.10.11"))],
        [ip("10.244.1.7")],
    ));
    v.extend(hostport::host_ports(
        &[
            m(80, Protocol::Tcp, None),
            m(5000, Protocol::Sctp, Some("fd00:99::13")),
        ],
        [ip("10.244.1.8"), ip("fd00:10:244::8")],
    ));
    v.sort();
    v
}

#[test]
fn host_port_elements_are_padded_concatenations() {
    let ports = host_ports();
    let loopback = ports
        .iter()
        .find(|p| p.host_ip == Some(ip("127.0.0.1")))
        .unwrap();
    let (map, element) = hostport::map_element(loopback);
    assert_eq!(map, hostport::MAP4);
    let tcp_on_loopback = KernelElement::of(&element);
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
    let (map, v6_any) = ports
        .iter()
        .find(|p| p.pod_ip.is_ipv6() && p.host_ip.is_none())
        .map(hostport::map_element)
        .unwrap();
    assert_eq!(map, hostport::MAP6_ANY);
    let v6_any = KernelElement::of(&v6_any);
    assert_eq!(v6_any.key, [6, 0, 0, 0, 0, 80, 0, 0]);
    assert_eq!(v6_any.data.as_ref().map(Vec::len), Some(20));
    let elements = hostport::elements(&ports);
    assert_eq!(
        elements
            .iter()
            .filter(|(s, _)| *s == hostport::HAIRPIN4)
            .count(),
        4,
        "one hairpin per pod address, however many ports it has"
    );
    let (set, hairpin) = hostport::hairpin_element(ip("fd00::1"));
    let hairpin = KernelElement::of(&hairpin);
    assert_eq!(
        (set, hairpin.key.len(), hairpin.data),
        (hostport::HAIRPIN6, 32, None)
    );
    assert_eq!(
        type_id(&[
            DataType::InetProto,
            DataType::Ipv4Addr,
            DataType::InetService
        ]),
        0xc1cd,
        "what nft sends for the concatenation"
    );
    assert_eq!(type_id(&[DataType::Ipv4Addr, DataType::InetService]), 0x1cd);
}

#[test]
fn element_replies_decode_to_their_data() {
    let (set, e) = hostport::map_element(&host_ports()[1]);
    let e = KernelElement::of(&e);
    let mut msg = vec![1, 0, 0, 0]; // nfgenmsg
    let mut a = Attrs { buf: &mut msg };
    a.str(NFTA_SET_ELEM_LIST_TABLE, "sinew");
    a.str(NFTA_SET_ELEM_LIST_SET, set);
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

/// A table shaped like sinew's first three chains: interval sets of both families, a NAT
/// chain and a filter chain.
fn sample(pods: &[Cidr], nat: &[Cidr], nodes: &[IpAddr], port: u16) -> Table {
    let nodes: Vec<Cidr> = nodes.iter().map(|a| Cidr::host(*a)).collect();
    let mut sets = Vec::new();
    for (base, members) in [("pods", pods), ("nat", nat), ("nodes", &nodes)] {
        sets.push(Set::prefixes(&format!("{base}4"), Family::V4, members));
        sets.push(Set::prefixes(&format!("{base}6"), Family::V6, members));
    }
    Table {
        name: "sinew".into(),
        counters: Vec::new(),
        sets,
        chains: vec![
            Chain::base(
                "postrouting",
                ChainKind::Nat,
                Hook::Postrouting,
                Priority::named(NamedPriority::SrcNat),
                Policy::Accept,
            )
            .with_rules([
                masquerade_rule(Family::V4, "nat4", "pods4"),
                masquerade_rule(Family::V6, "nat6", "pods6"),
            ]),
            Chain::base(
                "vxlan-from-nodes-only",
                ChainKind::Filter,
                Hook::Input,
                Priority::Named(NamedPriority::Filter, -10),
                Policy::Accept,
            )
            .with_rules([
                vxlan_rule(Family::V4, "nodes4", port),
                vxlan_rule(Family::V6, "nodes6", port),
            ]),
        ],
    }
}

/// Two IPv4 pools (one with natOutgoing), one IPv6 pool with natOutgoing, three nodes.
fn realistic(port: u16) -> Table {
    sample(
        &[
            cidr("10.244.0.0/16"),
            cidr("10.245.0.0/16"),
            cidr("fd00:10:244::/56"),
        ],
        &[cidr("10.244.0.0/16"), cidr("fd00:10:244::/56")],
        &[ip("192.168.10.11"), ip("192.168.10.12"), ip("fd00:99::13")],
        port,
    )
}

#[test]
fn a_batch_is_framed_and_every_message_asks_for_an_ack() {
    let mut batch = Batch::new(100);
    batch.delete_table("sinew");
    let no_nat6 = sample(
        &[cidr("10.244.0.0/16"), cidr("fd00:10:244::/56")],
        &[cidr("10.244.0.0/16")],
        &[ip("192.168.10.11")],
        4789,
    );
    batch.table(&no_nat6);
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
    let rules = names.iter().filter(|n| n.starts_with("add rule")).count();
    assert_eq!(rules, 4);
    let last_chain = names
        .iter()
        .rposition(|n| n.starts_with("add chain"))
        .unwrap();
    let first_rule = names
        .iter()
        .position(|n| n.starts_with("add rule"))
        .unwrap();
    assert!(last_chain < first_rule, "chains before rules: {names:?}");
    assert!(names.contains(
        &"add rule inet sinew vxlan-from-nodes-only ip6 saddr != @nodes6 udp dport 4789 counter drop"
    ));
}

#[test]
fn large_sets_are_split_across_messages() {
    let nodes: Vec<IpAddr> = (0..3000u32)
        .map(|i| IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i) << 16)))
        .collect();
    let mut batch = Batch::new(1);
    batch.table(&sample(&[], &[], &nodes, 4789));
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

fn listing(ns: &NetNs) -> String {
    nft(ns, &["list", "table", "inet", "sinew"])
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
    assert!(!nl.table_exists("sinew").unwrap());
    nl.replace_table(&realistic(4789)).unwrap();
    assert!(nl.table_exists("sinew").unwrap());
    let got = listing(&ns);
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
    // someone else's table is left alone
    nft(&ns, &["add", "table", "ip", "other"]);

    // changed pools, port and nodes: the new table replaces the old one
    let changed = sample(
        &[cidr("10.50.0.0/16"), cidr("0.0.0.0/0")],
        &[cidr("10.50.0.0/16")],
        &[ip("255.255.255.255")],
        8472,
    );
    nl.replace_table(&changed).unwrap();
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
    let mut refused = realistic(4789);
    refused.chains[0].rules.push(Rule::new([
        Expr::in_set(saddr(Family::V4), "missing"),
        Expr::Masquerade,
    ]));
    let err = nl.replace_table(&refused).unwrap_err();
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
    let rest = nft(&ns, &["list", "ruleset"]);
    assert!(rest.contains("table ip other"), "{rest}");
    assert!(!rest.contains("sinew"), "{rest}");
}
