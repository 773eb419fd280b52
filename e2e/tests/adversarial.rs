//! A compromised node against the real API server: with the identity its agent has (a
//! `sinew-node` token bound to the agent's Pod on that node, the chart's RBAC and admission
//! policies), every write that could hurt another node or the cluster is refused, and the
//! agent's own legitimate writes still go through. Needs the Go-built control plane.
//!
//! The blocks are the point: peers turn every `IPBlock` into a route, so a block that is not
//! canonical, lies outside its pool or has another prefix than the pool's blocks would let one
//! node pull other nodes' traffic to itself.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sinew_crds::{ClusterNetwork, IPBlock, IPBlockUsage, IPPool};
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::helm::{Helm, NAMESPACE};
use sinew_e2e::tests;

/// The compromised node.
const ME: &str = "adv-a";
/// Another node, the victim.
const OTHER: &str = "adv-b";

/// The IPv4 pool (blocks /26), the IPv6 pool (blocks /122) and a pool with /28 blocks.
const POOLS: [(&str, &str, Option<u8>); 3] = [
    ("adv-v4", "10.150.0.0/16", None),
    ("adv-v6", "fd00:150::/48", None),
    ("adv-28", "10.151.0.0/16", Some(28)),
];

/// Kinds of the chart that make up the agent's identity and the admission policies.
const POLICY_KINDS: [&str; 7] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

fn main() -> ExitCode {
    sinew_e2e::harness::run(
        |ctx| async move { setup(ctx).await.map_err(|e| e.to_string()) },
        tests![
            another_nodes_blocks_cannot_be_created_deleted_or_reported,
            another_nodes_node_cannot_be_written,
            blocks_with_non_canonical_names_are_refused,
            blocks_outside_their_pool_are_refused,
            blocks_with_another_prefix_than_the_pools_blocks_are_refused,
            blocks_labelled_for_another_node_or_pool_are_refused,
            its_own_nodes_labels_taints_and_spec_cannot_change,
            its_own_nodes_status_cannot_change_beyond_network_unavailable,
            only_sinew_annotations_of_its_own_node_can_change,
            nodes_cannot_be_created_or_deleted,
            objects_in_namespaces_are_out_of_reach,
            pools_networks_and_block_specs_cannot_be_written,
            the_agents_own_writes_still_succeed,
            events_about_anything_but_its_own_node_are_refused,
        ],
    )
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn setup(ctx: Ctx) -> Result<(), BoxError> {
    sinew_e2e::install::install_crds(&ctx.client).await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    sinew_e2e::install::apply_manifest(&ctx.client, &ns.to_string()).await?;
    let params = PatchParams::apply("sinew-e2e");
    for (name, cidr, block_size) in POOLS {
        let mut spec = json!({"cidr": cidr});
        if let Some(size) = block_size {
            spec["blockSize"] = json!(size);
        }
        let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
                          "metadata": {"name": name}, "spec": spec});
        Api::<IPPool>::all(ctx.client.clone())
            .patch(name, &params, &Patch::Apply(&pool))
            .await?;
    }
    // Both nodes as a kubelet and an admin would have left them.
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    for name in [ME, OTHER] {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
            "labels": {"kubernetes.io/hostname": name, "adv.example/role": "worker"},
            "annotations": {"adv.example/owner": "ops"}},
            "spec": {"taints": [{"key": "adv.example/dedicated", "value": "db", "effect": "NoSchedule"}]}});
        nodes.patch(name, &params, &Patch::Apply(&node)).await?;
        let status = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": if name == ME { "192.0.2.1" } else { "192.0.2.2" }}],
                       "capacity": {"cpu": "2", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "kubelet is posting ready status",
                                       "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        nodes
            .patch_status(name, &params, &Patch::Apply(&status))
            .await?;
    }
    // The chart's agent identity and admission policies, rendered by the real helm.
    let helm = Helm::new(&ctx.cp)?;
    let rendered = helm.run(&[
        "template",
        "sinew",
        &Helm::chart(),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.37.2",
    ])?;
    let mut keep = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if POLICY_KINDS.contains(&value["kind"].as_str().unwrap_or_default()) {
            keep.push(serde_yaml::to_string(&value)?);
        }
    }
    let applied = sinew_e2e::install::apply_manifest(&ctx.client, &keep.join("---\n")).await?;
    eprintln!("applied {applied:?}");
    // Policies take effect once the API server has loaded them: wait for one refusal each.
    let agent = agent_client(&ctx, ME).await?;
    agent_client(&ctx, OTHER).await?;
    wait_refused("the agent policy", || {
        let agent = agent.clone();
        async move {
            let block = block_object(&ip_block("10.150.255.192/26", "adv-v4", OTHER));
            Api::<IPBlock>::all(agent)
                .create(&dry_run(), &block)
                .await
                .map(|_| ())
        }
    })
    .await?;
    if applied
        .iter()
        .any(|a| a.starts_with("ValidatingAdmissionPolicyBinding/sinew-ipblock"))
    {
        let admin = ctx.client.clone();
        wait_refused("the IPBlock content policy", || {
            let admin = admin.clone();
            async move {
                let block = block_object(&ip_block("10.99.0.0/26", "adv-v4", ME));
                Api::<IPBlock>::all(admin)
                    .create(&dry_run(), &block)
                    .await
                    .map(|_| ())
            }
        })
        .await?;
    }
    Ok(())
}

