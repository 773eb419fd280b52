//! The sinew.dev API against a real kube-apiserver: the generated CRDs install (the documented
//! `kubectl apply --server-side` step, without warnings), the examples are accepted, and every
//! invalid input is refused at apply time with the field named.

use std::process::{Command, ExitCode};
use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sinew_crds::{ClusterNetwork, IPBlock, IPPool};
use sinew_e2e::harness::{Ctx, TestResult};
use sinew_e2e::tests;

/// What `kubectl apply --server-side -f charts/sinew/crds/` printed on stderr in the setup.
static CRD_APPLY_STDERR: OnceLock<String> = OnceLock::new();

fn main() -> ExitCode {
    sinew_e2e::harness::run(
        |ctx| async move {
            // The CRDs go in the way the README tells users to upgrade them, from the
            // checked-in chart files; then the typed install waits until they are Established.
            let kubectl = ctx.cp.tools().path("kubectl").map_err(|e| e.to_string())?;
            let out = Command::new(kubectl)
                .arg(format!(
                    "--kubeconfig={}",
                    ctx.cp.kubeconfig_path().display()
                ))
                .args(["apply", "--server-side", "-f"])
                .arg(sinew_e2e::tools::repo_root().join("charts/sinew/crds"))
                .output()
                .map_err(|e| format!("running kubectl: {e}"))?;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if !out.status.success() {
                return Err(format!("kubectl apply of the CRDs failed: {stderr}"));
            }
            CRD_APPLY_STDERR.get_or_init(|| stderr);
            let names = sinew_e2e::install::install_crds(&ctx.client).await?;
            eprintln!("installed and Established: {names:?}");
            Ok(())
        },
        tests![
            generated_crds_are_established_with_status_and_columns,
            applying_the_crds_prints_no_warnings,
            examples_are_accepted_and_defaulted,
            ippool_rejects_malformed_cidr,
            ippool_rejects_cidr_with_host_bits,
            ippool_rejects_unknown_mode,
            ippool_rejects_block_size_shorter_than_pool_prefix,
            ippool_rejects_ipv4_block_size_out_of_bounds,
            ippool_rejects_ipv6_block_size_out_of_bounds,
            ippool_rejects_reserved_outside_pool,
            ippool_rejects_pools_that_can_never_be_right,
            ippool_accepts_ordinary_pools,
            ippool_rejects_wrong_type,
            ippool_rejects_cidr_update,
            ippool_rejects_block_size_update,
            ippool_accepts_mode_update,
            clusternetwork_rejects_other_names,
            clusternetwork_rejects_bad_mtu,
            clusternetwork_rejects_vni_out_of_range,
            clusternetwork_rejects_relative_conf_dir,
            clusternetwork_rejects_unknown_log_level,
            clusternetwork_rejects_bad_duration,
            clusternetwork_rejects_bad_chained_plugin_type,
            ipblock_rejects_spec_change,
            ipblock_rejects_non_canonical_names,
            ipblock_accepts_canonical_names,
            status_is_written_only_through_the_status_subresource,
            kubectl_get_ippools_shows_the_columns,
        ],
    )
}

fn dynamic<K: Resource<DynamicType = ()>>(ctx: &Ctx) -> Api<DynamicObject> {
    Api::all_with(ctx.client.clone(), &ApiResource::erase::<K>(&()))
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "sinew.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("static test object")
}

/// Creates `obj` with a server-side dry run (full validation, nothing stored) and returns the
/// API server's message if it was refused.
async fn dry_run_create(api: &Api<DynamicObject>, obj: &DynamicObject) -> Option<String> {
    let params = PostParams {
        dry_run: true,
        field_manager: Some("sinew-e2e".into()),
    };
    match api.create(&params, obj).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(status.message),
        Err(e) => Some(format!("unexpected client error: {e}")),
    }
}

/// Asserts that creating `obj` is refused with a message that names `field` and says `why`.
async fn assert_rejected(
    api: &Api<DynamicObject>,
    obj: DynamicObject,
    field: &str,
    why: &str,
) -> TestResult {
    match dry_run_create(api, &obj).await {
        None => Err(format!(
            "{} {:?} was accepted",
            obj.types.map(|t| t.kind).unwrap_or_default(),
            obj.metadata.name
        )
        .into()),
        Some(message) if message.contains(field) && message.contains(why) => {
            eprintln!("refused as expected: {message}");
            Ok(())
        }
        Some(message) => Err(format!(
            "refused, but the message does not name {field:?} with {why:?}: {message}"
        )
        .into()),
    }
}

