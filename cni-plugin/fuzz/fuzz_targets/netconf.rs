//! Fuzzes what the plugin reads from its caller: the network configuration on stdin (with
//! any `prevResult` in it) and the `CNI_*` environment. Nothing may panic, and no
//! configuration value reaches an error message: every string value of a JSON input (except
//! `name` and `cniVersion`, which errors quote on purpose) is replaced by a canary that must
//! never show up in the resulting error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sinew_cni::config;
use sinew_cni::invocation::Invocation;
use sinew_cni::result::CniOutput;

const CANARY: &str = "SECRET-CANARY";

fn plant(v: &mut Value, top: bool) {
    match v {
        Value::String(s) => *s = format!("{CANARY}-{}", s.len()),
        Value::Array(items) => items.iter_mut().for_each(|i| plant(i, false)),
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                if !(top && (k == "name" || k == "cniVersion")) {
                    plant(item, false);
                }
            }
        }
        _ => {}
    }
}

fn check(data: &[u8]) -> Option<String> {
    match config::parse(data) {
        Ok((conf, version)) => {
            // What ADD decodes on its own: the host ports.
            if let Err(e) = config::port_mappings(conf.runtime_config.port_mappings.as_ref()) {
                return Some(e.msg);
            }
            let prev = conf.prev_result.as_ref()?;
            match CniOutput::from_prev_result(prev) {
                Ok(out) => {
                    let _ = out.render(version);
                    None
                }
                Err(e) => Some(e.msg),
            }
        }
        Err(e) => Some(e.msg),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = check(data);
    if let Ok(mut value) = serde_json::from_slice::<Value>(data) {
        plant(&mut value, true);
        if let Ok(planted) = serde_json::to_vec(&value)
            && let Some(msg) = check(&planted)
        {
            assert!(!msg.contains(CANARY), "a configuration value reached an error: {msg}");
        }
    }
    // The same bytes as the CNI environment, split into variables.
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let vars: Vec<(&str, &str)> = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_ARGS"]
        .into_iter()
        .zip(parts.by_ref())
        .collect();
    let _ = Invocation::from_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()));
});