async fn wait_refused<F, Fut>(what: &str, mut attempt: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => return Ok(()),
            Ok(()) => {}
            Err(e) => return Err(format!("probing {what}: {e}").into()),
        }
        if Instant::now() > deadline {
            return Err(format!("{what} is not in force after 30s").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        field_manager: None,
    }
}

/// A client with the identity of the agent on `node` (a token bound to its Pod there).
async fn agent_client(ctx: &Ctx, node: &str) -> Result<kube::Client, BoxError> {
    // Tests run in parallel: each client gets a file of its own.
    static CLIENTS: AtomicUsize = AtomicUsize::new(0);
    let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
    let path = ctx
        .cp
        .dir()
        .join(format!("adversary-{node}-{n}.kubeconfig"));
    let api = sinew_e2e::helm::Endpoint::of(&ctx.cp);
    sinew_e2e::helm::agent_kubeconfig(&api, &ctx.client, node, &path).await?;
    sinew_e2e::helm::client_from(&path).await
}

/// An `IPBlock` of `cidr` with its canonical name, as the agent of `node` would claim it.
fn ip_block(cidr: &str, pool: &str, node: &str) -> Value {
    let name = cidr
        .parse::<sinew_crds::Cidr>()
        .map(|c| c.object_name())
        .unwrap_or_else(|_| "unparsable".into());
    named_block(&name, cidr, pool, node)
}

fn named_block(name: &str, cidr: &str, pool: &str, node: &str) -> Value {
    json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
           "metadata": {"name": name, "labels": {"sinew.dev/node": node, "sinew.dev/pool": pool}},
           "spec": {"pool": pool, "cidr": cidr, "node": node}})
}

fn block_object(value: &Value) -> IPBlock {
    serde_json::from_value(value.clone()).expect("static IPBlock")
}

/// Collects the verdicts of one test, so that a run lists every write that got through.
#[derive(Default)]
struct Verdicts {
    failures: Vec<String>,
}

impl Verdicts {
    /// `result` must be a refusal (403 or 422) whose message contains `because`.
    fn refused<T>(&mut self, what: &str, result: Result<T, kube::Error>, because: &str) {
        match result {
            Err(kube::Error::Api(e))
                if (e.code == 403 || e.code == 422) && e.message.contains(because) =>
            {
                eprintln!("refused as expected: {what}: {}", e.message);
            }
            Err(e) => self
                .failures
                .push(format!("{what}: refused, but not with {because:?}: {e}")),
            Ok(_) => self.failures.push(format!("{what}: ALLOWED")),
        }
    }

    /// `result` must be a success.
    fn allowed<T>(&mut self, what: &str, result: Result<T, kube::Error>) {
        if let Err(e) = result {
            self.failures.push(format!("{what}: refused: {e}"));
        }
    }