fn pool(name: &str, spec: Value) -> DynamicObject {
    object("IPPool", name, spec)
}

fn network(name: &str, spec: Value) -> DynamicObject {
    object("ClusterNetwork", name, spec)
}

async fn generated_crds_are_established_with_status_and_columns(ctx: Ctx) -> TestResult {
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    // An IPBlock has no status: its allocations are its IPBlockUsage's (decision 95).
    for (name, has_status) in [
        ("clusternetworks.sinew.dev", true),
        ("ippools.sinew.dev", true),
        ("ipblocks.sinew.dev", false),
        ("ipblockusages.sinew.dev", true),
    ] {
        let crd = api.get(name).await?;
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        assert!(established, "{name} is not Established");
        assert_eq!(crd.spec.scope, "Cluster", "{name} must be cluster-scoped");
        let version = &crd.spec.versions[0];
        assert_eq!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            has_status,
            "{name}: status subresource"
        );
        assert!(
            !crd.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .is_empty(),
            "{name} has no short name"
        );
    }
    Ok(())
}

async fn applying_the_crds_prints_no_warnings(_ctx: Ctx) -> TestResult {
    let stderr = CRD_APPLY_STDERR
        .get()
        .ok_or("the setup did not apply the CRDs with kubectl")?;
    // kubectl prints each warning the API server sends as `Warning: <text>`, e.g.
    // `Warning: unrecognized format "uint8"` for a format Kubernetes does not know.
    assert!(
        !stderr.contains("Warning") && !stderr.contains("unrecognized format"),
        "applying charts/sinew/crds printed warnings:\n{stderr}"
    );
    Ok(())
}

fn example(file: &str) -> Result<DynamicObject, Box<dyn std::error::Error + Send + Sync>> {
    let path = sinew_e2e::tools::repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path)?;
    Ok(serde_yaml::from_str(&text)?)
}

async fn examples_are_accepted_and_defaulted(ctx: Ctx) -> TestResult {
    // A minimal (dry-run, before the real one exists) ClusterNetwork gets every default.
    let bare: ClusterNetwork = serde_json::from_value(
        dynamic::<ClusterNetwork>(&ctx)
            .create(
                &PostParams {
                    dry_run: true,
                    field_manager: None,
                },
                &network("default", json!({})),
            )
            .await
            .map(serde_json::to_value)??,
    )?;
    assert_eq!(bare.spec, sinew_crds::ClusterNetworkSpec::default());

    let params = PatchParams::apply("sinew-e2e");
    let networks: Api<ClusterNetwork> = Api::all(ctx.client.clone());
    let cn = example("clusternetwork.yaml")?;
    let created = dynamic::<ClusterNetwork>(&ctx)
        .patch("default", &params, &Patch::Apply(&cn))
        .await?;
    assert_eq!(created.name_any(), "default");
    let cn = networks.get("default").await?;
    assert_eq!(cn.spec.vxlan.port, 4789);
    assert_eq!(cn.spec.cni.chain.len(), 2);

    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    for file in ["ippool-ipv4.yaml", "ippool-ipv6.yaml", "ippool-rack-a.yaml"] {
        let obj = example(file)?;
        let name = obj.name_any();
        dynamic::<IPPool>(&ctx)
            .patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|e| format!("{file} refused: {e}"))?;
    }
    // Defaults are filled in by the API server from the schema.
    let rack = pools.get("rack-a").await?;
    assert!(rack.spec.nat_outgoing, "natOutgoing defaults to true");
    assert!(!rack.spec.disabled);
    assert_eq!(
        rack.spec.block_size, None,
        "blockSize stays unset: the family default applies"
    );
    assert_eq!(rack.spec.effective_block_size(sinew_crds::Family::V4), 26);

    Ok(())
}

async fn ippool_rejects_malformed_cidr(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    assert_rejected(
        &api,
        pool("bad-cidr", json!({"cidr": "10.0.0.0/33"})),
        "spec.cidr",
        "must be a CIDR",
    )
    .await?;
    assert_rejected(
        &api,
        pool("bad-cidr", json!({"cidr": "pods"})),
        "spec.cidr",
        "must be a CIDR",
    )
    .await
}

