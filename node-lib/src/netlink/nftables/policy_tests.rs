//! The policy-shaped table ([`super::policy_fixture`]) against its golden copies
//! (`testdata/nftables`, regenerated with `SINEW_BLESS=1 cargo test -p sinew-node-lib
//! policy_`), and against the kernel: what sinew programs over netlink lists exactly as what
//! `nft -f` programs from the golden copy, and every rule and element reads in the listing
//! as the model's text says.

use std::path::PathBuf;

use super::Nftables;
use super::policy_fixture::{TABLE, golden};
use super::tests::{have_nft, nft};
use crate::netns::NetNs;
use crate::netns::test_support::{have_root, new_netns};
use crate::nft::{Table, text};

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
    let bless = std::env::var("SINEW_BLESS").is_ok_and(|v| v == "1");
    let cases = cases();
    let mut stale = Vec::new();
    for (name, table) in &cases {
        let path = golden_path(name);
        let text = text::replace_script(table);
        if bless {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(golden) if golden == text => {}
            Ok(golden) => stale.push(format!(
                "{}: differs\n--- golden\n{golden}--- now\n{text}",
                path.display()
            )),
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        if !cases.iter().any(|(name, _)| golden_path(name) == path) {
            if bless {
                std::fs::remove_file(&path).unwrap();
            } else {
                stale.push(format!("{}: no case renders it", path.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "golden copies of the policy table are stale (regenerate with `SINEW_BLESS=1 cargo test -p sinew-node-lib policy_`):\n{}",
        stale.join("\n")
    );
}

/// What `nft list table inet NAME` says, as text and as JSON without handles.
pub(super) fn listing(ns: &NetNs, table: &str) -> (String, serde_json::Value) {
    fn strip_handles(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("handle");
                map.values_mut().for_each(strip_handles);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_handles),
            _ => {}
        }
    }
    let text = nft(ns, &["list", "table", "inet", table]);
    let json = nft(ns, &["-j", "list", "table", "inet", table]);
    let mut json: serde_json::Value = serde_json::from_str(&json).unwrap();
    strip_handles(&mut json);
    (text, json)
}

/// `nft -f` of this script in the namespace.
pub(super) fn nft_file(ns: &NetNs, script: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), script).unwrap();
    nft(ns, &["-f", &file.path().to_string_lossy()]);
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
/// the kernel's copy (counters aside, which the policy table has none of).
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
        nft_file(&by_nft, &golden);
        let by_sinew = new_netns();
        let mut nl = Nftables::in_netns(&by_sinew).unwrap();
        nl.replace_table(&table).unwrap();
        let (got, want) = (listing(&by_sinew, TABLE), listing(&by_nft, TABLE));
        assert_eq!(got.0, want.0, "{name}");
        assert_eq!(got.1, want.1, "{name}");
        assert_reads_as_listed(&table, &got.0);
        for line in [
            "ct state established,related accept",
            "iifname \"snw*\" iifname != @programmed drop comment \"not programmed yet\"",
            "oifname vmap @ingress-classes",
            "ip saddr . meta l4proto . th dport @ingress-0-ports4 return",
            "10.0.1.2/31 . udp . 5000-5010 comment \"default/allow-web: ipBlock 10.0.1.2/31\"",
        ] {
            assert!(got.0.contains(line), "{line:?} missing from\n{}", got.0);
        }
        assert_eq!(
            got.0.contains("limit rate 10/second log group 1"),
            name == "policy-drop-log"
        );
    }
}