    fn finish(self) -> TestResult {
        if self.failures.is_empty() {
            Ok(())
        } else {
            Err(format!("\n  {}", self.failures.join("\n  ")).into())
        }
    }
}

/// What RBAC says when the verb is not granted at all.
const RBAC: &str = "forbidden";
/// What the agent policy says about objects of other nodes.
const NOT_MINE: &str = "its own node";

async fn another_nodes_blocks_cannot_be_created_deleted_or_reported(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let as_agent: Api<IPBlock> = Api::all(agent);
    let admin: Api<IPBlock> = Api::all(ctx.client.clone());
    let mut v = Verdicts::default();

    let theirs = ip_block("10.150.1.0/26", "adv-v4", OTHER);
    let created = as_agent
        .create(&PostParams::default(), &block_object(&theirs))
        .await;
    v.refused("create a block for another node", created, NOT_MINE);

    let block = admin
        .create(&PostParams::default(), &block_object(&theirs))
        .await?;
    let name = "10-150-1-0-26";
    // Its usage, as its own node would write it.
    let usage = |node: &str| {
        json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
               "metadata": {"name": name, "ownerReferences": [{"apiVersion": "sinew.dev/v1alpha1",
                            "kind": "IPBlock", "name": name, "uid": block.metadata.uid}]},
               "spec": {"pool": "adv-v4", "cidr": "10.150.1.0/26", "node": node}})
    };
    let usages_as_agent: Api<IPBlockUsage> = Api::all(agent_client(&ctx, ME).await?);
    let usages: Api<IPBlockUsage> = Api::all(ctx.client.clone());
    let created = usages_as_agent
        .patch(
            name,
            &PatchParams::apply("sinew-node/adv-a"),
            &Patch::Apply(&usage(OTHER)),
        )
        .await;
    v.refused(
        "create the usage of another node's block",
        created,
        NOT_MINE,
    );
    usages
        .patch(
            name,
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&usage(OTHER)),
        )
        .await?;
    let forged = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": name},
                        "status": {"allocated": 1, "allocations": [{"ip": "10.150.1.1", "containerId": "x", "interface": "eth0", "generation": 1}]}});
    let status = usages_as_agent
        .patch_status(
            name,
            &PatchParams::apply("sinew-node/adv-a"),
            &Patch::Apply(&forged),
        )
        .await;
    v.refused(
        "report allocations of another node's block",
        status,
        NOT_MINE,
    );
    let merge = usages_as_agent
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&forged))
        .await;
    v.refused("merge-patch another node's block usage", merge, NOT_MINE);
    let deleted = usages_as_agent.delete(name, &DeleteParams::default()).await;
    v.refused("delete another node's block usage", deleted, RBAC);
    // A usage of its own must name its block as owner.
    let mine = ip_block("10.150.4.0/26", "adv-v4", ME);
    admin
        .create(&PostParams::default(), &block_object(&mine))
        .await?;
    let unowned = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
                         "metadata": {"name": "10-150-4-0-26"},
                         "spec": {"pool": "adv-v4", "cidr": "10.150.4.0/26", "node": ME}});
    let created = usages_as_agent
        .patch(
            "10-150-4-0-26",
            &PatchParams::apply("sinew-node/adv-a"),
            &Patch::Apply(&unowned),
        )
        .await;
    v.refused(
        "write a usage its block does not own",
        created,
        "owned by the IPBlock",
    );
    let deleted = as_agent.delete(name, &DeleteParams::default()).await;
    v.refused("delete another node's block", deleted, NOT_MINE);
    v.finish()
}

