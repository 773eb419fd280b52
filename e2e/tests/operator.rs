//! `sinew-operator` (the real binary) against the real API server: the node agent DaemonSet,
//! `ClusterNetwork` status from node reports, clean-up order on deletion, and `IPPool`
//! overlap refusal, usage aggregation and drain-guarded deletion. Agents are simulated by
//! writing what they report (Node annotations, `IPBlock` status). Needs the Go-built tools.

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sinew_crds::node::{InstallReport, NODE_STATE_ANNOTATION, NodeReport};
use sinew_crds::{ClusterNetwork, IPBlock, IPBlockUsage, IPPool, PoolMode};
use sinew_e2e::harness::{Ctx, TestError, TestResult};
use sinew_e2e::process::Supervised;
use sinew_e2e::tests;

const NAMESPACE: &str = "sinew-system";

static OPERATOR: OnceLock<std::sync::Mutex<Option<Supervised>>> = OnceLock::new();

fn main() -> ExitCode {
    let code = sinew_e2e::harness::run(
        |ctx| async move {
            sinew_e2e::install::install_crds(&ctx.client).await?;
            let ns =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
            sinew_e2e::install::apply_manifest(&ctx.client, &ns.to_string()).await?;
            let p = operator(&ctx, "primary").await.map_err(|e| e.to_string())?;
            OPERATOR.get_or_init(|| std::sync::Mutex::new(Some(p)));
            Ok(())
        },
        {
            let mut tests = tests![
                cluster_network_rollout_status_and_clean_up_order,
                overlapping_pools_are_refused_naming_the_other,
                pool_status_sums_the_blocks_of_the_pool,
                a_16_pool_filled_to_95_percent_is_named_nearly_exhausted,
                a_pool_in_use_is_not_deleted_until_drained,
                a_standby_takes_over_when_the_leader_dies_or_steps_down,
                blocks_of_a_departed_node_are_released_once_its_pods_are_gone,
                a_routed_pool_across_subnets_says_so_naming_the_nodes,
                pools_overlapping_service_or_node_addresses_are_refused,
                the_uninstall_check_refuses_naming_pods_on_the_pod_network,
            ];
            // Leadership moves between replicas: the other tests' waits would straddle it.
            for t in &mut tests {
                t.exclusive = t.name == "a_standby_takes_over_when_the_leader_dies_or_steps_down";
            }
            tests
        },
    );
    if let Some(m) = OPERATOR.get() {
        m.lock().map(|mut p| p.take()).ok();
    }
    code
}

/// Port of each replica's `/healthz` and `/metrics`.
fn metrics_port(identity: &str) -> u16 {
    match identity {
        "primary" => 19466,
        "standby" => 19467,
        _ => 19468,
    }
}

/// `GET path` from a replica's metrics listener: (status line, body). Retries a few times:
/// a replica that just started may not listen yet.
fn http_get(identity: &str, path: &str) -> Result<(String, String), TestError> {
    let mut last = None;
    for _ in 0..10 {
        match http_get_once(identity, path) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| "no attempt".into()))
}

fn http_get_once(identity: &str, path: &str) -> Result<(String, String), TestError> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", metrics_port(identity)))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(conn, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// Starts an operator replica with a short lease (3 s, renewed every second).
async fn operator(ctx: &Ctx, identity: &str) -> Result<Supervised, sinew_e2e::Error> {
    sinew_e2e::operator::start(
        &ctx.cp,
        identity,
        &[
            ("SINEW_LEASE_SECONDS", "3".into()),
            ("SINEW_RENEW_SECONDS", "1".into()),
            (
                "SINEW_METRICS_ADDR",
                format!("127.0.0.1:{}", metrics_port(identity)),
            ),
        ],
    )
    .await
}

async fn wait<T, F, Fut>(what: &str, within: Duration, probe: F) -> Result<T, TestError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, TestError>>,
{
    let log = || {
        let tail = OPERATOR
            .get()
            .and_then(|m| {
                m.lock()
                    .ok()
                    .and_then(|p| p.as_ref().map(|p| p.log_tail(15)))
            })
            .unwrap_or_default();
        format!("--- operator ---\n{tail}")
    };
    sinew_e2e::harness::wait_for(what, within, log, probe).await
}

