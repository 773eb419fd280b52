//! The policy vocabulary without a kernel: rules compile to the expressions `nft
//! --debug=netlink` shows for the same `nft` text (nftables 1.0.6), elements and sets encode
//! as `nft --debug=mnl` shows them, and the text reads as `nft list` prints it.

use std::collections::BTreeMap;

use sinew_core::Family;

use super::compile::{KernelExpr, SetInfo, compile};
use super::encode::{Attrs, Batch, KernelElement, kernel_elements, set_elements};
use super::policy_fixture::{golden, ip};
use super::socket::Messages;
use super::uapi::*;
use crate::hostport::Protocol;
use crate::nft::{
    CtState, DataType, Dir, Element, Expr, Field, Icmpv6Type, Op, Rule, Set, TimeUnit, Value,
    Verdict,
};

/// Sets as the golden table has them: the `ports` sets are concatenated interval sets.
struct PolicySets;

impl SetInfo for PolicySets {
    fn id(&self, set: &str) -> u32 {
        u32::try_from(set.len()).unwrap()
    }

    fn concat_interval(&self, set: &str) -> bool {
        set.contains("-ports")
    }
}

fn meta(key: u32, dreg: u32) -> KernelExpr {
    KernelExpr::Meta { key, dreg }
}

fn cmp(neq: bool, data: &[u8]) -> KernelExpr {
    KernelExpr::Cmp {
        neq,
        data: data.to_vec(),
    }
}

fn verdict(code: i32) -> KernelExpr {
    KernelExpr::Verdict { code, chain: None }
}

fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> KernelExpr {
    KernelExpr::Payload {
        base,
        offset,
        len,
        dreg,
    }
}

#[test]
fn policy_rules_are_the_expressions_nft_generates() {
    let rules = |chain: &str| {
        golden(true)
            .chains
            .into_iter()
            .find(|c| c.name == chain)
            .unwrap()
            .rules
    };
    let forward = rules("forward");
    // `ct state established,related accept`
    assert_eq!(
        compile(&forward[0], &PolicySets),
        [
            KernelExpr::Ct { key: NFT_CT_STATE },
            KernelExpr::And {
                mask: 6u32.to_ne_bytes().to_vec()
            },
            cmp(true, &[0; 4]),
            verdict(NF_ACCEPT),
        ]
    );
    // `oifname "snw*" oifname != @programmed counter name "dropped-held" drop`
    assert_eq!(
        compile(&forward[2], &PolicySets),
        [
            meta(NFT_META_OIFNAME, 1),
            cmp(false, b"snw"),
            meta(NFT_META_OIFNAME, 1),
            KernelExpr::Lookup {
                set: "programmed".into(),
                set_id: 10,
                dreg: None,
                invert: true,
            },
            KernelExpr::CounterRef("dropped-held".into()),
            verdict(NF_DROP),
        ]
    );
    // `oifname vmap @ingress-classes`: the verdict register is the lookup's destination
    assert_eq!(
        compile(&rules("ingress")[0], &PolicySets),
        [
            meta(NFT_META_OIFNAME, 1),
            KernelExpr::Lookup {
                set: "ingress-classes".into(),
                set_id: 15,
                dreg: Some(NFT_REG_VERDICT),
                invert: false,
            },
        ]
    );
    let class = rules("ingress-0");
    // `ip saddr . meta l4proto . th dport @ingress-0-ports4 return`: the protocol goes to
    // network order in a concatenated interval set's key
    assert_eq!(
        compile(&class[0], &PolicySets),
        [
            meta(NFT_META_NFPROTO, 1),
            cmp(false, &[2]),
            payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4, 1),
            meta(NFT_META_L4PROTO, 9),
            KernelExpr::Hton {
                reg: 9,
                size: 2,
                len: 1
            },
            payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, 10),
            KernelExpr::Lookup {
                set: "ingress-0-ports4".into(),
                set_id: 16,
                dreg: None,
                invert: false,
            },
            verdict(NFT_RETURN),
        ]
    );
    // the IPv6 one: the address takes reg 1 whole
    assert_eq!(
        compile(&class[2], &PolicySets)[2..6],
        [
            payload(NFT_PAYLOAD_NETWORK_HEADER, 8, 16, 1),
            meta(NFT_META_L4PROTO, 2),
            KernelExpr::Hton {
                reg: 2,
                size: 2,
                len: 1
            },
            payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, 13),
        ]
    );
    // `icmpv6 type nd-neighbor-advert accept`
    let advert = Rule::new([
        Expr::Icmpv6Type(Icmpv6Type::NeighborAdvert),
        Expr::Verdict(Verdict::Accept),
    ]);
    assert_eq!(
        compile(&advert, &PolicySets),
        [
            meta(NFT_META_NFPROTO, 1),
            cmp(false, &[10]),
            meta(NFT_META_L4PROTO, 1),
            cmp(false, &[58]),
            payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1, 1),
            cmp(false, &[136]),
            verdict(NF_ACCEPT),
        ]
    );
    // `limit rate 10/second log prefix "ingress-0 default/allow-web" group 1`
    assert_eq!(
        compile(&class[4], &PolicySets),
        [
            KernelExpr::Limit { rate: 10, unit: 1 },
            KernelExpr::Log {
                group: 1,
                prefix: Some("ingress-0 default/allow-web".into())
            }
        ]
    );
    // `counter name "dropped-ingress" drop`
    assert_eq!(
        compile(&class[5], &PolicySets),
        [
            KernelExpr::CounterRef("dropped-ingress".into()),
            verdict(NF_DROP)
        ]
    );
    // the same key in a set without intervals keeps the protocol as it is
    let plain = Rule::new([Expr::Lookup {
        key: vec![
            Field::Addr(Family::V4, Dir::Source),
            Field::L4Proto,
            Field::ThPort(Dir::Destination),
        ],
        op: Op::Eq,
        set: "plain".into(),
    }]);
    assert!(
        !compile(&plain, &PolicySets)
            .iter()
            .any(|e| matches!(e, KernelExpr::Hton { .. }))
    );
}

