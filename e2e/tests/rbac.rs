//! The node agent's identity against the real API server: its ClusterRole grants what it
//! uses and nothing else, and the ValidatingAdmissionPolicy keeps an agent to its own Node and
//! its own node's `IPBlock`s, using the node name bound into its service-account token.
//! Needs the Go-built control plane.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sinew_crds::{IPBlock, IPBlockUsage};
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::tests;

const NAMESPACE: &str = "sinew-system";

fn main() -> ExitCode {
    sinew_e2e::harness::run(
        |ctx| async move {
            sinew_e2e::install::install_crds(&ctx.client).await?;
            let ns =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
            sinew_e2e::install::apply_manifest(
                &ctx.client,
                &serde_yaml::to_string(&ns).map_err(|e| e.to_string())?,
            )
            .await?;
            // The agent's part of the chart, rendered by the real helm.
            let helm = sinew_e2e::helm::Helm::new(&ctx.cp).map_err(|e| e.to_string())?;
            let chart = sinew_e2e::helm::Helm::chart();
            let manifest = helm.run(&[
                "template",
                "sinew",
                &chart,
                "--namespace",
                NAMESPACE,
                "--kube-version",
                "1.37.2",
                "--show-only",
                "templates/node-agent-rbac.yaml",
            ])?;
            let applied = sinew_e2e::install::apply_manifest(&ctx.client, &manifest).await?;
            eprintln!("applied {applied:?}");
            Ok(())
        },
        tests![
            the_agent_role_allows_what_the_agent_uses_and_nothing_else,
            an_agent_cannot_write_another_nodes_blocks_or_node,
        ],
    )
}

/// A client authenticated as the agent running on `node`: a token of the `sinew-node`
/// service account bound to a pod scheduled on that node, as the kubelet would mount it.
async fn agent_client(
    ctx: &Ctx,
    node: &str,
) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
    nodes
        .patch(node, &PatchParams::apply("sinew-e2e"), &Patch::Apply(&n))
        .await?;
    let path = ctx.cp.dir().join(format!("agent-{node}.kubeconfig"));
    let api = sinew_e2e::helm::Endpoint::of(&ctx.cp);
    sinew_e2e::helm::agent_kubeconfig(&api, &ctx.client, node, &path).await?;
    sinew_e2e::helm::client_from(&path).await
}

async fn can_i(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    sinew_e2e::helm::can_i(client, verb, group, resource, None).await
}

async fn the_agent_role_allows_what_the_agent_uses_and_nothing_else(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, "rbac-a").await?;
    for (verb, group, resource) in [
        ("watch", "", "nodes"),
        ("patch", "", "nodes/status"),
        ("create", "sinew.dev", "ipblocks"),
        ("delete", "sinew.dev", "ipblocks"),
        ("create", "sinew.dev", "ipblockusages"),
        ("patch", "sinew.dev", "ipblockusages"),
        ("patch", "sinew.dev", "ipblockusages/status"),
        ("watch", "sinew.dev", "ippools"),
        ("watch", "sinew.dev", "clusternetworks"),
        ("watch", "", "namespaces"),
        ("watch", "", "pods"),
        ("watch", "networking.k8s.io", "networkpolicies"),
    ] {
        assert!(
            can_i(&agent, verb, group, resource).await?,
            "the agent needs {verb} {resource}"
        );
    }
    for (verb, group, resource) in [
        ("list", "", "secrets"),
        ("get", "", "configmaps"),
        ("create", "", "pods"),
        ("get", "", "pods/log"),
        ("update", "networking.k8s.io", "networkpolicies"),
        ("delete", "", "nodes"),
        ("update", "sinew.dev", "ippools"),
        ("patch", "sinew.dev", "ippools/status"),
        ("delete", "sinew.dev", "clusternetworks"),
        ("update", "sinew.dev", "ipblocks"),
        ("patch", "sinew.dev", "ipblocks/status"),
        // Allocations stay out of what agents receive: no agent reads another's usage
        // (decision 95).
        ("list", "sinew.dev", "ipblockusages"),
        ("watch", "sinew.dev", "ipblockusages"),
        ("create", "apps", "daemonsets"),
    ] {
        assert!(
            !can_i(&agent, verb, group, resource).await?,
            "the agent must not {verb} {resource}"
        );
    }
    // Events: about its Node, so in `default` (where a cluster-scoped object's Events go),
    // and nowhere else.
    let events_in = |ns: &'static str, group: &'static str| {
        let agent = agent.clone();
        async move { sinew_e2e::helm::can_i(&agent, "create", group, "events", Some(ns)).await }
    };
    assert!(events_in("default", "events.k8s.io").await?);
    for (ns, group) in [
        ("kube-system", "events.k8s.io"),
        (NAMESPACE, "events.k8s.io"),
        ("default", ""),
    ] {
        assert!(
            !events_in(ns, group).await?,
            "the agent must not create events (group {group:?}) in {ns}"
        );
    }
    assert!(
        !can_i(&agent, "create", "events.k8s.io", "events").await?,
        "the agent must not create events in every namespace"
    );
    Ok(())
}