/// A report of a node whose agent runs configuration `hash` and whose runtime loads `chosen`.
fn installed(hash: &str, chosen: &str, shadowing: &[&str]) -> NodeReport {
    NodeReport {
        ready: true,
        spec_hash: Some(hash.to_string()),
        install: Some(InstallReport {
            conflist: Some("10-sinew.conflist".into()),
            chosen: Some(chosen.into()),
            shadowing: shadowing.iter().map(|s| s.to_string()).collect(),
            ..InstallReport::default()
        }),
        ..NodeReport::default()
    }
}

async fn report(ctx: &Ctx, node: &str, report: NodeReport) -> TestResult {
    let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node,
                   "annotations": {NODE_STATE_ANNOTATION: report.to_annotation()}}});
    Api::<Node>::all(ctx.client.clone())
        .patch(
            node,
            &PatchParams::apply("simulated-agent").force(),
            &Patch::Apply(&n),
        )
        .await?;
    Ok(())
}

async fn cluster_network_rollout_status_and_clean_up_order(ctx: Ctx) -> TestResult {
    let networks: Api<ClusterNetwork> = Api::all(ctx.client.clone());
    let cn = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork", "metadata": {"name": "default"}, "spec": {}});
    networks
        .patch(
            "default",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&cn),
        )
        .await?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let ds = wait("DaemonSet rendered", Duration::from_secs(60), || async {
        Ok(daemonsets.get_opt("sinew-node").await?)
    })
    .await?;
    let pod = ds.spec.template.spec.clone().ok_or("no pod spec")?;
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.containers[0].image.as_deref(), Some("sinew-node:test"));
    let hash_of = |ds: &DaemonSet| {
        ds.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("sinew.dev/config-hash").cloned())
    };
    let first_hash = hash_of(&ds).ok_or("no config hash")?;

    // Two nodes: one ready on the current configuration, one still installing.
    let current = networks.get("default").await?.spec.config_hash();
    report(
        &ctx,
        "op-node-a",
        installed(&current, "10-sinew.conflist", &[]),
    )
    .await?;
    report(&ctx, "op-node-b", NodeReport::default()).await?;
    let status = wait("status counts 1/2", Duration::from_secs(60), || async {
        let cn = networks.get("default").await?;
        Ok(cn.status.filter(|s| {
            s.nodes
                .as_ref()
                .is_some_and(|n| n.desired == 2 && n.ready == 1)
        }))
    })
    .await?;
    let nodes = status.nodes.clone().ok_or("no counts")?;
    assert_eq!(
        (nodes.installed, nodes.up_to_date, nodes.summary.as_str()),
        (1, 1, "1/2")
    );
    let cond = |s: &sinew_crds::ClusterNetworkStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.status.clone())
    };
    assert_eq!(cond(&status, "Ready").as_deref(), Some("False"));
    assert_eq!(cond(&status, "Reconciling").as_deref(), Some("True"));
    assert_eq!(
        status.observed_generation,
        networks.get("default").await?.metadata.generation
    );

    // Node b finishes, but another vendor's conflist wins there: Stalled, named.
    report(
        &ctx,
        "op-node-b",
        installed(&current, "05-other.conflist", &["05-other.conflist"]),
    )
    .await?;
    let status = wait(
        "Stalled on a foreign conflist",
        Duration::from_secs(60),
        || async {
            let cn = networks.get("default").await?;
            Ok(cn.status.filter(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Stalled" && c.status == "True")
            }))
        },
    )
    .await?;
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.node == "op-node-b" && p.reason == "ConflistShadowed"),
        "{:?}",
        status.problems
    );
    report(
        &ctx,
        "op-node-b",
        installed(&current, "10-sinew.conflist", &[]),
    )
    .await?;
    wait(
        "Ready with every node on the configuration",
        Duration::from_secs(60),
        || async {
            let cn = networks.get("default").await?;
            Ok(cn.status.filter(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }))
        },
    )
    .await?;

    // A spec change rolls the DaemonSet (new hash) and nodes are no longer up to date.
    networks
        .patch("default", &PatchParams::apply("sinew-e2e"), &Patch::Apply(&json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork", "metadata": {"name": "default"}, "spec": {"vxlan": {"port": 8472}}})))
        .await?;
    wait("DaemonSet rolled", Duration::from_secs(60), || async {
        let ds = daemonsets.get("sinew-node").await?;
        Ok((hash_of(&ds).as_deref() != Some(first_hash.as_str())).then_some(()))
    })
    .await?;
    wait(
        "nodes out of date after the change",
        Duration::from_secs(60),
        || async {
            let cn = networks.get("default").await?;
            Ok(cn
                .status
                .filter(|s| s.nodes.as_ref().is_some_and(|n| n.up_to_date == 0)))
        },
    )
    .await?;

    // Deletion: held until every node reports clean-up, then the DaemonSet goes, then the object.
    networks.delete("default", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        networks.get_opt("default").await?.is_some(),
        "deleted before the nodes were cleaned"
    );
    assert!(
        daemonsets.get_opt("sinew-node").await?.is_some(),
        "DaemonSet removed before the nodes were cleaned"
    );
    report(
        &ctx,
        "op-node-a",
        NodeReport {
            cleaned_up: true,
            ..NodeReport::default()
        },
    )
    .await?;
    report(
        &ctx,
        "op-node-b",
        NodeReport {
            cleaned_up: true,
            ..NodeReport::default()
        },
    )
    .await?;
    wait("ClusterNetwork gone", Duration::from_secs(60), || async {
        Ok(networks.get_opt("default").await?.is_none().then_some(()))
    })
    .await?;
    assert!(
        daemonsets.get_opt("sinew-node").await?.is_none(),
        "DaemonSet left behind"
    );
    Ok(())
}

async fn apply_pool(ctx: &Ctx, name: &str, spec: serde_json::Value) -> TestResult {
    let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec});
    Api::<IPPool>::all(ctx.client.clone())
        .patch(name, &PatchParams::apply("sinew-e2e"), &Patch::Apply(&pool))
        .await?;
    Ok(())
}

