//! Test support (feature `testutils`) for the crates that declare nftables tables: golden
//! copies (one `nft -f` script per case, rewritten with `SINEW_BLESS=1`), and the `nft` program
//! run inside a throwaway namespace to read back what the kernel holds.

use std::path::Path;

use crate::netns::NetNs;
use crate::nft::{Table, text};

/// Every case's table in `nft` syntax is its golden copy in `dir` (`NAME.nft`), and every
/// golden copy there is a case's. `SINEW_BLESS=1` rewrites them; `regenerate` says how.
pub fn check(dir: &Path, cases: &[(&str, Table)], regenerate: &str) {
    let bless = std::env::var("SINEW_BLESS").is_ok_and(|v| v == "1");
    let path = |name: &str| dir.join(format!("{name}.nft"));
    let mut stale = Vec::new();
    for (name, table) in cases {
        let text = text::replace_script(table);
        if bless {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(path(name), &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(path(name)) {
            Ok(golden) if golden == text => {}
            Ok(golden) => stale.push(format!(
                "{}: differs\n--- golden\n{golden}--- now\n{text}",
                path(name).display()
            )),
            Err(e) => stale.push(format!("{}: {e}", path(name).display())),
        }
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let file = entry.unwrap().path();
        if !cases.iter().any(|(name, _)| path(name) == file) {
            if bless {
                std::fs::remove_file(&file).unwrap();
            } else {
                stale.push(format!("{}: no case renders it", file.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "golden copies are stale (regenerate with `{regenerate}`):\n{}",
        stale.join("\n")
    );
}

/// `nft ARGS` inside the namespace (the CLI only verifies here).
pub fn nft(ns: &NetNs, args: &[&str]) -> String {
    nft_input(ns, args, "")
}

/// `nft ARGS` inside the namespace, with `input` on its standard input (`-f -`).
pub fn nft_input(ns: &NetNs, args: &[&str], input: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let name = ns
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &name, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec nft");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn have_nft(test: &str) -> bool {
    let ok = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("*** SKIPPING {test}: needs the nft program to verify ***");
    }
    ok
}

/// What `nft list table inet TABLE` says, as text and as JSON without handles.
pub fn listing(ns: &NetNs, table: &str) -> (String, serde_json::Value) {
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