async fn ippool_rejects_cidr_with_host_bits(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    assert_rejected(
        &api,
        pool("host-bits", json!({"cidr": "10.1.2.3/16"})),
        "spec.cidr",
        "network address",
    )
    .await
}

async fn ippool_rejects_unknown_mode(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    assert_rejected(
        &api,
        pool("bad-mode", json!({"cidr": "10.2.0.0/16", "mode": "BGP"})),
        "spec.mode",
        "Unsupported value",
    )
    .await
}

async fn ippool_rejects_block_size_shorter_than_pool_prefix(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    assert_rejected(
        &api,
        pool(
            "short-block",
            json!({"cidr": "10.3.0.0/24", "blockSize": 22}),
        ),
        "spec.blockSize",
        "must not be shorter than the prefix length of cidr",
    )
    .await
}

async fn ippool_rejects_ipv4_block_size_out_of_bounds(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    assert_rejected(
        &api,
        pool("v4-block", json!({"cidr": "10.0.0.0/8", "blockSize": 16})),
        "spec.blockSize",
        "between 20 and 32",
    )
    .await?;
    assert_rejected(
        &api,
        pool("v4-block", json!({"cidr": "10.0.0.0/8", "blockSize": 33})),
        "spec.blockSize",
        "between 20 and 32",
    )
    .await
}

async fn ippool_rejects_ipv6_block_size_out_of_bounds(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    assert_rejected(
        &api,
        pool("v6-block", json!({"cidr": "fd00::/48", "blockSize": 64})),
        "spec.blockSize",
        "between 116 and 128",
    )
    .await?;
    assert_rejected(
        &api,
        pool("v6-block", json!({"cidr": "fd00::/48", "blockSize": 129})),
        "spec.blockSize",
        "",
    )
    .await
}

async fn ippool_rejects_reserved_outside_pool(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    assert_rejected(
        &api,
        pool(
            "reserved-out",
            json!({"cidr": "10.4.0.0/16", "reserved": ["10.4.0.1", "10.5.0.0/24"]}),
        ),
        "spec.reserved",
        "inside cidr",
    )
    .await?;
    assert_rejected(
        &api,
        pool(
            "reserved-junk",
            json!({"cidr": "10.4.0.0/16", "reserved": ["gateway"]}),
        ),
        "spec.reserved",
        "inside cidr",
    )
    .await
}

async fn ippool_rejects_pools_that_can_never_be_right(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    for (cidr, why) in [
        ("0.0.0.0/0", "prefix length must be at least 8 for IPv4"),
        ("::/0", "at least 32 for IPv6"),
        ("8.0.0.0/7", "prefix length must be at least 8 for IPv4"),
        ("fd00::/16", "at least 32 for IPv6"),
        ("127.0.0.0/8", "loopback"),
        ("127.1.0.0/16", "loopback"),
        ("::1/128", "loopback"),
        ("::/96", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("169.0.0.0/8", "link-local"),
        ("169.254.1.0/24", "link-local"),
        ("fe80::/64", "link-local"),
        ("febf:ffff::/32", "link-local"),
        ("224.0.0.0/8", "multicast"),
        ("239.255.0.0/16", "multicast"),
        ("ff02::/64", "multicast"),
        ("0.0.0.0/8", "unspecified"),
        ("::/128", "unspecified"),
        ("255.255.255.0/24", "broadcast"),
    ] {
        assert_rejected(
            &api,
            pool("never-right", json!({"cidr": cidr})),
            "spec.cidr",
            why,
        )
        .await
        .map_err(|e| format!("{cidr}: {e}"))?;
    }
    Ok(())
}

async fn ippool_accepts_ordinary_pools(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    for cidr in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "100.64.0.0/10",
        "192.168.0.0/16",
        "240.0.0.0/8",
        "169.253.0.0/16",
        "fd00:10:244::/56",
        "fd00::/32",
        "2001:db8::/48",
        "fd00:1::/64",
    ] {
        if let Some(refusal) = dry_run_create(&api, &pool("ordinary", json!({"cidr": cidr}))).await
        {
            return Err(format!("{cidr} was refused: {refusal}").into());
        }
    }
    Ok(())
}