fn ready_condition(p: &IPPool) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn overlapping_pools_are_refused_naming_the_other(ctx: Ctx) -> TestResult {
    apply_pool(&ctx, "ov-first", json!({"cidr": "10.130.0.0/16"})).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later creation timestamp
    apply_pool(&ctx, "ov-second", json!({"cidr": "10.130.8.0/24"})).await?;
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let (_, reason, message) = wait("ov-second refused", Duration::from_secs(20), || async {
        Ok(ready_condition(&pools.get("ov-second").await?).filter(|(s, _, _)| s == "False"))
    })
    .await?;
    assert_eq!(reason, "OverlappingPools");
    assert!(
        message.contains("ov-first") && message.contains("10.130.0.0/16"),
        "{message}"
    );
    let (_, reason, _) = wait("ov-first evaluated", Duration::from_secs(20), || async {
        Ok(ready_condition(&pools.get("ov-first").await?))
    })
    .await?;
    assert_ne!(reason, "OverlappingPools", "the older pool keeps working");
    Ok(())
}

/// A block as the agent of `node` would create and report it (the Node exists).
async fn create_block(ctx: &Ctx, pool: &str, cidr: &str, node: &str, allocated: u32) -> TestResult {
    let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
    Api::<Node>::all(ctx.client.clone())
        .patch(node, &PatchParams::apply("sinew-e2e"), &Patch::Apply(&n))
        .await?;
    let name = cidr.parse::<sinew_crds::Cidr>()?.object_name();
    let block: IPBlock = serde_json::from_value(
        json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
        "metadata": {"name": name, "labels": {"sinew.dev/pool": pool}}, "spec": {"pool": pool, "cidr": cidr, "node": node}}),
    )?;
    let api: Api<IPBlock> = Api::all(ctx.client.clone());
    let block = api.create(&PostParams::default(), &block).await?;
    let usage = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
        "metadata": {"name": name, "ownerReferences": [{"apiVersion": "sinew.dev/v1alpha1",
                     "kind": "IPBlock", "name": name, "uid": block.metadata.uid}]},
        "spec": {"pool": pool, "cidr": cidr, "node": node}});
    Api::<IPBlockUsage>::all(ctx.client.clone())
        .patch(
            &name,
            &PatchParams::apply("simulated-agent"),
            &Patch::Apply(&usage),
        )
        .await?;
    report_usage(ctx, &name, allocated).await
}

