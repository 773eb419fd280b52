//! `sinew-operator` as a process with the admin identity, for tiers that test agents and need
//! the operator's judgement of pools (agents use a pool only once the operator has judged it),
//! and for the operator's own tests.

use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::ControlPlane;
use crate::helm::NAMESPACE;
use crate::process::Supervised;

/// Starts an operator replica `identity` in [`NAMESPACE`] (created if missing) with the
/// admin kubeconfig and `env` on top of the defaults (log level from `SINEW_E2E_OPERATOR_LOG`).
pub async fn start(
    cp: &ControlPlane,
    identity: &str,
    env: &[(&str, String)],
) -> Result<Supervised, crate::Error> {
    let client = cp.client().await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    Api::<Namespace>::all(client)
        .patch(
            NAMESPACE,
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&ns),
        )
        .await
        .map_err(|e| crate::Error::Setup(format!("namespace {NAMESPACE}: {e}")))?;
    let bin = crate::plugin::workspace_binary("sinew-operator", "sinew-operator");
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", cp.kubeconfig_path())
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_NAME", identity)
        .env("SINEW_NODE_IMAGE", "sinew-node:test")
        .env("SINEW_METRICS_ADDR", "127.0.0.1:0")
        // Replicas share the host's loopback here: any free port for the probes.
        .env("SINEW_PROBE_ADDR", "127.0.0.1:0")
        .env(
            "SINEW_LOG",
            std::env::var("SINEW_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    Supervised::spawn(
        &format!("sinew-operator {identity}"),
        cmd,
        &cp.dir().join(format!("operator-{identity}.log")),
    )
}

static KEPT: std::sync::Mutex<Vec<Supervised>> = std::sync::Mutex::new(Vec::new());

/// Keeps `process` running for the rest of the test binary (statics are never dropped, so
/// [`stop_kept`] must run when the tests are done).
pub fn keep(process: Supervised) {
    if let Ok(mut kept) = KEPT.lock() {
        kept.push(process);
    }
}

/// Stops every process given to [`keep`].
pub fn stop_kept() {
    if let Ok(mut kept) = KEPT.lock() {
        kept.clear();
    }
}

/// Set-up of the tiers that run agents: the CRDs, the `ClusterNetwork` (`spec: {}`) when
/// `network` is set, and a real operator kept running (agents use a pool only once the
/// operator has judged it). Call [`stop_kept`] when the tests are done.
pub async fn agents_setup(ctx: &crate::harness::Ctx, network: bool) -> Result<(), String> {
    crate::install::install_crds(&ctx.client).await?;
    if network {
        let cn = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork",
                        "metadata": {"name": "default"}, "spec": {}});
        Api::<sinew_crds::ClusterNetwork>::all(ctx.client.clone())
            .patch(
                "default",
                &PatchParams::apply("sinew-e2e"),
                &Patch::Apply(&cn),
            )
            .await
            .map_err(|e| format!("the ClusterNetwork: {e}"))?;
    }
    let operator = start(&ctx.cp, "op", &[]).await.map_err(|e| e.to_string())?;
    keep(operator);
    Ok(())
}
