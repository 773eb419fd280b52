//! Incremental updates against the kernel: a table programmed whole, then changed by the
//! batch of [`crate::nft::diff`], lists exactly as the new table programmed whole, each in a
//! throwaway namespace, for the shapes a policy table goes through, both ways.

use super::Nftables;
use super::policy_fixture::{
    MEMBERS, TABLE, golden, ip, other_ingress, table, web_egress, web_ingress,
};
use super::policy_tests::elements_in;
use crate::netns::NetNs;
use crate::netns::test_support::{have_root, new_netns};
use crate::nft::golden::{have_nft, listing, nft};
use crate::nft::{Element, Set, Table, Value};

fn set_mut<'a>(t: &'a mut Table, name: &str) -> &'a mut Set {
    t.sets.iter_mut().find(|s| s.name == name).unwrap()
}

/// The handle `nft` shows for object `kind` (`set`, `chain`) named `name` in the JSON
/// listing: the same handle means the same kernel object, not a rebuilt one.
fn handle(ns: &NetNs, kind: &str, name: &str) -> u64 {
    let json = nft(ns, &["-j", "list", "table", "inet", TABLE]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| {
            let o = o.get(kind)?;
            (o["name"] == name).then(|| o["handle"].as_u64().unwrap())
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// A listing with its objects, and each set's elements, in a canonical order: the kernel
/// lists chains and sets in the order they were created, and the elements of a concatenated
/// interval set in the order they were added, which an update cannot keep (a chain added
/// comes last) and which says nothing about what the table does.
fn unordered((text, mut json): (String, serde_json::Value)) -> (Vec<String>, Vec<String>) {
    fn sort_elements(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(elements)) = map.get_mut("elem") {
                    elements.sort_by_key(ToString::to_string);
                }
                map.values_mut().for_each(sort_elements);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(sort_elements),
            _ => {}
        }
    }
    let body = text
        .split_once(" {\n")
        .and_then(|(_, b)| b.strip_suffix("}\n"))
        .unwrap_or_default();
    let mut blocks: Vec<String> = body
        .split("\n\n")
        .map(|b| match b.find("elements = {") {
            Some(at) => format!("{} {:?}", &b[..at], elements_in(b)),
            None => b.trim().to_string(),
        })
        .collect();
    blocks.sort();
    sort_elements(&mut json);
    let mut objects: Vec<String> = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    objects.sort();
    (blocks, objects)
}

/// The shapes: `(what, from, to)`.
fn shapes() -> Vec<(&'static str, Table, Table)> {
    let mut elements = golden(false);
    set_mut(&mut elements, "programmed")
        .elements
        .push(Element::key([Value::IfName("snwe".into())]));
    let any4 = set_mut(&mut elements, "ingress-0-any4");
    any4.elements.remove(1);
    // a range at the bottom of the space, one at its top, one touching another
    any4.elements.extend([
        Element::key([Value::addr_range(ip("0.0.0.0"), ip("0.255.255.255"))]),
        Element::key([Value::addr_range(
            ip("255.255.255.0"),
            ip("255.255.255.255"),
        )]),
        Element::key([Value::addr_range(
            ip("192.168.50.100"),
            ip("192.168.50.103"),
        )])
        .with_comment("touching"),
    ]);
    set_mut(&mut elements, "egress-0-any4").elements[0].comment =
        Some("kube-system/coredns".into());
    set_mut(&mut elements, "ingress-0-ports4").elements[0].comment = Some("renamed".into());
    set_mut(&mut elements, "ingress-0-ports4")
        .elements
        .push(super::policy_fixture::ports(
            Value::addr_range(ip("10.0.2.0"), ip("10.0.2.9")),
            crate::hostport::Protocol::Sctp,
            Value::port_range(1, 65535),
            "sctp",
        ));
    set_mut(&mut elements, "ingress-0-any6")
        .elements
        .push(Element::key([Value::addr_range(ip("::"), ip("::ffff"))]));

    let with_class = |class: Option<&'static str>| {
        [
            MEMBERS[0],
            MEMBERS[1],
            ("snwc", "default/other-1", class, None),
            MEMBERS[3],
        ]
    };
    let two_classes = table(
        &[web_ingress(), web_egress(), other_ingress()],
        &with_class(Some("ingress-1")),
        false,
    );
    let moved = |class| {
        [
            ("snwa", "default/web-1", Some(class), Some("egress-0")),
            MEMBERS[1],
            MEMBERS[2],
            MEMBERS[3],
        ]
    };
    let web_in_0 = table(&[web_ingress(), web_egress()], &moved("ingress-0"), false);
    let web_in_1 = table(&[other_ingress(), web_egress()], &moved("ingress-1"), true);
    let mut renamed = golden(false);
    for chain in renamed.chains.iter_mut() {
        if chain.name == "ingress-0" || chain.name == "ingress" {
            chain.comment = Some(format!("{} again", chain.name));
        }
    }
    let mut retyped = golden(false);
    let any4 = set_mut(&mut retyped, "egress-0-any4");
    any4.interval = false;
    any4.elements = vec![Element::key([Value::Addr(ip("10.96.0.10"))])];
    vec![
        ("elements only", golden(false), elements),
        ("a class chain added", golden(false), two_classes),
        ("a vmap entry moved between chains", web_in_0, web_in_1),
        ("the drop log turned on", golden(false), golden(true)),
        ("chain comments changed", golden(false), renamed),
        ("a set's type changed", golden(false), retyped),
    ]
}