/// The block's agent reports `allocated` addresses in use in the block's usage.
async fn report_usage(ctx: &Ctx, name: &str, allocated: u32) -> TestResult {
    let status = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": name},
                        "status": {"allocated": allocated}});
    Api::<IPBlockUsage>::all(ctx.client.clone())
        .patch_status(
            name,
            &PatchParams::apply("simulated-agent"),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(())
}

async fn pool_status_sums_the_blocks_of_the_pool(ctx: Ctx) -> TestResult {
    apply_pool(
        &ctx,
        "use-pool",
        json!({"cidr": "10.131.0.0/24", "blockSize": 26, "reserved": ["10.131.0.250"]}),
    )
    .await?;
    create_block(&ctx, "use-pool", "10.131.0.0/26", "use-a", 10).await?;
    create_block(&ctx, "use-pool", "10.131.0.64/26", "use-b", 5).await?;
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let st = wait("usage aggregated", Duration::from_secs(20), || async {
        Ok(pools
            .get("use-pool")
            .await?
            .status
            .filter(|s| s.allocated == Some(15)))
    })
    .await?;
    assert_eq!(
        st.capacity,
        Some(253),
        "256 - 1 reserved - network - broadcast"
    );
    assert_eq!(st.blocks, Some(2));
    assert_eq!(st.usage.as_deref(), Some("15/253"));
    assert_eq!(st.block_size, Some(26));
    // Near exhaustion raises Exhausted before allocations start failing.
    create_block(&ctx, "use-pool", "10.131.0.128/26", "use-c", 64).await?;
    create_block(&ctx, "use-pool", "10.131.0.192/26", "use-d", 64).await?;
    for (name, n) in [("10-131-0-0-26", 60), ("10-131-0-64-26", 50)] {
        report_usage(&ctx, name, n).await?;
    }
    let st = wait("Exhausted raised", Duration::from_secs(20), || async {
        Ok(pools.get("use-pool").await?.status.filter(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Exhausted" && c.status == "True")
        }))
    })
    .await?;
    let ex = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Exhausted")
        .ok_or("no Exhausted")?;
    assert_eq!(ex.reason, "NearlyExhausted", "{}", ex.message);
    // With the allocation rate (not measurable yet: the first samples are seconds apart) and
    // a PoolNearlyExhausted Event on the pool.
    assert!(
        ex.message.contains("238 of 253 addresses in use (94%)")
            && ex.message.contains("allocation rate not known yet"),
        "{}",
        ex.message
    );
    nearly_exhausted_event(&ctx, "use-pool").await
}

/// Waits for the `PoolNearlyExhausted` Event on `pool`.
async fn nearly_exhausted_event(ctx: &Ctx, pool: &str) -> TestResult {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ctx.client.clone(), "default");
    wait(
        "PoolNearlyExhausted Event",
        Duration::from_secs(10),
        || async {
            let list = events.list(&Default::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("PoolNearlyExhausted")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool)
            }))
        },
    )
    .await?;
    Ok(())
}