async fn another_nodes_node_cannot_be_written(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let nodes: Api<Node> = Api::all(agent);
    let mut v = Verdicts::default();
    let annotation =
        json!({"metadata": {"annotations": {"sinew.dev/vtep-mac": "02:00:00:00:00:66"}}});
    v.refused(
        "annotate another node (merge patch)",
        nodes
            .patch(OTHER, &PatchParams::default(), &Patch::Merge(&annotation))
            .await,
        NOT_MINE,
    );
    let apply = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": OTHER,
                       "annotations": {"sinew.dev/node-state": "{}"}}});
    v.refused(
        "annotate another node (server-side apply)",
        nodes
            .patch(
                OTHER,
                &PatchParams::apply("sinew-node/adv-a"),
                &Patch::Apply(&apply),
            )
            .await,
        NOT_MINE,
    );
    let cordon = json!({"spec": {"unschedulable": true}});
    v.refused(
        "cordon another node",
        nodes
            .patch(OTHER, &PatchParams::default(), &Patch::Merge(&cordon))
            .await,
        NOT_MINE,
    );
    let condition = json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "True",
                           "reason": "Evil", "message": "x", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    v.refused(
        "set another node's NetworkUnavailable",
        nodes
            .patch_status(
                OTHER,
                &PatchParams::default(),
                &Patch::Strategic(&condition),
            )
            .await,
        NOT_MINE,
    );
    v.finish()
}

async fn blocks_with_non_canonical_names_are_refused(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let api: Api<IPBlock> = Api::all(agent);
    let mut v = Verdicts::default();
    for (name, cidr, pool) in [
        ("mine", "10.150.2.0/26", "adv-v4"),
        ("10-150-2-064-26", "10.150.2.64/26", "adv-v4"),
        // Squatting the name of another block, so that its rightful claim fails.
        ("10-150-2-128-26", "10.150.2.192/26", "adv-v4"),
        ("fd00-150--40-122", "fd00:150::40/122", "adv-v6"),
        (
            "fd00-0150-0000-0000-0000-0000-0000-0080-122",
            "fd00:150::40/122",
            "adv-v6",
        ),
    ] {
        let result = api
            .create(
                &PostParams::default(),
                &block_object(&named_block(name, cidr, pool, ME)),
            )
            .await;
        v.refused(
            &format!("block {name} for {cidr}"),
            result,
            "canonical name",
        );
    }
    v.finish()
}

async fn blocks_outside_their_pool_are_refused(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let api: Api<IPBlock> = Api::all(agent);
    let mut v = Verdicts::default();
    for (cidr, pool) in [
        // Another range altogether: the route would steal any destination.
        ("10.99.0.0/26", "adv-v4"),
        ("192.0.2.0/26", "adv-v4"),
        // Another pool's range, under this pool's name.
        ("10.151.0.64/26", "adv-v4"),
        ("fd00:150::/122", "adv-v4"),
        ("fd00:151::/122", "adv-v6"),
        ("10.150.3.0/28", "adv-28"),
    ] {
        let result = api
            .create(
                &PostParams::default(),
                &block_object(&ip_block(cidr, pool, ME)),
            )
            .await;
        v.refused(
            &format!("block {cidr} in pool {pool}"),
            result,
            "is not inside",
        );
    }
    v.finish()
}

async fn blocks_with_another_prefix_than_the_pools_blocks_are_refused(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let api: Api<IPBlock> = Api::all(agent);
    let mut v = Verdicts::default();
    for (cidr, pool) in [
        // Wider than a block: a route over many other nodes' blocks.
        ("10.150.0.0/16", "adv-v4"),
        ("10.150.4.0/24", "adv-v4"),
        ("fd00:150::/120", "adv-v6"),
        ("10.151.0.0/26", "adv-28"),
        // Narrower: more specific than another node's block route.
        ("10.150.5.0/28", "adv-v4"),
        ("10.150.5.7/32", "adv-v4"),
        ("fd00:150::80/128", "adv-v6"),
    ] {
        let result = api
            .create(
                &PostParams::default(),
                &block_object(&ip_block(cidr, pool, ME)),
            )
            .await;
        v.refused(
            &format!("block {cidr} in pool {pool}"),
            result,
            "prefix length",
        );
    }
    v.finish()
}

