//! The Helm chart with the real `helm` (built from its pinned module) against the real API
//! server. The chart is still being built (issue 6); what it has must lint and be accepted.

use std::process::{Command, ExitCode};

use serde_json::json;
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::tests;
use sinew_e2e::tools::repo_root;

fn main() -> ExitCode {
    sinew_e2e::harness::run(
        |ctx| async move {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sinew-system"}});
            sinew_e2e::install::apply_manifest(&ctx.client, &ns.to_string())
                .await
                .map(|_| ())
        },
        tests![the_chart_lints_and_its_manifests_are_accepted_by_the_api_server],
    )
}

fn helm(ctx: &Ctx, args: &[&str]) -> Result<String, String> {
    let bin = ctx.cp.tools().path("helm").map_err(|e| e.to_string())?;
    let out = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", ctx.cp.kubeconfig_path())
        .env("HELM_CACHE_HOME", ctx.cp.dir().join("helm-cache"))
        .env("HELM_CONFIG_HOME", ctx.cp.dir().join("helm-config"))
        .env("HELM_DATA_HOME", ctx.cp.dir().join("helm-data"))
        .output()
        .map_err(|e| format!("running helm: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "helm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

async fn the_chart_lints_and_its_manifests_are_accepted_by_the_api_server(ctx: Ctx) -> TestResult {
    let chart = repo_root().join("charts/sinew");
    let chart = chart.to_str().ok_or("chart path")?;
    let lint = helm(&ctx, &["lint", "--strict", chart])?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let template = [
        "template",
        "sinew",
        chart,
        "--namespace",
        "sinew-system",
        "--include-crds",
        "--kube-version",
        "1.37.2",
    ];
    let rendered = helm(&ctx, &template)?;
    // CRDs first (for real), then everything else as a server-side dry run.
    let (crds, rest): (Vec<&str>, Vec<&str>) = rendered
        .split("\n---")
        .partition(|doc| doc.contains("kind: CustomResourceDefinition"));
    assert_eq!(crds.len(), 3, "the chart carries the three CRDs");
    sinew_e2e::install::apply_manifest(&ctx.client, &crds.join("\n---")).await?;
    let accepted =
        sinew_e2e::install::apply_manifest_with(&ctx.client, &rest.join("\n---"), true).await?;
    for kind in [
        "ServiceAccount/sinew-node",
        "ClusterRole/sinew-node",
        "ClusterRoleBinding/sinew-node",
        "ValidatingAdmissionPolicy/sinew-node-own-objects-only",
    ] {
        assert!(
            accepted.iter().any(|a| a == kind),
            "{kind} missing from {accepted:?}"
        );
    }
    // A re-render is byte-identical: GitOps tools see no drift.
    let again = helm(&ctx, &template)?;
    assert_eq!(rendered, again);
    Ok(())
}