async fn ippool_rejects_wrong_type(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPPool>(&ctx);
    assert_rejected(
        &api,
        pool(
            "wrong-type",
            json!({"cidr": "10.6.0.0/16", "natOutgoing": "yes"}),
        ),
        "spec.natOutgoing",
        "boolean",
    )
    .await?;
    assert_rejected(
        &api,
        pool("no-cidr", json!({"mode": "VXLAN"})),
        "spec.cidr",
        "Required value",
    )
    .await
}

async fn create_pool(ctx: &Ctx, name: &str, spec: Value) -> Result<DynamicObject, kube::Error> {
    dynamic::<IPPool>(ctx)
        .patch(
            name,
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&pool(name, spec)),
        )
        .await
}

async fn update_refused(ctx: &Ctx, name: &str, spec: Value) -> Option<String> {
    match create_pool(ctx, name, spec).await {
        Ok(_) => None,
        Err(kube::Error::Api(s)) => Some(s.message),
        Err(e) => Some(e.to_string()),
    }
}

async fn ippool_rejects_cidr_update(ctx: Ctx) -> TestResult {
    create_pool(&ctx, "immutable-cidr", json!({"cidr": "10.7.0.0/16"})).await?;
    let msg = update_refused(&ctx, "immutable-cidr", json!({"cidr": "10.8.0.0/16"}))
        .await
        .ok_or("changing cidr was accepted")?;
    assert!(
        msg.contains("spec.cidr") && msg.contains("cidr is immutable"),
        "{msg}"
    );
    Ok(())
}

async fn ippool_rejects_block_size_update(ctx: Ctx) -> TestResult {
    create_pool(
        &ctx,
        "immutable-block",
        json!({"cidr": "10.9.0.0/16", "blockSize": 26}),
    )
    .await?;
    let msg = update_refused(
        &ctx,
        "immutable-block",
        json!({"cidr": "10.9.0.0/16", "blockSize": 24}),
    )
    .await
    .ok_or("changing blockSize was accepted")?;
    assert!(
        msg.contains("spec.blockSize") && msg.contains("blockSize is immutable"),
        "{msg}"
    );
    let msg = update_refused(&ctx, "immutable-block", json!({"cidr": "10.9.0.0/16"}))
        .await
        .ok_or("removing blockSize was accepted")?;
    assert!(
        msg.contains("spec.blockSize") && msg.contains("blockSize is immutable"),
        "{msg}"
    );

    create_pool(&ctx, "immutable-unset", json!({"cidr": "10.10.0.0/16"})).await?;
    let msg = update_refused(
        &ctx,
        "immutable-unset",
        json!({"cidr": "10.10.0.0/16", "blockSize": 28}),
    )
    .await
    .ok_or("adding blockSize later was accepted")?;
    assert!(
        msg.contains("spec.blockSize") && msg.contains("blockSize is immutable"),
        "{msg}"
    );
    Ok(())
}

async fn ippool_accepts_mode_update(ctx: Ctx) -> TestResult {
    create_pool(
        &ctx,
        "switching",
        json!({"cidr": "10.11.0.0/16", "mode": "VXLAN"}),
    )
    .await?;
    create_pool(
        &ctx,
        "switching",
        json!({"cidr": "10.11.0.0/16", "mode": "Routed"}),
    )
    .await?;
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let p = pools.get("switching").await?;
    assert_eq!(p.spec.mode, sinew_crds::PoolMode::Routed);
    assert_eq!(
        p.metadata.generation,
        Some(2),
        "a mode edit is a new generation"
    );
    Ok(())
}

async fn clusternetwork_rejects_other_names(ctx: Ctx) -> TestResult {
    let api = dynamic::<ClusterNetwork>(&ctx);
    assert_rejected(
        &api,
        network("production", json!({})),
        "metadata.name",
        "must be 'default'",
    )
    .await
}

async fn clusternetwork_rejects_bad_mtu(ctx: Ctx) -> TestResult {
    let api = dynamic::<ClusterNetwork>(&ctx);
    assert_rejected(
        &api,
        network("default", json!({"mtu": "big"})),
        "spec.mtu",
        "'auto' or a number",
    )
    .await?;
    assert_rejected(
        &api,
        network("default", json!({"mtu": 600})),
        "spec.mtu",
        "'auto' or a number",
    )
    .await?;
    assert_rejected(
        &api,
        network("default", json!({"mtu": 9500})),
        "spec.mtu",
        "'auto' or a number",
    )
    .await
}