#[test]
fn an_update_leaves_the_table_a_fresh_copy_would_be() {
    let test = "an_update_leaves_the_table_a_fresh_copy_would_be";
    if !have_root(test) || !have_nft(test) {
        return;
    }
    for (what, a, b) in shapes() {
        for (from, to, way) in [(&a, &b, "there"), (&b, &a, "back")] {
            let updated = new_netns();
            let mut nl = Nftables::in_netns(&updated).unwrap();
            nl.replace_table(from).unwrap();
            let programmed = handle(&updated, "set", "programmed");
            let forward = handle(&updated, "chain", "forward");
            nl.update_table(from, to)
                .unwrap_or_else(|e| panic!("{what} ({way}): {e}"));
            let fresh = new_netns();
            Nftables::in_netns(&fresh)
                .unwrap()
                .replace_table(to)
                .unwrap();
            let (got, want) = (
                unordered(listing(&updated, TABLE)),
                unordered(listing(&fresh, TABLE)),
            );
            assert_eq!(got.0, want.0, "{what} ({way})");
            assert_eq!(got.1, want.1, "{what} ({way})");
            assert!(got.0.len() > 10, "{:?}", got.0);
            assert_eq!(
                (
                    handle(&updated, "set", "programmed"),
                    handle(&updated, "chain", "forward")
                ),
                (programmed, forward),
                "{what} ({way}): the table was changed in place, not rebuilt"
            );
            // and nothing is left to do
            nl.update_table(to, to).unwrap();
            assert_eq!(unordered(listing(&updated, TABLE)), got);
        }
    }
}

#[test]
fn a_refused_update_changes_nothing() {
    let test = "a_refused_update_changes_nothing";
    if !have_root(test) || !have_nft(test) {
        return;
    }
    let ns = new_netns();
    let mut nl = Nftables::in_netns(&ns).unwrap();
    let old = golden(false);
    nl.replace_table(&old).unwrap();
    let before = listing(&ns, TABLE);
    // overlapping ranges: the kernel refuses the second, and with it the whole batch
    let mut bad = golden(false);
    let any4 = set_mut(&mut bad, "ingress-0-any4");
    any4.elements.extend([
        Element::key([Value::addr_range(ip("10.9.0.0"), ip("10.9.0.9"))]),
        Element::key([Value::addr_range(ip("10.9.0.5"), ip("10.9.0.20"))]),
    ]);
    set_mut(&mut bad, "programmed")
        .elements
        .push(Element::key([Value::IfName("snwe".into())]));
    let err = nl.update_table(&old, &bad).unwrap_err();
    assert!(
        err.to_string()
            .contains("add elements to set inet sinew-policy ingress-0-any4"),
        "{err}"
    );
    assert_eq!(listing(&ns, TABLE), before);
}
