//! The policy-shaped table ([`super::policy_fixture`]) against its golden copies
//! (`testdata/nftables`, regenerated with `SINEW_BLESS=1 cargo test -p sinew-node-lib
//! policy_`), and against the kernel: what sinew programs over netlink lists exactly as what
//! `nft -f` programs from the golden copy, and every rule and element reads in the listing
//! as the model's text says.

use std::path::PathBuf;

use super::Nftables;
use super::policy_fixture::{TABLE, golden};
use crate::netns::test_support::{have_root, new_netns};
use crate::nft::Table;
use crate::nft::golden::{check, have_nft, listing, nft_input};

/// The golden cases: the table without and with the drop log.
fn cases() -> Vec<(&'static str, Table)> {
    vec![("policy", golden(false)), ("policy-drop-log", golden(true))]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/nftables")
}

fn golden_path(name: &str) -> PathBuf {
    golden_dir().join(format!("{name}.nft"))
}

/// Every case's `nft` text is its golden copy, and every golden copy is a case's.
#[test]
fn policy_tables_are_their_golden_copies() {
    check(
        &golden_dir(),
        &cases(),
        "SINEW_BLESS=1 cargo test -p sinew-node-lib policy_",
    );
}

/// The elements `nft list` prints for set `name` (one string each, as printed), sorted.
fn listed_elements(listing: &str, name: &str) -> Vec<String> {
    let start = listing
        .find(&format!("set {name} {{"))
        .or_else(|| listing.find(&format!("map {name} {{")))
        .unwrap_or_else(|| panic!("set {name} not listed:\n{listing}"));
    let body = &listing[start..];
    elements_in(&body[..body.find("\n\t}").unwrap()])
}

/// The elements in the listing of one set (from `set NAME {` to its last element), sorted.
pub(super) fn elements_in(set: &str) -> Vec<String> {
    let Some(at) = set.find("elements = { ") else {
        return Vec::new();
    };
    let list = &set[at + "elements = { ".len()..];
    let list = &list[..list.rfind(" }").unwrap()];
    // `nft` breaks long lists after a comma: `,\n\t\t\t     `.
    let list: String = list
        .split('\n')
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join(" ");
    let mut v: Vec<String> = list.split(", ").map(str::to_string).collect();
    v.sort();
    v
}

/// The model's text of every rule, chain comment and element is what `nft list` prints for
/// the kernel's copy (its named counters are objects, compared in the listings).
pub(super) fn assert_reads_as_listed(t: &Table, listing: &str) {
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    for chain in &t.chains {
        if let Some(comment) = &chain.comment {
            let line = format!("comment \"{comment}\"");
            assert!(lines.contains(&line.as_str()), "{line:?} not in\n{listing}");
        }
        for rule in &chain.rules {
            let line = rule.to_string();
            assert!(lines.contains(&line.as_str()), "{line:?} not in\n{listing}");
        }
    }
    for set in &t.sets {
        let mut want: Vec<String> = set.elements.iter().map(ToString::to_string).collect();
        want.sort();
        assert_eq!(
            listed_elements(listing, &set.name),
            want,
            "elements of {}",
            set.name
        );
    }
}

/// The kernel holds the same table whether sinew programs the model or `nft -f` its golden
/// copy, and lists it as the model's text says.
#[test]
fn policy_tables_program_as_nft_programs_their_golden_copies() {
    let test = "policy_tables_program_as_nft_programs_their_golden_copies";
    if !have_root(test) || !have_nft(test) {
        return;
    }
    for (name, table) in cases() {
        let golden = std::fs::read_to_string(golden_path(name)).unwrap();
        let by_nft = new_netns();
        nft_input(&by_nft, &["-f", "-"], &golden);
        let by_sinew = new_netns();
        let mut nl = Nftables::in_netns(&by_sinew).unwrap();
        nl.replace_table(&table).unwrap();
        let (got, want) = (listing(&by_sinew, TABLE), listing(&by_nft, TABLE));
        assert_eq!(got.0, want.0, "{name}");
        assert_eq!(got.1, want.1, "{name}");
        assert_reads_as_listed(&table, &got.0);
        for line in [
            "ct state established,related accept",
            "iifname \"snw*\" iifname != @programmed counter name \"dropped-held\" drop comment \"not programmed yet\"",
            "counter name \"dropped-egress\" drop",
            "oifname vmap @ingress-classes",
            "ip saddr . meta l4proto . th dport @ingress-0-ports4 return",
            "10.0.1.2/31 . udp . 5000-5010 comment \"default/allow-web: ipBlock 10.0.1.2/31\"",
        ] {
            assert!(got.0.contains(line), "{line:?} missing from\n{}", got.0);
        }
        assert_eq!(
            got.0.contains(
                "limit rate 10/second log prefix \"ingress-0 default/allow-web\" group 1"
            ),
            name == "policy-drop-log"
        );
    }
}