async fn blocks_labelled_for_another_node_or_pool_are_refused(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let api: Api<IPBlock> = Api::all(agent);
    let mut v = Verdicts::default();
    let mut block = ip_block("10.150.6.0/26", "adv-v4", ME);
    block["metadata"]["labels"]["sinew.dev/node"] = json!(OTHER);
    v.refused(
        "a block of this node labelled for another",
        api.create(&PostParams::default(), &block_object(&block))
            .await,
        "sinew.dev/node",
    );
    let mut block = ip_block("10.150.6.64/26", "adv-v4", ME);
    block["metadata"]["labels"]["sinew.dev/pool"] = json!("adv-v6");
    v.refused(
        "a block labelled with another pool",
        api.create(&PostParams::default(), &block_object(&block))
            .await,
        "sinew.dev/pool",
    );
    v.finish()
}

async fn its_own_nodes_labels_taints_and_spec_cannot_change(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let nodes: Api<Node> = Api::all(agent);
    let mut v = Verdicts::default();
    let merge = |patch: Value| {
        let nodes = nodes.clone();
        async move {
            nodes
                .patch(ME, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    };
    for (what, patch, because) in [
        (
            "add a label",
            json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}),
            "metadata.labels",
        ),
        (
            "change a label",
            json!({"metadata": {"labels": {"adv.example/role": "db"}}}),
            "metadata.labels",
        ),
        (
            "remove a label",
            json!({"metadata": {"labels": {"adv.example/role": null}}}),
            "metadata.labels",
        ),
        (
            "add a taint",
            json!({"spec": {"taints": [
                {"key": "adv.example/dedicated", "value": "db", "effect": "NoSchedule"},
                {"key": "evil", "effect": "NoExecute"}]}}),
            "spec.taints",
        ),
        (
            "remove its taints",
            json!({"spec": {"taints": null}}),
            "spec.taints",
        ),
        (
            "cordon itself",
            json!({"spec": {"unschedulable": true}}),
            "spec.unschedulable",
        ),
        (
            "set its pod CIDR",
            json!({"spec": {"podCIDR": "10.150.0.0/16", "podCIDRs": ["10.150.0.0/16"]}}),
            "spec",
        ),
        (
            "set its provider ID",
            json!({"spec": {"providerID": "evil://adv-a"}}),
            "spec",
        ),
        (
            "add a finalizer",
            json!({"metadata": {"finalizers": ["evil.example/keep"]}}),
            "metadata.finalizers",
        ),
    ] {
        v.refused(what, merge(patch).await, because);
    }
    // The status subresource does not reset metadata: labels through it are refused too.
    let labels = json!({"metadata": {"labels": {"adv.example/role": "db"}}});
    v.refused(
        "change a label through nodes/status",
        nodes
            .patch_status(ME, &PatchParams::default(), &Patch::Merge(&labels))
            .await,
        "metadata.labels",
    );
    v.finish()
}

async fn its_own_nodes_status_cannot_change_beyond_network_unavailable(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let nodes: Api<Node> = Api::all(agent);
    let mut v = Verdicts::default();
    for (what, patch) in [
        (
            "set its Ready condition",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Evil",
                   "message": "x", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        ),
        (
            "add another condition",
            json!({"status": {"conditions": [{"type": "MemoryPressure", "status": "True", "reason": "Evil",
                   "message": "x", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        ),
        (
            "change its address",
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]}}),
        ),
        (
            "change its capacity",
            json!({"status": {"capacity": {"pods": "10000"}}}),
        ),
    ] {
        let result = nodes
            .patch_status(ME, &PatchParams::default(), &Patch::Strategic(&patch))
            .await;
        v.refused(what, result, "status");
    }
    v.finish()
}

async fn only_sinew_annotations_of_its_own_node_can_change(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let nodes: Api<Node> = Api::all(agent);
    let mut v = Verdicts::default();
    for (what, patch) in [
        (
            "add a foreign annotation",
            json!({"metadata": {"annotations": {"evil.example/x": "1"}}}),
        ),
        (
            "change a foreign annotation",
            json!({"metadata": {"annotations": {"adv.example/owner": "evil"}}}),
        ),
        (
            "remove a foreign annotation",
            json!({"metadata": {"annotations": {"adv.example/owner": null}}}),
        ),
        (
            "add a look-alike annotation",
            json!({"metadata": {"annotations": {"sinew.dev.evil.example/x": "1"}}}),
        ),
    ] {
        let result = nodes
            .patch(ME, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        v.refused(what, result, "metadata.annotations");
        let result = nodes
            .patch_status(ME, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        v.refused(
            &format!("{what} through nodes/status"),
            result,
            "metadata.annotations",
        );
    }
    v.finish()
}

async fn nodes_cannot_be_created_or_deleted(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let nodes: Api<Node> = Api::all(agent);
    let mut v = Verdicts::default();
    let node: Node = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "adv-evil"}}),
    )?;
    v.refused(
        "create a node",
        nodes.create(&PostParams::default(), &node).await,
        RBAC,
    );
    let apply = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "adv-evil"}});
    v.refused(
        "create a node by server-side apply",
        nodes
            .patch(
                "adv-evil",
                &PatchParams::apply("sinew-node/adv-a"),
                &Patch::Apply(&apply),
            )
            .await,
        RBAC,
    );
    v.refused(
        "delete its own node",
        nodes.delete(ME, &DeleteParams::default()).await,
        RBAC,
    );
    v.refused(
        "delete another node",
        nodes.delete(OTHER, &DeleteParams::default()).await,
        RBAC,
    );
    v.finish()
}

