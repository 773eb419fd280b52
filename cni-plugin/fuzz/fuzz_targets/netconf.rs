//! Fuzzes what the plugin reads from its caller: the network configuration on stdin (with
//! any `prevResult` in it) and the `CNI_*` environment. Nothing may panic, and an error never
//! echoes the input back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinew_cni::config;
use sinew_cni::invocation::Invocation;
use sinew_cni::result::CniOutput;

fuzz_target!(|data: &[u8]| {
    match config::parse(data) {
        Ok((conf, version)) => {
            if let Some(prev) = &conf.prev_result
                && let Ok(out) = CniOutput::from_prev_result(prev)
            {
                let _ = out.render(version);
            }
        }
        Err(e) => {
            // A long distinctive input must never come back verbatim in the message.
            if data.len() >= 48
                && let Ok(text) = std::str::from_utf8(data)
            {
                assert!(!e.msg.contains(text), "error echoed the input: {}", e.msg);
            }
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
