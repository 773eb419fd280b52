//! The GitOps health checks (gitops/): the Argo CD `health.lua` under a Lua interpreter and
//! upstream kstatus (what Flux uses), both against the same fixtures in gitops/testdata.

use std::process::Command;

use sinew_e2e::tools::{Tools, repo_root};

#[test]
fn argo_cd_health_and_kstatus_agree_with_every_fixture() {
    let lua = Command::new("lua5.4").arg("-v").output();
    if lua.is_err() {
        sinew_e2e::require::missing("GitOps", "lua5.4 is not installed (e2e/install-deps.sh)");
        return;
    }
    let tools = match Tools::locate() {
        Ok(t) => t,
        Err(e) => {
            sinew_e2e::require::missing("GitOps", &e.to_string());
            return;
        }
    };
    let out = Command::new("bash")
        .arg(repo_root().join("gitops/check.sh"))
        .arg(tools.bin_dir())
        .current_dir(repo_root())
        .output()
        .expect("running gitops/check.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 kstatus mismatches"), "{text}");
}