async fn clusternetwork_rejects_vni_out_of_range(ctx: Ctx) -> TestResult {
    let api = dynamic::<ClusterNetwork>(&ctx);
    assert_rejected(
        &api,
        network("default", json!({"vxlan": {"vni": 16_777_216}})),
        "spec.vxlan.vni",
        "less than or equal to 16777215",
    )
    .await?;
    assert_rejected(
        &api,
        network("default", json!({"vxlan": {"vni": 0}})),
        "spec.vxlan.vni",
        "greater than or equal to 1",
    )
    .await
}

async fn clusternetwork_rejects_relative_conf_dir(ctx: Ctx) -> TestResult {
    let api = dynamic::<ClusterNetwork>(&ctx);
    assert_rejected(
        &api,
        network("default", json!({"cni": {"confDir": "etc/cni"}})),
        "spec.cni.confDir",
        "absolute path",
    )
    .await
}

async fn clusternetwork_rejects_unknown_log_level(ctx: Ctx) -> TestResult {
    let api = dynamic::<ClusterNetwork>(&ctx);
    assert_rejected(
        &api,
        network("default", json!({"logLevel": "verbose"})),
        "spec.logLevel",
        "Unsupported value",
    )
    .await
}

async fn clusternetwork_rejects_bad_duration(ctx: Ctx) -> TestResult {
    let api = dynamic::<ClusterNetwork>(&ctx);
    assert_rejected(
        &api,
        network("default", json!({"ipam": {"gcInterval": "5 minutes"}})),
        "spec.ipam.gcInterval",
        "should match",
    )
    .await
}

async fn clusternetwork_rejects_bad_chained_plugin_type(ctx: Ctx) -> TestResult {
    let api = dynamic::<ClusterNetwork>(&ctx);
    assert_rejected(
        &api,
        network(
            "default",
            json!({"cni": {"chain": [{"type": "../../bin/sh"}]}}),
        ),
        "spec.cni.chain[0].type",
        "should match",
    )
    .await
}

async fn ipblock_rejects_spec_change(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPBlock>(&ctx);
    let params = PatchParams::apply("sinew-e2e");
    let name = "10-12-0-0-26";
    let block = object(
        "IPBlock",
        name,
        json!({"pool": "p", "cidr": "10.12.0.0/26", "node": "node-a"}),
    );
    api.patch(name, &params, &Patch::Apply(&block)).await?;
    let stolen = object(
        "IPBlock",
        name,
        json!({"pool": "p", "cidr": "10.12.0.0/26", "node": "node-b"}),
    );
    match api
        .patch(name, &params.clone().force(), &Patch::Apply(&stolen))
        .await
    {
        Ok(_) => return Err("moving a block to another node was accepted".into()),
        Err(kube::Error::Api(s))
            if s.message.contains("spec") && s.message.contains("immutable") => {}
        Err(e) => return Err(format!("refused with an unclear message: {e}").into()),
    }
    assert_rejected(
        &api,
        object(
            "IPBlock",
            "x",
            json!({"pool": "p", "cidr": "10.12.0.1/26", "node": "n"}),
        ),
        "spec.cidr",
        "network address",
    )
    .await
}

fn block(name: &str, cidr: &str) -> DynamicObject {
    object(
        "IPBlock",
        name,
        json!({"pool": "p", "cidr": cidr, "node": "node-a"}),
    )
}