/// A pool of the size users run (/16, sixteen /20 blocks on sixteen nodes) filled to 95 %.
async fn a_16_pool_filled_to_95_percent_is_named_nearly_exhausted(ctx: Ctx) -> TestResult {
    apply_pool(
        &ctx,
        "full-pool",
        json!({"cidr": "10.140.0.0/16", "blockSize": 20}),
    )
    .await?;
    // 65,534 usable addresses; 16 x 3,892 = 62,272 in use (95.02 %).
    for i in 0..16u32 {
        let cidr = format!("10.140.{}.0/20", i * 16);
        create_block(&ctx, "full-pool", &cidr, &format!("full-{i}"), 3892).await?;
    }
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let st = wait("Exhausted raised", Duration::from_secs(30), || async {
        Ok(pools.get("full-pool").await?.status.filter(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Exhausted" && c.status == "True")
        }))
    })
    .await?;
    assert_eq!(st.usage.as_deref(), Some("62272/65534"));
    let ex = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Exhausted")
        .ok_or("no Exhausted")?;
    assert_eq!(ex.reason, "NearlyExhausted", "{}", ex.message);
    assert!(ex.message.contains("(95%)"), "{}", ex.message);
    nearly_exhausted_event(&ctx, "full-pool").await
}

async fn a_pool_in_use_is_not_deleted_until_drained(ctx: Ctx) -> TestResult {
    apply_pool(
        &ctx,
        "drain-pool",
        json!({"cidr": "10.132.0.0/24", "blockSize": 26}),
    )
    .await?;
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    wait("finalizer added", Duration::from_secs(20), || async {
        Ok(pools
            .get("drain-pool")
            .await?
            .metadata
            .finalizers
            .filter(|f| !f.is_empty()))
    })
    .await?;
    create_block(&ctx, "drain-pool", "10.132.0.0/26", "drain-a", 3).await?;
    pools.delete("drain-pool", &DeleteParams::default()).await?;
    let (_, reason, _) = wait("Draining", Duration::from_secs(20), || async {
        Ok(ready_condition(&pools.get("drain-pool").await?).filter(|(_, r, _)| r == "Draining"))
    })
    .await?;
    assert_eq!(reason, "Draining");
    // The last pod goes away: the agent reports an empty block. The pool still waits for the
    // node to say it hands out nothing more from it (an empty status alone may lag).
    report_usage(&ctx, "10-132-0-0-26", 0).await?;
    wait(
        "Draining, waiting for the node",
        Duration::from_secs(20),
        || async {
            Ok(ready_condition(&pools.get("drain-pool").await?)
                .filter(|(_, _, m)| m.starts_with("waiting for node drain-a to confirm")))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        pools.get_opt("drain-pool").await?.is_some(),
        "the pool went before its node confirmed"
    );
    // The agent confirms (its report lists the pool as drained): the pool and its blocks go.
    let report = NodeReport {
        drained: vec!["drain-pool".into()],
        ..NodeReport::default()
    };
    let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "drain-a",
        "annotations": {NODE_STATE_ANNOTATION: report.to_annotation()}}});
    Api::<Node>::all(ctx.client.clone())
        .patch(
            "drain-a",
            &PatchParams::apply("simulated-agent"),
            &Patch::Apply(&n),
        )
        .await?;
    wait("pool removed", Duration::from_secs(20), || async {
        Ok(pools.get_opt("drain-pool").await?.is_none().then_some(()))
    })
    .await?;
    assert!(
        Api::<IPBlock>::all(ctx.client.clone())
            .get_opt("10-132-0-0-26")
            .await?
            .is_none(),
        "the pool's blocks were left"
    );
    Ok(())
}