#[test]
fn policy_text_reads_as_nft_lists_it() {
    let range = |a: &str, b: &str| Value::addr_range(ip(a), ip(b)).to_string();
    assert_eq!(range("10.0.0.0", "10.0.0.255"), "10.0.0.0/24");
    assert_eq!(range("10.0.0.1", "10.0.0.1"), "10.0.0.1");
    assert_eq!(range("10.0.0.2", "10.0.0.3"), "10.0.0.2/31");
    assert_eq!(range("10.0.0.1", "10.0.0.2"), "10.0.0.1-10.0.0.2");
    assert_eq!(range("10.0.0.0", "10.0.0.2"), "10.0.0.0-10.0.0.2");
    assert_eq!(range("0.0.0.0", "255.255.255.255"), "0.0.0.0/0");
    assert_eq!(
        range("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        "::/0"
    );
    assert_eq!(range("fd00::", "fd00::ffff"), "fd00::/112");
    assert_eq!(range("fd00::1", "fd00::ffff"), "fd00::1-fd00::ffff");
    assert_eq!(Value::port_range(80, 80).to_string(), "80");
    assert_eq!(Value::port_range(0, 65535).to_string(), "0-65535");
    let element = Element::mapping([Value::IfName("snw0a1b".into())], [Value::jump("c1")])
        .with_comment("default/web-1");
    assert_eq!(
        element.to_string(),
        "\"snw0a1b\" comment \"default/web-1\" : jump c1"
    );
    for (expr, text) in [
        (
            Expr::ct_state([CtState::Related, CtState::Established]),
            "ct state established,related",
        ),
        (Expr::ct_state([CtState::New]), "ct state new"),
        (Expr::OifName("snw*".into()), "oifname \"snw*\""),
        (
            Expr::vmap(Field::IifName, "egress-classes"),
            "iifname vmap @egress-classes",
        ),
        (
            Expr::Limit {
                rate: 3,
                per: TimeUnit::Minute,
            },
            "limit rate 3/minute",
        ),
        (
            Expr::Log {
                group: 7,
                prefix: None,
            },
            "log group 7",
        ),
        (
            Expr::Log {
                group: 7,
                prefix: Some("c1 a/b".into()),
            },
            "log prefix \"c1 a/b\" group 7",
        ),
        (
            Expr::Icmpv6Type(Icmpv6Type::NeighborSolicit),
            "icmpv6 type nd-neighbor-solicit",
        ),
    ] {
        assert_eq!(expr.to_string(), text);
    }
    let rule = Rule::new([Expr::Verdict(Verdict::Drop)]).with_comment("why");
    assert_eq!(rule.to_string(), "drop comment \"why\"");
    // comments are cut to what `nft` accepts, at a character boundary, without `"`
    let long = Rule::new([]).with_comment(format!("a\"b{}", "é".repeat(100)));
    let comment = long.comment.unwrap();
    assert_eq!(comment.len(), 128 - 1, "{comment}");
    assert!(comment.starts_with("a'bé"));
}

#[test]
fn policy_elements_encode_as_nft_sends_them() {
    let ports = Set::new(
        "p4",
        [
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
    )
    .interval()
    .with_elements([Element::key([
        Value::addr_range(ip("10.0.0.0"), ip("10.0.0.255")),
        Value::Proto(Protocol::Tcp),
        Value::port_range(80, 90),
    ])
    .with_comment("allow-web")]);
    let got = kernel_elements(&ports);
    assert_eq!(got.len(), 1);
    #[rustfmt::skip]
    assert_eq!(
        (got[0].key.as_slice(), got[0].key_end.as_deref()),
        (
            &[10, 0, 0, 0, 6, 0, 0, 0, 0, 80, 0, 0][..],
            Some(&[10, 0, 0, 255, 6, 0, 0, 0, 0, 90, 0, 0][..])
        ),
        "start and end of each field, each in a word"
    );
    let mut buf = Vec::new();
    got[0].encode(&mut Attrs { buf: &mut buf }, true);
    assert!(
        buf.windows(12).any(|w| w == b"\x00\x0aallow-web\x00"),
        "the comment TLV nft writes: {buf:?}"
    );

    // one field: a leading end at zero, each range a start and an end after it, a range
    // reaching the top open
    let any = Set::new("a4", [DataType::Ipv4Addr])
        .interval()
        .with_elements([
            Element::key([Value::addr_range(ip("10.2.0.0"), ip("10.2.0.9"))]).with_comment("c"),
            Element::key([Value::Addr(ip("10.3.0.1"))]),
            Element::key([Value::addr_range(ip("255.0.0.0"), ip("255.255.255.255"))]),
        ]);
    let bounds: Vec<(Vec<u8>, bool, bool)> = kernel_elements(&any)
        .into_iter()
        .map(|e| (e.key, e.end, e.open))
        .collect();
    assert_eq!(
        bounds,
        [
            (vec![0, 0, 0, 0], true, false),
            (vec![10, 2, 0, 0], false, false),
            (vec![10, 2, 0, 10], true, false),
            (vec![10, 3, 0, 1], false, false),
            (vec![10, 3, 0, 2], true, false),
            (vec![255, 0, 0, 0], false, true),
        ]
    );
    // a change names the ranges alone, without the leading end
    let removed = set_elements(&any, &any.elements[..1]);
    assert_eq!(removed.len(), 2);
    assert_eq!(removed[0].comment.as_deref(), Some("c"));
    // ports too
    let service = Set::new("s", [DataType::InetService])
        .interval()
        .with_elements([Element::key([Value::port_range(443, 500)])]);
    let keys: Vec<Vec<u8>> = kernel_elements(&service)
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, [vec![0, 0], vec![1, 0xbb], vec![1, 0xf5]]);

    // a verdict map's element: the name NUL-padded, the verdict nested
    let vmap = KernelElement::of(&Element::mapping(
        [Value::IfName("snw0a1b".into())],
        [Value::jump("c1")],
    ));
    assert_eq!(vmap.key, b"snw0a1b\0\0\0\0\0\0\0\0\0");
    assert_eq!(vmap.verdict, Some((NFT_JUMP, Some("c1".into()))));
    assert_eq!(vmap.data, None);
}

#[test]
fn policy_sets_are_declared_as_nft_declares_them() {
    let table = golden(false);
    let mut batch = Batch::new(1);
    batch.table(&table);
    let (bytes, ops, _, _) = batch.finish();
    let by_op: BTreeMap<&str, &[u8]> = Messages::new(&bytes)
        .filter_map(|m| Some((ops.get(&m.seq)?.as_str(), m.payload)))
        .collect();
    let attrs = |op: &str| {
        let payload = by_op[op];
        super::attributes(&payload[4..])
            .map(|(t, v)| (t, v.to_vec()))
            .collect::<BTreeMap<u16, Vec<u8>>>()
    };
    let ports = attrs("add set inet sinew-policy ingress-0-ports4");
    assert_eq!(
        ports[&NFTA_SET_FLAGS],
        0x84u32.to_be_bytes(),
        "interval, concat"
    );
    assert_eq!(ports[&NFTA_SET_KEY_TYPE], 0x730du32.to_be_bytes());
    assert_eq!(ports[&NFTA_SET_KEY_LEN], 12u32.to_be_bytes());
    // NFTA_SET_DESC { NFTA_SET_DESC_CONCAT { { 4 } { 1 } { 2 } } }
    let concat = super::attribute(&ports[&NFTA_SET_DESC], NFTA_SET_DESC_CONCAT).unwrap();
    let lens: Vec<Vec<u8>> = super::attributes(concat)
        .map(|(_, f)| super::attribute(f, NFTA_SET_FIELD_LEN).unwrap().to_vec())
        .collect();
    assert_eq!(
        lens,
        [4u32, 1, 2].map(|l| l.to_be_bytes().to_vec()),
        "the length of each field"
    );
    let vmap = attrs("add map inet sinew-policy ingress-classes");
    assert_eq!(vmap[&NFTA_SET_FLAGS], 8u32.to_be_bytes());
    assert_eq!(vmap[&NFTA_SET_KEY_TYPE], 41u32.to_be_bytes(), "ifname");
    assert_eq!(vmap[&NFTA_SET_KEY_LEN], 16u32.to_be_bytes());
    assert_eq!(vmap[&NFTA_SET_DATA_TYPE], 0xffff_ff00u32.to_be_bytes());
    #[cfg(target_endian = "little")]
    assert_eq!(
        vmap[&NFTA_SET_USERDATA],
        [0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0],
        "what nft 1.0.6 writes"
    );
    let chain = attrs("add chain inet sinew-policy ingress-0");
    let comment = b"pods default/web-1; policies default/allow-web";
    let mut want = vec![0, u8::try_from(comment.len() + 1).unwrap()];
    want.extend_from_slice(comment);
    want.push(0);
    assert_eq!(chain[&NFTA_CHAIN_USERDATA], want);
}