async fn ipblock_rejects_non_canonical_names(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPBlock>(&ctx);
    for (name, cidr) in [
        ("my-block", "10.12.1.0/26"),
        // The name of another block (same address, other prefix; another address).
        ("10-12-1-0-24", "10.12.1.0/26"),
        ("10-12-1-64-26", "10.12.1.0/26"),
        // Leading zeros, a trailing dot-like suffix.
        ("10-12-1-064-26", "10.12.1.64/26"),
        ("10-12-1-64-026", "10.12.1.64/26"),
        ("10-12-1-64-26-x", "10.12.1.64/26"),
        // IPv6: compressed, short groups, the prefix missing or padded.
        ("fd00--40-122", "fd00::40/122"),
        ("fd00-0-0-0-0-0-0-40-122", "fd00::40/122"),
        ("fd00-0000-0000-0000-0000-0000-0000-0040", "fd00::40/122"),
        (
            "fd00-0000-0000-0000-0000-0000-0000-0040-0122",
            "fd00::40/122",
        ),
        (
            "fd00-0000-0000-0000-0000-0000-0000-0080-122",
            "fd00::40/122",
        ),
        (
            "fd00-0000-0000-0000-0000-0000-0000-0040-120",
            "fd00::40/122",
        ),
    ] {
        assert_rejected(&api, block(name, cidr), "metadata.name", "canonical name")
            .await
            .map_err(|e| format!("{name} for {cidr}: {e}"))?;
    }
    // The message says which name the block must have.
    let refusal = dry_run_create(&api, &block("my-block", "10.12.1.0/26"))
        .await
        .ok_or("a non-canonical name was accepted")?;
    assert!(refusal.contains("10-12-1-0-26"), "{refusal}");
    Ok(())
}

async fn ipblock_accepts_canonical_names(ctx: Ctx) -> TestResult {
    let api = dynamic::<IPBlock>(&ctx);
    for cidr in [
        "10.12.1.64/26",
        "0.0.0.0/32",
        "255.255.255.255/32",
        "fd00::40/122",
        "fd00:10:244:1::/120",
        "2001:db8:ffff:ffff:ffff:ffff:ffff:ff00/120",
    ] {
        let name = cidr.parse::<sinew_crds::Cidr>()?.object_name();
        if let Some(refusal) = dry_run_create(&api, &block(&name, cidr)).await {
            return Err(format!("{name} for {cidr} was refused: {refusal}").into());
        }
    }
    Ok(())
}

async fn status_is_written_only_through_the_status_subresource(ctx: Ctx) -> TestResult {
    let name = "status-check";
    create_pool(&ctx, name, json!({"cidr": "10.13.0.0/16"})).await?;
    let api = dynamic::<IPPool>(&ctx);
    let status = json!({"capacity": 65536, "allocated": 3});

    // Through the main resource, the status stanza is dropped.
    let mut with_status = pool(name, json!({"cidr": "10.13.0.0/16"}));
    with_status.data["status"] = status.clone();
    api.patch(
        name,
        &PatchParams::apply("sinew-e2e"),
        &Patch::Apply(&with_status),
    )
    .await?;
    let typed: Api<IPPool> = Api::all(ctx.client.clone());
    assert_eq!(
        typed.get(name).await?.status,
        None,
        "status written through the main resource"
    );

    // Through /status it lands, and a spec sent along is ignored.
    let patch = json!({
        "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": "10.13.0.0/16", "mode": "Routed"},
        "status": status,
    });
    typed
        .patch_status(
            name,
            &PatchParams::apply("sinew-operator"),
            &Patch::Apply(&patch),
        )
        .await?;
    let got = typed.get(name).await?;
    let st = got.status.ok_or("status missing after writing /status")?;
    assert_eq!((st.capacity, st.allocated), (Some(65536), Some(3)));
    assert_eq!(
        got.spec.mode,
        sinew_crds::PoolMode::Auto,
        "spec changed through /status"
    );
    Ok(())
}

async fn kubectl_get_ippools_shows_the_columns(ctx: Ctx) -> TestResult {
    let name = "columns";
    create_pool(&ctx, name, json!({"cidr": "10.14.0.0/16", "mode": "VXLAN"})).await?;
    let typed: Api<IPPool> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name},
        "status": {"usage": "5/65536", "modeConvergence": "3/3", "conditions": [{
            "type": "Ready", "status": "True", "reason": "Converged", "message": "all nodes programmed",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1
        }]},
    });
    typed
        .patch_status(
            name,
            &PatchParams::apply("sinew-operator"),
            &Patch::Apply(&patch),
        )
        .await?;
    let kubectl = ctx.cp.tools().path("kubectl")?;
    let out = std::process::Command::new(kubectl)
        .arg(format!(
            "--kubeconfig={}",
            ctx.cp.kubeconfig_path().display()
        ))
        .args(["get", "ipp", name])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CIDR",
            "MODE",
            "ALLOCATED/CAPACITY",
            "CONVERGED",
            "READY",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..6],
        [name, "10.14.0.0/16", "VXLAN", "5/65536", "3/3", "True"]
    );
    Ok(())
}