async fn holder(ctx: &Ctx) -> Result<Option<String>, TestError> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(ctx.client.clone(), NAMESPACE);
    Ok(leases
        .get_opt("sinew-operator")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

async fn a_standby_takes_over_when_the_leader_dies_or_steps_down(ctx: Ctx) -> TestResult {
    wait("the primary leads", Duration::from_secs(20), || async {
        Ok((holder(&ctx).await?.as_deref() == Some("primary")).then_some(()))
    })
    .await?;
    let standby = operator(&ctx, "standby").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        holder(&ctx).await?.as_deref(),
        Some("primary"),
        "the standby took a live lease"
    );
    // The leader dies without a goodbye.
    let old = OPERATOR
        .get()
        .and_then(|m| m.lock().ok().and_then(|mut p| p.replace(standby)));
    let killed = std::time::Instant::now();
    drop(old);
    wait("the standby leads", Duration::from_secs(15), || async {
        Ok((holder(&ctx).await?.as_deref() == Some("standby")).then_some(()))
    })
    .await?;
    eprintln!("hand-over after {:?}", killed.elapsed());
    // And it reconciles.
    apply_pool(&ctx, "after-handover", json!({"cidr": "10.133.0.0/24"})).await?;
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    wait(
        "the new leader reconciles",
        Duration::from_secs(20),
        || async {
            Ok(pools
                .get("after-handover")
                .await?
                .status
                .filter(|s| s.capacity.is_some()))
        },
    )
    .await?;

    // Every replica serves health; the leader's metrics show its reconciles and the pools.
    for path in ["/healthz", "/readyz"] {
        wait(path, Duration::from_secs(5), || async {
            let (status, _) = http_get("standby", path)?;
            Ok(status.contains("200").then_some(()))
        })
        .await?;
    }
    let metrics = wait(
        "the leader's metrics show the pool",
        Duration::from_secs(10),
        || async {
            let (_, body) = http_get("standby", "/metrics")?;
            Ok(body
                .contains("sinew_operator_pool_capacity{pool=\"after-handover\"} 254")
                .then_some(body))
        },
    )
    .await?;
    assert!(metrics.contains("sinew_operator_leader 1"), "{metrics}");
    assert!(
        metrics.contains("sinew_operator_reconciles_total{controller=\"ippool\"}"),
        "{metrics}"
    );

    // A leader asked to stop (SIGTERM, as on a rolling update) hands the Lease over at once
    // instead of letting it expire (3 s here): the next replica leads within a retry (1 s).
    let third = operator(&ctx, "third").await?;
    wait(
        "the third replica serves",
        Duration::from_secs(10),
        || async {
            Ok(http_get("third", "/readyz")
                .ok()
                .filter(|(s, _)| s.contains("200")))
        },
    )
    .await?;
    let (_, standby_metrics) = http_get("third", "/metrics")?;
    assert!(
        standby_metrics.contains("sinew_operator_leader 0"),
        "{standby_metrics}"
    );
    let leader = OPERATOR
        .get()
        .and_then(|m| m.lock().ok().and_then(|mut p| p.replace(third)))
        .ok_or("no leader process")?;
    let asked = std::time::Instant::now();
    leader.signal(libc::SIGTERM);
    wait(
        "the third replica leads",
        Duration::from_secs(10),
        || async { Ok((holder(&ctx).await?.as_deref() == Some("third")).then_some(())) },
    )
    .await?;
    let took = asked.elapsed();
    eprintln!("graceful hand-over after {took:?}");
    let exited = wait("the old leader exits", Duration::from_secs(10), || async {
        Ok(leader.try_exit())
    })
    .await?;
    assert!(exited.success(), "the old leader exited with {exited}");
    assert!(
        leader.log_tail(50).contains("lease released"),
        "{}",
        leader.log_tail(50)
    );
    assert!(
        took < Duration::from_millis(2500),
        "hand-over took {took:?}: the Lease was not released"
    );
    Ok(())
}