async fn objects_in_namespaces_are_out_of_reach(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let mut v = Verdicts::default();
    for ns in ["kube-system", NAMESPACE, "default"] {
        let secrets: Api<Secret> = Api::namespaced(agent.clone(), ns);
        v.refused(
            &format!("list secrets in {ns}"),
            secrets.list(&ListParams::default()).await,
            RBAC,
        );
        v.refused(
            &format!("get a secret in {ns}"),
            secrets.get("any").await,
            RBAC,
        );
        let secret: Secret = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "adv"}}),
        )?;
        v.refused(
            &format!("create a secret in {ns}"),
            secrets.create(&PostParams::default(), &secret).await,
            RBAC,
        );
        let configmaps: Api<ConfigMap> = Api::namespaced(agent.clone(), ns);
        v.refused(
            &format!("read configmaps in {ns}"),
            configmaps.list(&ListParams::default()).await,
            RBAC,
        );
        let cm: ConfigMap = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "adv"}}),
        )?;
        v.refused(
            &format!("create a configmap in {ns}"),
            configmaps.create(&PostParams::default(), &cm).await,
            RBAC,
        );
        let pods: Api<Pod> = Api::namespaced(agent.clone(), ns);
        let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "adv"},
            "spec": {"nodeName": ME, "hostNetwork": true, "containers": [{"name": "x", "image": "evil"}]}}))?;
        v.refused(
            &format!("create a pod in {ns}"),
            pods.create(&PostParams::default(), &pod).await,
            RBAC,
        );
        // Listing and watching pods is granted (NetworkPolicy reads every pod's labels,
        // addresses and named ports); changing one, or reading its logs, is not.
        v.refused(
            &format!("relabel a pod in {ns}"),
            pods.patch(
                "any",
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {"app": "evil"}}})),
            )
            .await,
            RBAC,
        );
        v.refused(
            &format!("read a pod's logs in {ns}"),
            pods.logs("any", &Default::default()).await,
            RBAC,
        );
    }
    // Its own agent Pod, too.
    let pods: Api<Pod> = Api::namespaced(agent.clone(), NAMESPACE);
    v.refused(
        "delete its own agent pod",
        pods.delete(&format!("sinew-node-{ME}"), &DeleteParams::default())
            .await,
        RBAC,
    );
    v.finish()
}

