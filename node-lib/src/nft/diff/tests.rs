//! `diff` without a kernel: which changes, in which order, for the shapes a policy table
//! goes through.

use super::*;
use crate::netlink::nftables::policy_fixture::{
    MEMBERS, golden, ip, other_ingress, table, web_egress, web_ingress,
};
use crate::nft::{Expr, Verdict};

fn names(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::AddChain(c) => format!("add chain {}", c.name),
            Change::FlushChain(c) => format!("flush chain {c}"),
            Change::DeleteElements(s) => format!("delete {} from {}", texts(s), s.name),
            Change::DeleteSet(s) => format!("delete set {s}"),
            Change::AddSet(s) => format!("add set {}", s.name),
            Change::AddElements(s) => format!("add {} to {}", texts(s), s.name),
            Change::AddRules { chain, rules } => format!("add {} rules to {chain}", rules.len()),
            Change::DeleteChain(c) => format!("delete chain {c}"),
            Change::AddCounter(c) => format!("add counter {c}"),
            Change::DeleteCounter(c) => format!("delete counter {c}"),
        })
        .collect()
}

fn texts(set: &Set) -> String {
    let v: Vec<String> = set.elements.iter().map(ToString::to_string).collect();
    v.join(", ")
}

fn set_mut<'a>(t: &'a mut Table, name: &str) -> &'a mut Set {
    t.sets.iter_mut().find(|s| s.name == name).unwrap()
}

fn chain_mut<'a>(t: &'a mut Table, name: &str) -> &'a mut Chain {
    t.chains.iter_mut().find(|c| c.name == name).unwrap()
}

#[test]
fn equal_tables_need_nothing() {
    assert_eq!(diff(&golden(true), &golden(true)), vec![]);
}

#[test]
fn elements_alone_are_removed_and_added() {
    let old = golden(false);
    let mut new = golden(false);
    set_mut(&mut new, "programmed")
        .elements
        .push(Element::key([Value::IfName("snwe".into())]));
    set_mut(&mut new, "ingress-0-any4").elements.remove(1);
    // a comment that changes is an element removed and added
    set_mut(&mut new, "egress-0-any4").elements[0].comment = Some("kube-system/coredns".into());
    assert_eq!(
        names(&diff(&old, &new)),
        [
            "delete 192.168.50.104-192.168.50.255 from ingress-0-any4",
            "delete 10.96.0.10 comment \"kube-system/dns\" from egress-0-any4",
            "add \"snwe\" to programmed",
            "add 10.96.0.10 comment \"kube-system/coredns\" to egress-0-any4",
        ]
    );
}

#[test]
fn a_class_comes_and_goes_with_its_chain_sets_and_map_entry() {
    let members = [
        MEMBERS[0],
        MEMBERS[1],
        ("snwc", "default/other-1", Some("ingress-1"), None),
        MEMBERS[3],
    ];
    let one = golden(false);
    let two = table(
        &[web_ingress(), web_egress(), other_ingress()],
        &members,
        false,
    );
    assert_eq!(
        names(&diff(&one, &two)),
        [
            "add chain ingress-1",
            "add set ingress-1-ports4",
            "add set ingress-1-any4",
            "add set ingress-1-ports6",
            "add set ingress-1-any6",
            "add \"snwc\" comment \"default/other-1\" : jump ingress-1 to ingress-classes",
            "add 5 rules to ingress-1",
        ]
    );
    // the way back: the jump and the rules go before the chain and its sets
    assert_eq!(
        names(&diff(&two, &one)),
        [
            "flush chain ingress-1",
            "delete \"snwc\" comment \"default/other-1\" : jump ingress-1 from ingress-classes",
            "delete set ingress-1-ports4",
            "delete set ingress-1-any4",
            "delete set ingress-1-ports6",
            "delete set ingress-1-any6",
            "delete chain ingress-1",
        ]
    );
}

#[test]
fn a_pod_moves_to_another_class_and_the_empty_class_goes() {
    let members = |class| {
        [
            ("snwa", "default/web-1", Some(class), Some("egress-0")),
            MEMBERS[1],
            MEMBERS[2],
            MEMBERS[3],
        ]
    };
    let old = table(&[web_ingress(), web_egress()], &members("ingress-0"), false);
    let new = table(
        &[other_ingress(), web_egress()],
        &members("ingress-1"),
        false,
    );
    let changes = names(&diff(&old, &new));
    assert_eq!(changes[0], "add chain ingress-1");
    assert_eq!(changes[1], "flush chain ingress-0");
    assert_eq!(
        changes[2],
        "delete \"snwa\" comment \"default/web-1\" : jump ingress-0 from ingress-classes"
    );
    let position = |c: &str| changes.iter().position(|x| x == c).unwrap();
    assert!(position("delete set ingress-0-any6") < position("delete chain ingress-0"));
    assert!(
        position("delete chain ingress-0")
            < position(
                "add \"snwa\" comment \"default/web-1\" : jump ingress-1 to ingress-classes"
            )
    );
    assert_eq!(changes.last().unwrap(), "add 5 rules to ingress-1");
    assert_eq!(changes.len(), 1 + 1 + 1 + 4 + 1 + 4 + 1 + 1, "{changes:#?}");
}