async fn blocks_of_a_departed_node_are_released_once_its_pods_are_gone(ctx: Ctx) -> TestResult {
    apply_pool(
        &ctx,
        "orphan-pool",
        json!({"cidr": "10.134.0.0/24", "blockSize": 26}),
    )
    .await?;
    // A pod of the departed node still exists (say, being evicted).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ctx.client.clone(), "default");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan-owner", "namespace": "default"},
                     "spec": {"nodeName": "gone-node", "containers": [{"name": "c", "image": "x"}]}});
    let pod = pods
        .patch(
            "orphan-owner",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&pod),
        )
        .await?;
    let uid = pod.metadata.uid.clone().ok_or("pod without uid")?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gone-node"}});
    nodes
        .patch(
            "gone-node",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&node),
        )
        .await?;
    let api: Api<IPBlock> = Api::all(ctx.client.clone());
    let usages: Api<IPBlockUsage> = Api::all(ctx.client.clone());
    for (cidr, allocations) in [
        (
            "10.134.0.0/26",
            json!([{"ip": "10.134.0.5", "containerId": "c1", "interface": "eth0", "generation": 1, "podUid": uid}]),
        ),
        ("10.134.0.64/26", json!([])),
    ] {
        let name = cidr.parse::<sinew_crds::Cidr>()?.object_name();
        let block: IPBlock = serde_json::from_value(
            json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
            "metadata": {"name": name}, "spec": {"pool": "orphan-pool", "cidr": cidr, "node": "gone-node"}}),
        )?;
        let block = api.create(&PostParams::default(), &block).await?;
        // Its usage, as its agent wrote it before the node left.
        let n = allocations.as_array().map_or(0, Vec::len);
        let usage = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "sinew.dev/v1alpha1",
                         "kind": "IPBlock", "name": name, "uid": block.metadata.uid}]},
            "spec": {"pool": "orphan-pool", "cidr": cidr, "node": "gone-node"}});
        usages
            .patch(
                &name,
                &PatchParams::apply("simulated-agent"),
                &Patch::Apply(&usage),
            )
            .await?;
        let status = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": name},
                            "status": {"allocated": n, "allocations": allocations}});
        usages
            .patch_status(
                &name,
                &PatchParams::apply("simulated-agent"),
                &Patch::Apply(&status),
            )
            .await?;
    }
    // The node leaves the cluster.
    nodes.delete("gone-node", &DeleteParams::default()).await?;
    wait(
        "the empty block of the departed node released",
        Duration::from_secs(20),
        || async { Ok(api.get_opt("10-134-0-64-26").await?.is_none().then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        api.get_opt("10-134-0-0-26").await?.is_some(),
        "released while its pod still exists"
    );
    pods.delete("orphan-owner", &DeleteParams::default().grace_period(0))
        .await?;
    wait(
        "the block released once its pod is gone",
        Duration::from_secs(20),
        || async { Ok(api.get_opt("10-134-0-0-26").await?.is_none().then_some(())) },
    )
    .await?;
    Ok(())
}

async fn a_routed_pool_across_subnets_says_so_naming_the_nodes(ctx: Ctx) -> TestResult {
    for (node, underlay) in [
        ("rt-a", "10.99.0.0/24"),
        ("rt-b", "10.99.0.0/24"),
        ("rt-c", "10.99.1.0/24"),
    ] {
        let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"rt-test": "yes"},
                       "annotations": {NODE_STATE_ANNOTATION: NodeReport {
                           ready: true,
                           underlay: Some(underlay.to_string()),
                           modes: [("rt-pool".to_string(), PoolMode::Routed)].into(),
                           ..NodeReport::default()
                       }.to_annotation()}}});
        Api::<Node>::all(ctx.client.clone())
            .patch(
                node,
                &PatchParams::apply("simulated-agent").force(),
                &Patch::Apply(&n),
            )
            .await?;
    }
    apply_pool(&ctx, "rt-pool", json!({"cidr": "10.135.0.0/24", "mode": "Routed", "nodeSelector": {"matchLabels": {"rt-test": "yes"}}})).await?;
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let (_, reason, message) = wait("RoutedAcrossSubnets", Duration::from_secs(20), || async {
        Ok(ready_condition(&pools.get("rt-pool").await?)
            .filter(|(_, r, _)| r == "RoutedAcrossSubnets"))
    })
    .await?;
    assert_eq!(reason, "RoutedAcrossSubnets");
    assert!(
        message.contains("10.99.0.0/24 (rt-a, rt-b)") && message.contains("10.99.1.0/24 (rt-c)"),
        "{message}"
    );
    // Switching to Auto resolves it.
    apply_pool(&ctx, "rt-pool", json!({"cidr": "10.135.0.0/24", "mode": "Auto", "nodeSelector": {"matchLabels": {"rt-test": "yes"}}})).await?;
    wait("no longer stalled", Duration::from_secs(20), || async {
        Ok(ready_condition(&pools.get("rt-pool").await?)
            .filter(|(_, r, _)| r != "RoutedAcrossSubnets"))
    })
    .await?;
    Ok(())
}