async fn pools_networks_and_block_specs_cannot_be_written(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let mut v = Verdicts::default();
    let pools: Api<IPPool> = Api::all(agent.clone());
    let pool: IPPool =
        serde_json::from_value(json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "adv-evil"}, "spec": {"cidr": "10.0.0.0/8"}}))?;
    v.refused(
        "create a pool",
        pools.create(&PostParams::default(), &pool).await,
        RBAC,
    );
    let widen = json!({"spec": {"mode": "Routed", "disabled": true}});
    v.refused(
        "edit a pool",
        pools
            .patch("adv-v4", &PatchParams::default(), &Patch::Merge(&widen))
            .await,
        RBAC,
    );
    let status = json!({"status": {"conditions": []}});
    v.refused(
        "write a pool's status",
        pools
            .patch_status("adv-v4", &PatchParams::default(), &Patch::Merge(&status))
            .await,
        RBAC,
    );
    v.refused(
        "delete a pool",
        pools.delete("adv-v4", &DeleteParams::default()).await,
        RBAC,
    );
    let networks: Api<ClusterNetwork> = Api::all(agent.clone());
    let network: ClusterNetwork =
        serde_json::from_value(json!({"apiVersion": "sinew.dev/v1alpha1",
        "kind": "ClusterNetwork", "metadata": {"name": "default"}, "spec": {}}))?;
    v.refused(
        "create the ClusterNetwork",
        networks.create(&PostParams::default(), &network).await,
        RBAC,
    );
    let apply = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork",
                       "metadata": {"name": "default"}, "spec": {"cni": {"binDir": "/tmp/evil"}}});
    v.refused(
        "apply the ClusterNetwork",
        networks
            .patch(
                "default",
                &PatchParams::apply("sinew-node/adv-a"),
                &Patch::Apply(&apply),
            )
            .await,
        RBAC,
    );
    v.refused(
        "delete the ClusterNetwork",
        networks.delete("default", &DeleteParams::default()).await,
        RBAC,
    );
    // A block's spec and metadata (its own included) are not the agent's to edit.
    let admin: Api<IPBlock> = Api::all(ctx.client.clone());
    admin
        .create(
            &PostParams::default(),
            &block_object(&ip_block("10.150.7.0/26", "adv-v4", ME)),
        )
        .await?;
    let blocks: Api<IPBlock> = Api::all(agent);
    let release = json!({"metadata": {"annotations": {"sinew.dev/release": "[]"}}});
    v.refused(
        "edit its own block's annotations",
        blocks
            .patch(
                "10-150-7-0-26",
                &PatchParams::default(),
                &Patch::Merge(&release),
            )
            .await,
        RBAC,
    );
    v.finish()
}

async fn the_agents_own_writes_still_succeed(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let mut v = Verdicts::default();
    let blocks: Api<IPBlock> = Api::all(agent.clone());
    let usages: Api<IPBlockUsage> = Api::all(agent.clone());
    let manager = PatchParams::apply("sinew-node/adv-a");
    for (cidr, pool) in [
        ("10.150.8.0/26", "adv-v4"),
        ("fd00:150::1:0/122", "adv-v6"),
        ("10.151.0.16/28", "adv-28"),
    ] {
        let block = ip_block(cidr, pool, ME);
        let name = block["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let claimed = blocks
            .create(
                &PostParams {
                    dry_run: false,
                    field_manager: Some("sinew-node/adv-a".into()),
                },
                &block_object(&block),
            )
            .await;
        let uid = claimed.as_ref().ok().and_then(|b| b.metadata.uid.clone());
        v.allowed(&format!("claim {cidr} in {pool}"), claimed);
        // Its usage, owned by the block, as the agent writes it.
        let usage = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "sinew.dev/v1alpha1",
                         "kind": "IPBlock", "name": name, "uid": uid}]},
            "spec": {"pool": pool, "cidr": cidr, "node": ME}});
        v.allowed(
            &format!("create the usage of {cidr}"),
            usages.patch(&name, &manager, &Patch::Apply(&usage)).await,
        );
        let status = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": name},
                            "status": {"allocated": 0}});
        v.allowed(
            &format!("report {cidr}"),
            usages
                .patch_status(&name, &manager, &Patch::Apply(&status))
                .await,
        );
        v.allowed(
            &format!("release {cidr}"),
            blocks.delete(&name, &DeleteParams::default()).await,
        );
    }
    // Its Node: the annotations it publishes (server-side apply, as the agent does) and the
    // NetworkUnavailable condition (strategic merge, as the agent does), more than once.
    let nodes: Api<Node> = Api::all(agent.clone());
    for round in 0..2 {
        let annotations = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": ME,
            "annotations": {"sinew.dev/vtep-mac": "02:00:00:00:00:01",
                            "sinew.dev/node-state": json!({"ready": round == 1}).to_string()}}});
        v.allowed(
            "publish its sinew.dev annotations",
            nodes.patch(ME, &manager, &Patch::Apply(&annotations)).await,
        );
        let condition = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": ME},
            "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "SinewIsUp",
                "message": "sinew installed the CNI configuration and programmed the routes of this node",
                "lastTransitionTime": format!("2026-01-01T00:00:0{round}Z"),
                "lastHeartbeatTime": format!("2026-01-01T00:00:0{round}Z")}]}});
        v.allowed(
            "set its NetworkUnavailable condition",
            nodes
                .patch_status(ME, &manager, &Patch::Strategic(&condition))
                .await,
        );
    }
    // The clean-up report removes nothing but rewrites its own annotation.
    let cleaned = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": ME,
        "annotations": {"sinew.dev/node-state": json!({"ready": false, "cleanedUp": true}).to_string()}}});
    v.allowed(
        "report its clean-up",
        nodes.patch(ME, &manager, &Patch::Apply(&cleaned)).await,
    );
    let node = Api::<Node>::all(ctx.client.clone()).get(ME).await?;
    let unavailable = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "NetworkUnavailable");
    if unavailable.map(|c| c.status) != Some("False".into()) {
        v.failures
            .push("NetworkUnavailable=False did not land on the Node".into());
    }
    // Install events (the agent records them on its Node).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(agent, "default");
    let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "adv-a.conflist", "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "sinew.dev/sinew-node",
        "reportingInstance": ME, "action": "Install", "reason": "ConflistInstalled", "type": "Normal",
        "note": "test", "regarding": {"kind": "Node", "name": ME, "apiVersion": "v1"}}))?;
    v.allowed(
        "record an install event",
        events.create(&PostParams::default(), &event).await,
    );
    v.finish()
}

