//! The Helm chart with the real `helm` (built from its pinned module) against the real API
//! server: lint, render, schema, and the whole life of a release — install, the operator and
//! the agents under the chart's identities, upgrade, CRD upgrade, uninstall. The life-cycle
//! test runs real agents on nodes made of network namespaces, so it needs root.

use std::process::{Command, ExitCode};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use sinew_crds::{ClusterNetwork, IPBlock, IPPool};
use sinew_e2e::cluster::LocalCluster;
use sinew_e2e::harness::{Ctx, TestError, TestResult, wait_for};
use sinew_e2e::helm::{Endpoint, Helm, NAMESPACE};
use sinew_e2e::process::Supervised;
use sinew_e2e::tests;

fn main() -> ExitCode {
    sinew_e2e::harness::run(
        |_| async { Ok(()) },
        tests![
            the_chart_lints_renders_identically_and_is_accepted_by_the_api_server,
            bad_values_are_rejected_naming_the_value,
            probes_pull_secrets_and_hooks_render_as_documented,
            a_failed_uninstall_hook_leaves_no_uninstall_rbac_behind,
            install_upgrade_and_uninstall_a_working_network,
        ],
    )
}

fn helm(ctx: &Ctx) -> Result<Helm, TestError> {
    Ok(Helm::new(&ctx.cp)?)
}

const TEMPLATE: [&str; 8] = [
    "template",
    "sinew",
    "CHART",
    "--namespace",
    NAMESPACE,
    "--include-crds",
    "--kube-version",
    "1.37.2",
];

fn template(helm: &Helm, extra: &[&str]) -> Result<String, String> {
    let chart = Helm::chart();
    let mut args: Vec<&str> = TEMPLATE
        .iter()
        .map(|a| if *a == "CHART" { chart.as_str() } else { a })
        .collect();
    args.extend_from_slice(extra);
    helm.run(&args)
}

async fn the_chart_lints_renders_identically_and_is_accepted_by_the_api_server(
    ctx: Ctx,
) -> TestResult {
    let helm = helm(&ctx)?;
    let lint = helm.run(&["lint", "--strict", &Helm::chart()])?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let rendered = template(&helm, &[])?;
    // CRDs first (for real, as Helm does), then everything else as a server-side dry run:
    // validated, defaulted and admitted by the API server, nothing stored.
    let (crds, rest): (Vec<&str>, Vec<&str>) = rendered
        .split("\n---")
        .partition(|doc| doc.contains("kind: CustomResourceDefinition"));
    assert_eq!(crds.len(), 4, "the chart carries the four CRDs");
    sinew_e2e::install::apply_manifest(&ctx.client, &crds.join("\n---")).await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    sinew_e2e::install::apply_manifest(&ctx.client, &ns.to_string()).await?;
    let accepted =
        sinew_e2e::install::apply_manifest_with(&ctx.client, &rest.join("\n---"), true).await?;
    for kind in [
        "ServiceAccount/sinew-node",
        "ClusterRole/sinew-node",
        "ClusterRoleBinding/sinew-node",
        "ValidatingAdmissionPolicy/sinew-node-own-objects-only",
        "ValidatingAdmissionPolicyBinding/sinew-node-own-objects-only",
        "ValidatingAdmissionPolicy/sinew-node-own-events-only",
        "ValidatingAdmissionPolicyBinding/sinew-node-own-events-only",
        "Role/sinew-node-events",
        "RoleBinding/sinew-node-events",
        "ValidatingAdmissionPolicy/sinew-ipblock-in-its-pool",
        "ValidatingAdmissionPolicyBinding/sinew-ipblock-in-its-pool",
        "ServiceAccount/sinew-operator",
        "ClusterRole/sinew-operator",
        "Role/sinew-operator",
        "Deployment/sinew-operator",
        "PodDisruptionBudget/sinew-operator",
        "ClusterNetwork/default",
        "IPPool/default-ipv4",
        "Job/sinew-uninstall",
    ] {
        assert!(
            accepted.iter().any(|a| a == kind),
            "{kind} missing from {accepted:?}"
        );
    }
    // Every object carries the standard labels; both images default to the appVersion.
    for doc in &rest {
        if doc.contains("kind:") {
            assert!(
                doc.contains("app.kubernetes.io/part-of: sinew")
                    && doc.contains("app.kubernetes.io/managed-by: Helm"),
                "standard labels missing:\n{doc}"
            );
        }
    }
    assert!(rendered.contains("image: ghcr.io/sinew-dev/sinew-operator:0.1.0"));
    assert!(rendered.contains("value: \"ghcr.io/sinew-dev/sinew-node:0.1.0\""));
    // A re-render is byte-identical: GitOps tools see no drift.
    assert_eq!(rendered, template(&helm, &[])?);
    // One replica needs no disruption budget.
    let single = template(&helm, &["--set", "operator.replicas=1"])?;
    assert!(!single.contains("kind: PodDisruptionBudget"));
    Ok(())
}