async fn pools_overlapping_service_or_node_addresses_are_refused(ctx: Ctx) -> TestResult {
    // The test API server serves Services from 10.96.0.0/16 (its default ServiceCIDR).
    apply_pool(&ctx, "svc-clash", json!({"cidr": "10.96.0.0/20"})).await?;
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "addr-node"}});
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    nodes
        .patch(
            "addr-node",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&node),
        )
        .await?;
    let status = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "addr-node"},
                        "status": {"addresses": [{"type": "InternalIP", "address": "10.136.0.7"}]}});
    nodes
        .patch_status(
            "addr-node",
            &PatchParams::apply("sinew-e2e"),
            &Patch::Apply(&status),
        )
        .await?;
    apply_pool(&ctx, "node-clash", json!({"cidr": "10.136.0.0/24"})).await?;
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let (_, reason, message) = wait("Service CIDR conflict", Duration::from_secs(20), || async {
        Ok(ready_condition(&pools.get("svc-clash").await?)
            .filter(|(_, r, _)| r == "OverlapsServiceCIDR"))
    })
    .await?;
    assert!(message.contains("10.96.0.0/16"), "{reason}: {message}");
    let (_, _, message) = wait("node address conflict", Duration::from_secs(20), || async {
        Ok(ready_condition(&pools.get("node-clash").await?)
            .filter(|(_, r, _)| r == "OverlapsNodeAddresses"))
    })
    .await?;
    assert!(message.contains("addr-node (10.136.0.7)"), "{message}");
    Ok(())
}

/// `sinew-operator uninstall` against its own control plane (if the check ever passed here it
/// would delete every pool, so not the one the other tests share): its paginated, field-selected
/// pod list names the pod on the pod network, not the host-network or finished ones, and it
/// refuses with exit code 3, deleting nothing.
async fn the_uninstall_check_refuses_naming_pods_on_the_pod_network(_ctx: Ctx) -> TestResult {
    let cp = sinew_e2e::ControlPlane::start().await?;
    let client = cp.client().await?;
    sinew_e2e::install::install_crds(&client).await?;
    let pools: Api<IPPool> = Api::all(client.clone());
    let pool: IPPool = serde_json::from_value(json!({
        "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "un-pool"}, "spec": {"cidr": "10.160.0.0/16"},
    }))?;
    pools.create(&PostParams::default(), &pool).await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    for (name, host_network, phase, ip) in [
        ("web", false, "Running", "10.160.1.5"),
        ("kube-proxy", true, "Running", "10.160.9.9"),
        ("done", false, "Succeeded", "10.160.1.6"),
        ("elsewhere", false, "Running", "192.168.7.7"),
    ] {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "un-node", "hostNetwork": host_network,
                     "containers": [{"name": "c", "image": "i"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        let status = json!({"status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    let out = std::process::Command::new(sinew_e2e::plugin::workspace_binary(
        "sinew-operator",
        "sinew-operator",
    ))
    .args(["uninstall", "--timeout-seconds", "5"])
    .env("KUBECONFIG", cp.kubeconfig_path())
    .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("1 pods still hold pod-network addresses:")
            && text.contains("default/web on node un-node (10.160.1.5)"),
        "{text}"
    );
    for other in ["kube-proxy", "done", "elsewhere"] {
        assert!(!text.contains(&format!("default/{other}")), "{text}");
    }
    assert!(
        pools.get_opt("un-pool").await?.is_some(),
        "a pool was deleted"
    );
    Ok(())
}