#[test]
fn changed_rules_are_flushed_and_refilled() {
    let changes = diff(&golden(false), &golden(true));
    assert_eq!(
        names(&changes),
        [
            "flush chain ingress-0",
            "flush chain egress-0",
            "add 6 rules to ingress-0",
            "add 6 rules to egress-0",
        ]
    );
    let Change::AddRules { rules, .. } = &changes[2] else {
        panic!("{changes:?}")
    };
    assert_eq!(rules, &golden(true).chains[0].rules);
}

#[test]
fn a_chain_whose_comment_changes_is_recreated_with_what_jumps_to_it() {
    let old = golden(false);
    let mut new = golden(false);
    chain_mut(&mut new, "ingress-0").comment = Some("pods default/web-1, default/web-2".into());
    // and a base chain jumping to a recreated chain is refilled
    chain_mut(&mut new, "forward").rules.push(Rule::new([
        Expr::IifName("lo".into()),
        Expr::Verdict(Verdict::Accept),
    ]));
    let mut recreated = chain_mut(&mut new, "ingress").clone();
    recreated.comment = Some("ingress classes".into());
    *chain_mut(&mut new, "ingress") = recreated;
    assert_eq!(
        names(&diff(&old, &new)),
        [
            "flush chain forward",
            "flush chain ingress-0",
            "flush chain ingress",
            "delete \"snwa\" comment \"default/web-1\" : jump ingress-0 from ingress-classes",
            "delete chain ingress-0",
            "delete chain ingress",
            "add chain ingress-0",
            "add chain ingress",
            "add \"snwa\" comment \"default/web-1\" : jump ingress-0 to ingress-classes",
            "add 5 rules to ingress-0",
            "add 1 rules to ingress",
            "add 6 rules to forward",
        ]
    );
}

#[test]
fn a_set_whose_type_changes_is_recreated_and_its_readers_refilled() {
    let old = golden(false);
    let mut new = golden(false);
    let any4 = set_mut(&mut new, "egress-0-any4");
    any4.interval = false;
    any4.elements = vec![Element::key([Value::Addr(ip("10.96.0.10"))])];
    assert_eq!(
        names(&diff(&old, &new)),
        [
            "flush chain egress-0",
            "delete set egress-0-any4",
            "add set egress-0-any4",
            "add 5 rules to egress-0",
        ]
    );
}

#[test]
fn counters_that_stay_are_untouched_and_others_come_and_go_around_their_rules() {
    let old = golden(false);
    // The drop counters stay whatever else changes: nothing deletes or recreates them.
    for new in [golden(true), table(&[web_ingress()], &MEMBERS[1..], false)] {
        assert!(
            diff(&old, &new)
                .iter()
                .all(|c| !matches!(c, Change::AddCounter(_) | Change::DeleteCounter(_))),
            "{:?}",
            names(&diff(&old, &new))
        );
    }
    // A counter that goes is deleted after the rules counting into it; one that comes is
    // created before the rules counting into it.
    let mut renamed = golden(false);
    renamed.counters[0] = "renamed".into();
    for chain in &mut renamed.chains {
        for rule in &mut chain.rules {
            for e in &mut rule.exprs {
                if *e == Expr::CounterRef(old.counters[0].clone()) {
                    *e = Expr::CounterRef("renamed".into());
                }
            }
        }
    }
    let changes = names(&diff(&old, &renamed));
    let at = |name: &str| changes.iter().position(|c| c == name).unwrap();
    let first_flush = changes.iter().position(|c| c.starts_with("flush")).unwrap();
    let first_add = changes
        .iter()
        .position(|c| c.starts_with("add ") && c.contains("rules"))
        .unwrap();
    assert_eq!(at("add counter renamed"), 0, "{changes:?}");
    assert!(
        at(&format!("delete counter {}", old.counters[0])) > first_flush,
        "{changes:?}"
    );
    assert!(
        at(&format!("delete counter {}", old.counters[0])) < first_add,
        "{changes:?}"
    );
}
