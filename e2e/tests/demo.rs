//! The README's main command (`make demo`) works: the demo runs to the end with `--no-wait`
//! and every pod reached every other one, before and after the live mode switch.

use std::process::Command;

use sinew_e2e::plugin::workspace_binary;
use sinew_e2e::require;
use sinew_e2e::tools::Tools;

#[test]
fn the_demo_runs_and_every_pod_reaches_every_other() {
    if !require::is_root() {
        require::missing(
            "demo",
            "the demo creates network namespaces, which needs root",
        );
        return;
    }
    let tools = match Tools::locate() {
        Ok(t) => t,
        Err(e) => {
            require::missing("demo", &e.to_string());
            return;
        }
    };
    let demo = workspace_binary("sinew-e2e", "demo");
    let out = Command::new(demo)
        .arg("--no-wait")
        .env("SINEW_TOOLS_BIN", tools.bin_dir())
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert_eq!(
        stdout.matches(" ok").count(),
        2 * 30,
        "two 6x6 matrices without the diagonal:\n{stdout}"
    );
    assert!(
        stdout.contains("ippool.sinew.dev/default-ipv4")
            && stdout.contains("VXLAN")
            && stdout.contains("STATUS: deployed"),
        "{stdout}"
    );
}