/// An Event of the agent `me` about `kind`/`name`, in `namespace`.
fn agent_event(
    namespace: &str,
    name: &str,
    kind: &str,
    about: &str,
) -> k8s_openapi::api::events::v1::Event {
    serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "sinew.dev/sinew-node",
        "reportingInstance": ME, "action": "Diagnose", "reason": "RouteConflict", "type": "Warning",
        "note": "forged", "regarding": {"kind": kind, "name": about, "apiVersion": "v1",
                                        "namespace": if kind == "Node" { "" } else { namespace }}}))
    .expect("a static Event")
}

async fn events_about_anything_but_its_own_node_are_refused(ctx: Ctx) -> TestResult {
    let agent = agent_client(&ctx, ME).await?;
    let mut v = Verdicts::default();
    let in_ns =
        |ns: &str| Api::<k8s_openapi::api::events::v1::Event>::namespaced(agent.clone(), ns);
    // The policy takes effect once the API server has loaded it: wait for the first refusal.
    wait_refused("an Event about another node", || {
        let events = in_ns("default");
        async move {
            events
                .create(
                    &dry_run(),
                    &agent_event("default", "adv-ev-other", "Node", OTHER),
                )
                .await
                .map(|_| ())
        }
    })
    .await?;
    v.refused(
        "an Event about another node",
        in_ns("default")
            .create(
                &PostParams::default(),
                &agent_event("default", "adv-ev-other-2", "Node", OTHER),
            )
            .await,
        "sinew-node may record Events only about its own Node",
    );
    v.refused(
        "an Event about a pod",
        in_ns("default")
            .create(
                &PostParams::default(),
                &agent_event("default", "adv-ev-pod", "Pod", "web"),
            )
            .await,
        "sinew-node may record Events only about its own Node",
    );
    v.refused(
        "an Event in another namespace",
        in_ns("kube-system")
            .create(
                &PostParams::default(),
                &agent_event("kube-system", "adv-ev-ns", "Node", ME),
            )
            .await,
        "forbidden",
    );
    v.allowed(
        "an Event about its own Node",
        in_ns("default")
            .create(
                &PostParams::default(),
                &agent_event("default", "adv-ev-own", "Node", ME),
            )
            .await,
    );
    v.finish()
}