fn block(name: &str, cidr: &str, node: &str) -> serde_json::Value {
    json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock", "metadata": {"name": name},
           "spec": {"pool": "p", "cidr": cidr, "node": node}})
}

async fn an_agent_cannot_write_another_nodes_blocks_or_node(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, "vap-a").await?;
    let _other = agent_client(&ctx, "vap-b").await?;
    let as_agent: Api<IPBlock> = Api::all(agent.clone());
    let create = |name: &str, cidr: &str, node: &str| {
        let obj: IPBlock = serde_json::from_value(block(name, cidr, node)).expect("static block");
        let api = as_agent.clone();
        async move { api.create(&PostParams::default(), &obj).await }
    };
    // The policy takes effect once the API server has loaded it: wait for the first refusal.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        match create("10-120-0-0-28", "10.120.0.0/28", "vap-b").await {
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => break e.message,
            Ok(_) => {
                Api::<IPBlock>::all(ctx.client.clone())
                    .delete("10-120-0-0-28", &DeleteParams::default())
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            return Err("the agent of vap-a could claim a block for vap-b".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refusal.contains("its own node") && refusal.contains("vap-a") && refusal.contains("vap-b"),
        "{refusal}"
    );

    // Its own node's blocks: create, report their usage, delete.
    let mine = create("10-120-0-16-28", "10.120.0.16/28", "vap-a").await?;
    let usage = |name: &str, cidr: &str, node: &str, uid: Option<String>| {
        json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
               "metadata": {"name": name, "ownerReferences": [{"apiVersion": "sinew.dev/v1alpha1",
                            "kind": "IPBlock", "name": name, "uid": uid}]},
               "spec": {"pool": "p", "cidr": cidr, "node": node}})
    };
    let usages: Api<IPBlockUsage> = Api::all(agent.clone());
    let manager = PatchParams::apply("sinew-node/vap-a");
    usages
        .patch(
            "10-120-0-16-28",
            &manager,
            &Patch::Apply(&usage(
                "10-120-0-16-28",
                "10.120.0.16/28",
                "vap-a",
                mine.metadata.uid,
            )),
        )
        .await?;
    let status = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": "10-120-0-16-28"},
                        "status": {"allocated": 0}});
    usages
        .patch_status("10-120-0-16-28", &manager, &Patch::Apply(&status))
        .await?;

    // Another node's existing block: neither its usage nor the block itself.
    let admin: Api<IPBlock> = Api::all(ctx.client.clone());
    let theirs: IPBlock =
        serde_json::from_value(block("10-120-0-32-28", "10.120.0.32/28", "vap-b"))?;
    let theirs = admin.create(&PostParams::default(), &theirs).await?;
    Api::<IPBlockUsage>::all(ctx.client.clone())
        .patch(
            "10-120-0-32-28",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&usage(
                "10-120-0-32-28",
                "10.120.0.32/28",
                "vap-b",
                theirs.metadata.uid,
            )),
        )
        .await?;
    let forged = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": "10-120-0-32-28"},
                        "status": {"allocated": 1, "allocations": [{"ip": "10.120.0.33", "containerId": "x", "interface": "eth0", "generation": 1}]}});
    let denied = usages
        .patch_status(
            "10-120-0-32-28",
            &PatchParams::apply("sinew-node/vap-a"),
            &Patch::Apply(&forged),
        )
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref e)) if e.code == 403 || e.code == 422),
        "{denied:?}"
    );
    let denied = as_agent
        .delete("10-120-0-32-28", &DeleteParams::default())
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref e)) if e.code == 403 || e.code == 422),
        "{denied:?}"
    );
    as_agent
        .delete("10-120-0-16-28", &DeleteParams::default())
        .await?;

    // Nodes: its own annotations yes, another node's no.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(agent.clone());
    let mine = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "vap-a", "annotations": {"sinew.dev/vtep-mac": "02:00:00:00:00:01"}}});
    nodes
        .patch(
            "vap-a",
            &PatchParams::apply("sinew-node/vap-a"),
            &Patch::Apply(&mine),
        )
        .await?;
    let theirs = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "vap-b", "annotations": {"sinew.dev/vtep-mac": "02:00:00:00:00:66"}}});
    let denied = nodes
        .patch(
            "vap-b",
            &PatchParams::apply("sinew-node/vap-a"),
            &Patch::Apply(&theirs),
        )
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref e)) if e.code == 403 || e.code == 422),
        "{denied:?}"
    );
    Ok(())
}