async fn bad_values_are_rejected_naming_the_value(ctx: Ctx) -> TestResult {
    let helm = helm(&ctx)?;
    for (set, named) in [
        ("operator.replicas=two", "replicas"),
        ("operator.replica=3", "replica"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("operator.replicas=0", "replicas"),
        ("clusterNetwork.creat=true", "creat"),
    ] {
        let err = template(&helm, &["--set", set]).expect_err(set);
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(named),
            "--set {set}: {err}"
        );
    }
    let err = template(
        &helm,
        &[
            "--set-json",
            r#"ipPools=[{"name":"Bad_Name","spec":{"cidr":"10.0.0.0/8"}}]"#,
        ],
    )
    .expect_err("bad pool name");
    assert!(err.contains("ipPools") && err.contains("name"), "{err}");
    Ok(())
}

/// The documents of `rendered` of `kind`, parsed.
fn docs_of(rendered: &str, kind: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &serde_json::Value| v["kind"] == kind)
        .collect()
}

async fn probes_pull_secrets_and_hooks_render_as_documented(ctx: Ctx) -> TestResult {
    let helm = helm(&ctx)?;
    let rendered = template(&helm, &["--set", "image.pullSecrets={regcred,mirror}"])?;
    let deployment = docs_of(&rendered, "Deployment")
        .pop()
        .ok_or("no Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["imagePullSecrets"],
        json!([{"name": "regcred"}, {"name": "mirror"}])
    );
    let operator = &pod["containers"][0];
    let env = |name: &str| {
        operator["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .map(|v| v["value"].clone())
    };
    // Passed on to the agent DaemonSet by the operator.
    assert_eq!(
        env("SINEW_IMAGE_PULL_SECRETS"),
        Some(json!("regcred,mirror"))
    );
    // The kubelet's probes on the loopback probe listener, a startup probe first.
    assert_eq!(env("SINEW_PROBE_ADDR"), Some(json!("127.0.0.1:9467")));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &operator[probe]["httpGet"];
        assert_eq!(
            (get["host"].clone(), get["port"].clone()),
            (json!("127.0.0.1"), json!(9467)),
            "{probe}: {get}"
        );
    }
    let job = docs_of(&rendered, "Job").pop().ok_or("no Job")?;
    assert_eq!(
        job["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}, {"name": "mirror"}])
    );
    // Without pull secrets, none.
    let plain = template(&helm, &[])?;
    assert!(!plain.contains("imagePullSecrets"), "{plain}");
    assert!(!plain.contains("SINEW_IMAGE_PULL_SECRETS"));
    Ok(())
}

/// `helm uninstall` whose pre-delete hook fails (here: its Job never completes, as no Job
/// controller runs, so Helm's timeout fails it; a refusal, exit code 3, fails it the same
/// way) keeps the release and every sinew object, and takes the hook's RBAC away: Helm deletes
/// the hooks that had succeeded (the ServiceAccount, ClusterRole and binding, `hook-succeeded`)
/// when a later one fails. Only the Job stays, for its log. Its own control plane: the other
/// tests of this binary install the chart too.
async fn a_failed_uninstall_hook_leaves_no_uninstall_rbac_behind(_ctx: Ctx) -> TestResult {
    let cp = sinew_e2e::ControlPlane::start().await?;
    let client = cp.client().await?;
    let helm = Helm::new(&cp)?;
    helm.install(&[])?;
    let err = helm
        .run(&[
            "uninstall",
            "sinew",
            "--namespace",
            NAMESPACE,
            "--timeout",
            "5s",
        ])
        .expect_err("the hook cannot complete here");
    assert!(err.contains("timed out"), "{err}");
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    wait_for(
        "the uninstall hook's RBAC gone",
        Duration::from_secs(30),
        String::new,
        || async {
            let left = [
                sas.get_opt("sinew-uninstall")
                    .await?
                    .map(|_| "ServiceAccount"),
                roles
                    .get_opt("sinew-uninstall")
                    .await?
                    .map(|_| "ClusterRole"),
                bindings
                    .get_opt("sinew-uninstall")
                    .await?
                    .map(|_| "ClusterRoleBinding"),
            ];
            Ok(left.iter().all(Option::is_none).then_some(()))
        },
    )
    .await?;
    // Nothing of the release was deleted.
    let networks: Api<ClusterNetwork> = Api::all(client.clone());
    assert!(networks.get_opt("default").await?.is_some());
    let roles_left = roles.get_opt("sinew-node").await?;
    assert!(roles_left.is_some(), "the agent's ClusterRole went too");
    Ok(())
}

fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn install_upgrade_and_uninstall_a_working_network(ctx: Ctx) -> TestResult {
    if !sinew_e2e::require::is_root() {
        sinew_e2e::require::missing(
            "helm life cycle",
            "the agents run on nodes made of network namespaces, which needs root",
        );
        return Ok(());
    }
    let helm = helm(&ctx)?;
    // install: everything the chart declares exists; nothing runs yet (no kubelet here).
    let notes = helm.install(&[])?;
    assert!(
        notes.contains("kubectl get clusternetwork default"),
        "{notes}"
    );
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let deployment = deployments.get("sinew-operator").await?;
    assert_eq!(deployment.spec.replicas, Some(2));
    let networks: Api<ClusterNetwork> = Api::all(ctx.client.clone());
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    pools.get("default-ipv4").await?;

    // The operator, with the chart's identity and the Deployment's settings, rolls out the
    // agent DaemonSet; the agents, with theirs, bring the nodes up.
    let operator =
        sinew_e2e::helm::start_operator(&ctx.cp, &ctx.client, "sinew-operator-0").await?;
    let log = || format!("--- operator ---\n{}", operator.log_tail(20));
    let cluster = LocalCluster::start_with(&ctx.cp, "helm", &[0, 1], true).await;
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let ds = wait_for(
        "the agent DaemonSet",
        Duration::from_secs(20),
        log,
        || async { Ok(daemonsets.get_opt("sinew-node").await?) },
    )
    .await?;
    let pod_spec = ds.spec.template.spec.ok_or("no pod spec")?;
    assert_eq!(
        pod_spec.containers[0].image.as_deref(),
        Some("ghcr.io/sinew-dev/sinew-node:0.1.0"),
        "the agent image follows the chart's appVersion"
    );
    let hash_of = |ds: DaemonSet| {
        ds.spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("sinew.dev/config-hash").cloned())
    };
    let first_hash = hash_of(daemonsets.get("sinew-node").await?);
    wait_for(
        "ClusterNetwork Ready",
        Duration::from_secs(60),
        log,
        || async {
            let cn = networks.get("default").await?;
            Ok(cn
                .status
                .filter(|s| ready(&s.conditions) && s.observed_generation == cn.metadata.generation)
                .map(|_| ()))
        },
    )
    .await?;
    wait_for("IPPool Ready", Duration::from_secs(30), log, || async {
        Ok(pools
            .get("default-ipv4")
            .await?
            .status
            .filter(|s| ready(&s.conditions))
            .map(|_| ()))
    })
    .await?;

    // Pods across the two nodes talk.
    let a = cluster.start_pod(&cluster.name(0), "a").await;
    let b = cluster.start_pod(&cluster.name(1), "b").await;
    let server =
        sinew_e2e::netsim::EchoServer::start(&b.ns, std::net::SocketAddr::new(b.ipv4(), 0));
    let reply = sinew_e2e::netsim::tcp_exchange(&a.ns, server.addr)?;
    assert!(reply.starts_with(&a.ipv4().to_string()), "{reply}");

    // The identities can do their jobs and nothing else.
    let operator_client =
        sinew_e2e::helm::client_from(&ctx.cp.dir().join("operator-sinew-operator-0.kubeconfig"))
            .await?;
    for (verb, group, resource, ns, allowed) in [
        ("patch", "sinew.dev", "ippools/status", None, true),
        ("delete", "sinew.dev", "ipblocks", None, true),
        ("watch", "", "pods", None, true),
        ("patch", "apps", "daemonsets", Some(NAMESPACE), true),
        (
            "create",
            "coordination.k8s.io",
            "leases",
            Some(NAMESPACE),
            true,
        ),
        ("patch", "apps", "daemonsets", Some("kube-system"), false),
        ("get", "", "secrets", Some(NAMESPACE), false),
        ("get", "", "pods", Some(NAMESPACE), true),
        ("create", "", "pods", Some(NAMESPACE), false),
        ("delete", "", "pods", None, false),
        ("delete", "", "nodes", None, false),
        ("patch", "", "nodes", None, false),
        ("update", "sinew.dev", "ippools", None, false),
        ("delete", "sinew.dev", "ippools", None, false),
        ("create", "sinew.dev", "ipblocks", None, false),
        ("watch", "sinew.dev", "ipblockusages", None, true),
    ] {
        assert_eq!(
            sinew_e2e::helm::can_i(&operator_client, verb, group, resource, ns).await?,
            allowed,
            "operator: {verb} {group}/{resource} in {ns:?}"
        );
    }
    let node0 = cluster.node(&cluster.name(0));
    let agent_client = sinew_e2e::helm::client_from(&node0.dir.join("agent.kubeconfig")).await?;
    for (verb, group, resource, allowed) in [
        ("create", "sinew.dev", "ipblocks", true),
        ("patch", "sinew.dev", "ipblockusages/status", true),
        ("watch", "sinew.dev", "ipblockusages", false),
        ("patch", "sinew.dev", "ippools/status", false),
        ("patch", "apps", "daemonsets", false),
        ("list", "", "secrets", false),
    ] {
        assert_eq!(
            sinew_e2e::helm::can_i(&agent_client, verb, group, resource, None).await?,
            allowed,
            "agent: {verb} {group}/{resource}"
        );
    }

    // upgrade with a changed value: the ClusterNetwork changes, the DaemonSet rolls (new
    // config hash) and every node's conflist is rewritten, never seen half-written.
    let watchers: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| sinew_e2e::cluster::ConflistWatch::start(n.conf_dir().join("10-sinew.conflist")))
        .collect();
    helm.upgrade(&["--set", "clusterNetwork.spec.logLevel=debug"])?;
    wait_for(
        "the DaemonSet rolls",
        Duration::from_secs(20),
        log,
        || async {
            let hash = hash_of(daemonsets.get("sinew-node").await?);
            Ok((hash != first_hash).then_some(()))
        },
    )
    .await?;
    for (node, watch) in cluster.nodes.iter().zip(watchers) {
        let seen = watch.until_contains("\"logLevel\": \"debug\"", Duration::from_secs(20));
        assert!(
            seen.rewritten,
            "{}: conflist not rewritten:\n{}",
            node.name,
            node.agent_log()
        );
        assert!(
            seen.torn.is_empty(),
            "{}: torn reads {:?}",
            node.name,
            seen.torn
        );
    }
    wait_for(
        "ClusterNetwork Ready again",
        Duration::from_secs(30),
        log,
        || async {
            let cn = networks.get("default").await?;
            Ok((cn.metadata.generation == Some(2))
                .then_some(cn.status)
                .flatten()
                .filter(|s| ready(&s.conditions) && s.observed_generation == Some(2))
                .map(|_| ()))
        },
    )
    .await?;
    // A bad value changes nothing.
    let err = helm
        .upgrade(&["--set", "operator.replicas=0"])
        .expect_err("replicas=0");
    assert!(err.contains("replicas"), "{err}");
    let history = helm.run(&["history", "sinew", "--namespace", NAMESPACE])?;
    assert_eq!(
        history.lines().count(),
        3,
        "two revisions and a header:\n{history}"
    );

    // CRD upgrade, the documented step: server-side apply of the chart's crds/ over the
    // CRDs Helm created. Simulate an older CRD first (a field missing from the schema).
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let path = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/natOutgoing";
    let mut old = serde_json::to_value(crds.get("ippools.sinew.dev").await?)?;
    let props = path.rsplit_once('/').map_or(path, |(parent, _)| parent);
    old.pointer_mut(props)
        .and_then(|p| p.as_object_mut())
        .and_then(|p| p.remove("natOutgoing"))
        .ok_or("natOutgoing not in the CRD")?;
    crds.replace(
        "ippools.sinew.dev",
        &PostParams::default(),
        &serde_json::from_value(old)?,
    )
    .await?;
    let kubectl = ctx.cp.tools().path("kubectl")?;
    let out = Command::new(kubectl)
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(sinew_e2e::tools::repo_root().join("charts/sinew/crds"))
        .env("KUBECONFIG", ctx.cp.kubeconfig_path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let schema = serde_json::to_value(crds.get("ippools.sinew.dev").await?)?;
    assert!(
        schema.pointer(path).is_some(),
        "the CRD upgrade did not restore natOutgoing"
    );

    // uninstall: Helm's pre-delete hook runs first (here as a process with the hook's own
    // service account, since no Job controller runs), then Helm deletes the rest.
    cluster.stop_pod(a).await;
    cluster.stop_pod(b).await;
    let hooks = helm.run(&["get", "hooks", "sinew", "--namespace", NAMESPACE])?;
    assert!(hooks.contains("sinew-operator\", \"uninstall\""), "{hooks}");
    sinew_e2e::install::apply_manifest(&ctx.client, &hooks).await?;
    let hook_kubeconfig = ctx.cp.dir().join("uninstall.kubeconfig");
    sinew_e2e::helm::service_account_kubeconfig(
        &Endpoint::of(&ctx.cp),
        &ctx.client,
        "sinew-uninstall",
        None,
        &hook_kubeconfig,
    )
    .await?;
    let mut cmd = Command::new(sinew_e2e::plugin::workspace_binary(
        "sinew-operator",
        "sinew-operator",
    ));
    cmd.args(["uninstall", "--timeout-seconds", "60"])
        .env("KUBECONFIG", &hook_kubeconfig);
    let hook = Supervised::spawn("uninstall hook", cmd, &ctx.cp.dir().join("uninstall.log"))?;
    let status = wait_for(
        "the uninstall hook",
        Duration::from_secs(70),
        log,
        || async { Ok(hook.try_exit()) },
    )
    .await?;
    assert!(
        status.success(),
        "uninstall hook failed:\n{}",
        hook.log_tail(20)
    );
    helm.run(&["uninstall", "sinew", "--namespace", NAMESPACE, "--no-hooks"])?;
    sinew_e2e::install::delete_manifest(&ctx.client, &hooks).await?;
    drop(operator);

    for node in &cluster.nodes {
        let left = cluster.leftovers(&node.name);
        assert!(left.is_empty(), "{} is not clean: {left:?}", node.name);
    }
    assert!(
        networks
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    assert!(pools.list(&ListParams::default()).await?.items.is_empty());
    let blocks: Api<IPBlock> = Api::all(ctx.client.clone());
    assert!(blocks.list(&ListParams::default()).await?.items.is_empty());
    assert!(daemonsets.get_opt("sinew-node").await?.is_none());
    assert!(deployments.get_opt("sinew-operator").await?.is_none());
    // Helm's policy: the CRDs stay.
    assert!(crds.get_opt("ippools.sinew.dev").await?.is_some());
    Ok(())
}
