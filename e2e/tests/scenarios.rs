//! End-to-end scenarios on a helm-installed local cluster with the operator running: leak GC
//! (a leaked allocation is collected, a live one never) and pool exhaustion (a clear CNI error
//! and an `Exhausted` condition). Each scenario has its own nodes and its own pool. Needs root
//! and the Go-built control plane.

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sinew_crds::IPPool;
use sinew_e2e::cluster::{CLUSTER_LABEL, LocalCluster, PodRef};
use sinew_e2e::harness::{Ctx, TestError, TestResult, wait_for};
use sinew_e2e::helm::Helm;
use sinew_e2e::process::Supervised;
use sinew_e2e::{require, tests};

static OPERATOR: OnceLock<std::sync::Mutex<Option<Supervised>>> = OnceLock::new();

/// The leak grace period the chart is installed with (seconds).
const GRACE: u64 = 3;

fn main() -> ExitCode {
    if !require::is_root() {
        require::missing("scenario", "nodes are network namespaces, which needs root");
        return ExitCode::SUCCESS;
    }
    let code = sinew_e2e::harness::run(
        |ctx| async move {
            let helm = Helm::new(&ctx.cp).map_err(|e| e.to_string())?;
            let grace = format!("clusterNetwork.spec.ipam.leakGracePeriod={GRACE}s");
            helm.install(&[
                "--set-json",
                "ipPools=[]",
                "--set",
                "clusterNetwork.spec.ipam.gcInterval=1s",
                "--set",
                &grace,
            ])?;
            let operator = sinew_e2e::helm::start_operator(&ctx.cp, &ctx.client, "op")
                .await
                .map_err(|e| e.to_string())?;
            OPERATOR.get_or_init(|| std::sync::Mutex::new(Some(operator)));
            Ok(())
        },
        tests![
            a_leaked_allocation_is_collected_and_a_live_one_never,
            an_exhausted_pool_fails_add_clearly_and_says_so,
            an_agent_receives_no_event_per_pod_of_another_node,
            a_mode_switch_shows_its_plan_then_its_progress,
        ],
    );
    if let Some(m) = OPERATOR.get() {
        m.lock().map(|mut p| p.take()).ok();
    }
    code
}

fn operator_log() -> String {
    let tail = OPERATOR
        .get()
        .and_then(|m| {
            m.lock()
                .ok()
                .and_then(|p| p.as_ref().map(|p| p.log_tail(20)))
        })
        .unwrap_or_default();
    format!("--- operator ---\n{tail}")
}

/// A pool serving only the nodes of local cluster `prefix`.
async fn pool_for(ctx: &Ctx, prefix: &str, cidr: &str, block_size: u8) -> TestResult {
    pool_in_mode(ctx, prefix, cidr, block_size, "Auto").await
}

async fn pool_in_mode(
    ctx: &Ctx,
    prefix: &str,
    cidr: &str,
    block_size: u8,
    mode: &str,
) -> TestResult {
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let name = format!("{prefix}-pool");
    let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name},
                      "spec": {"cidr": cidr, "blockSize": block_size, "mode": mode,
                               "nodeSelector": {"matchLabels": {CLUSTER_LABEL: prefix}}}});
    pools
        .patch(
            &name,
            &PatchParams::apply("sinew-e2e").force(),
            &Patch::Apply(&pool),
        )
        .await?;
    Ok(())
}

/// IPs listed in the usage of `pool`'s blocks.
async fn allocated_ips(ctx: &Ctx, pool: &str) -> Result<Vec<String>, TestError> {
    Ok(sinew_e2e::usage::block_allocations(&ctx.client, Some(pool))
        .await?
        .into_iter()
        .flat_map(|(_, allocations)| allocations)
        .map(|a| a.ip)
        .collect())
}

async fn a_leaked_allocation_is_collected_and_a_live_one_never(ctx: Ctx) -> TestResult {
    let cluster = LocalCluster::start_with(&ctx.cp, "gc", &[0], true).await;
    pool_for(&ctx, "gc", "10.150.0.0/24", 28).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let node = cluster.name(0);
    let live = cluster.start_pod(&node, "live").await;
    // A static pod: its allocation carries kubelet's UID, its mirror pod has another.
    let static_pod = cluster.start_static_pod(&node, "static").await;
    let static_ip = static_pod.ipv4().to_string();
    let leaked = cluster.start_pod(&node, "leaked").await;
    let (live_ip, leaked_ip) = (live.ipv4().to_string(), leaked.ipv4().to_string());
    wait_for(
        "both allocations in the blocks' usages",
        Duration::from_secs(10),
        operator_log,
        || async {
            let ips = allocated_ips(&ctx, "gc-pool").await?;
            Ok((ips.contains(&live_ip) && ips.contains(&leaked_ip)).then_some(()))
        },
    )
    .await?;

    // The pod object goes away and its sandbox with it (its network namespace, and the veth
    // pair with it), but the runtime never calls DEL (a crashed kubelet, a lost sandbox): the
    // address leaks.
    let host_veth = leaked.result["interfaces"][0]["name"]
        .as_str()
        .ok_or("no host interface in the CNI result")?
        .to_string();
    cluster.delete_pod_object("default", "leaked").await;
    drop(leaked);
    let deleted = Instant::now();
    wait_for(
        "the leaked address released",
        Duration::from_secs(30),
        operator_log,
        || async {
            let ips = allocated_ips(&ctx, "gc-pool").await?;
            Ok((!ips.contains(&leaked_ip)).then_some(()))
        },
    )
    .await?;
    let took = deleted.elapsed();
    assert!(
        took >= Duration::from_secs(GRACE),
        "released after {took:?}, before the {GRACE}s grace period"
    );
    eprintln!("leak released {took:?} after its pod was deleted");
    assert!(
        cluster
            .node(&node)
            .netlink()
            .link_by_name(&host_veth)?
            .is_none(),
        "the leaked pod's host veth {host_veth} is still there"
    );
    // Recorded, with the pod, the address and the node.
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), "default");
    let recorded = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("LeakedAddressReleased"))
        .filter_map(|e| e.note)
        .find(|n| n.contains(&leaked_ip));
    let note = recorded.ok_or("no LeakedAddressReleased Event")?;
    assert!(
        note.contains("default/leaked") && note.contains(&node),
        "{note}"
    );

    // The live pod keeps its address through many more GC passes (1 s apart).
    tokio::time::sleep(Duration::from_secs(GRACE + 3)).await;
    let ips = allocated_ips(&ctx, "gc-pool").await?;
    assert!(
        ips.contains(&live_ip),
        "the live pod's address was released: {ips:?}"
    );
    assert!(
        ips.contains(&static_ip),
        "the running static pod's address was released (its mirror pod's UID differs): {ips:?}"
    );
    // The static pod's mirror pod goes (the API server then knows nothing of it), but its
    // sandbox runs on: the operator asks for its address, the node refuses (the pod's veth
    // lives) and says so.
    cluster.delete_pod_object("default", "static").await;
    wait_for(
        "a LeakedAddressKept Event for the static pod",
        Duration::from_secs(30),
        operator_log,
        || async {
            let events: Api<Event> = Api::namespaced(ctx.client.clone(), "default");
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("LeakedAddressKept"))
                .filter_map(|e| e.note)
                .find(|n| n.contains(&static_ip)))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(GRACE + 3)).await;
    let ips = allocated_ips(&ctx, "gc-pool").await?;
    assert!(
        ips.contains(&static_ip),
        "the running static pod's address was released without its mirror pod: {ips:?}"
    );
    // And the released address can be handed out again.
    let next = cluster.start_pod(&node, "next").await;
    cluster.stop_pod(next).await;
    cluster.stop_pod(live).await;
    cluster.stop_pod(static_pod).await;
    Ok(())
}

async fn an_exhausted_pool_fails_add_clearly_and_says_so(ctx: Ctx) -> TestResult {
    let cluster = LocalCluster::start_with(&ctx.cp, "ex", &[0], true).await;
    // One /28 block: 14 usable addresses (network and broadcast are never handed out).
    pool_for(&ctx, "ex", "10.151.0.0/28", 28).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let node = cluster.name(0);
    let mut pods = Vec::new();
    for i in 0..14 {
        pods.push(cluster.start_pod(&node, &format!("p{i}")).await);
    }
    // The 15th: the agent finds no block left to claim, and the plugin says so (code 11, try
    // again later: the kubelet retries, and it works once an address is free).
    let uid = cluster
        .create_pod_object(&node, "default", "one-too-many")
        .await;
    let extra = sinew_e2e::netsim::netns("pod");
    let pod = PodRef {
        namespace: "default".into(),
        name: "one-too-many".into(),
        uid,
    };
    // Through the runtime's library (cnitool, libcni): the message names the pool.
    let message = wait_for(
        "an exhaustion error",
        Duration::from_secs(15),
        operator_log,
        || async {
            let run = cluster
                .networker
                .add(cluster.node(&node), &pod, extra.path());
            assert!(!run.success, "a 15th address from a 14-address pool");
            Ok(run.stderr.contains("is exhausted").then_some(run.stderr))
        },
    )
    .await?;
    assert!(message.contains("pool ex-pool is exhausted"), "{message}");
    // And the plugin's own error object carries the spec's code 11 (try again later: the
    // kubelet retries, and it works once an address is free).
    let conflist: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        cluster.node(&node).conf_dir().join("10-sinew.conflist"),
    )?)?;
    let mut config = conflist["plugins"][0].clone();
    config["cniVersion"] = conflist["cniVersion"].clone();
    config["name"] = conflist["name"].clone();
    let direct = sinew_e2e::plugin::Exec::new("ADD", "direct-too-many", Some(extra.path()))
        .run(&cluster.node(&node).ns, &config.to_string());
    assert_eq!(direct.error_code(), Some(11), "{}", direct.stdout);
    // CNI STATUS tells the runtime the node cannot network a new pod (code 50).
    let status = sinew_e2e::plugin::Exec::new("STATUS", "status", None)
        .run(&cluster.node(&node).ns, &config.to_string());
    assert_eq!(status.error_code(), Some(50), "{}", status.stdout);
    assert!(status.stdout.contains("exhausted"), "{}", status.stdout);
    assert!(
        direct.json()["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("is exhausted")
    );
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    // `Exhausted` turns True at 90% (13 of 14, reason NearlyExhausted) before the status
    // counts the 14th address: wait for the reason that says full.
    let exhausted = |want: bool, reason: &'static str| {
        let pools = pools.clone();
        move || {
            let pools = pools.clone();
            async move {
                let p = pools.get("ex-pool").await?;
                Ok(p.status
                    .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Exhausted"))
                    .filter(|c| (c.status == "True") == want && c.reason == reason))
            }
        }
    };
    let condition = wait_for(
        "Exhausted=True, reason Exhausted",
        Duration::from_secs(15),
        operator_log,
        exhausted(true, "Exhausted"),
    )
    .await?;
    assert!(
        condition.message.contains("14 of 14"),
        "{}",
        condition.message
    );

    // Freeing one address makes room: the retried ADD succeeds.
    let first = pods.remove(0);
    cluster.stop_pod(first).await;
    let status = sinew_e2e::plugin::Exec::new("STATUS", "status", None)
        .run(&cluster.node(&node).ns, &config.to_string());
    assert!(status.success, "STATUS after a pod left: {}", status.stdout);
    let run = cluster
        .networker
        .add(cluster.node(&node), &pod, extra.path());
    assert!(run.success, "{} {}", run.stdout, run.stderr);
    let run = cluster
        .networker
        .del(cluster.node(&node), &pod, extra.path());
    assert!(run.success, "{} {}", run.stdout, run.stderr);
    cluster.delete_pod_object("default", "one-too-many").await;
    for p in pods {
        cluster.stop_pod(p).await;
    }
    wait_for(
        "Exhausted=False",
        Duration::from_secs(15),
        operator_log,
        exhausted(false, "AddressesAvailable"),
    )
    .await?;
    Ok(())
}

async fn a_mode_switch_shows_its_plan_then_its_progress(ctx: Ctx) -> TestResult {
    let mut cluster = LocalCluster::start_with(&ctx.cp, "ms", &[0, 0], true).await;
    pool_in_mode(&ctx, "ms", "10.152.0.0/16", 26, "VXLAN").await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let status = || {
        let pools = pools.clone();
        async move { Ok::<_, TestError>(pools.get("ms-pool").await?.status.unwrap_or_default()) }
    };
    wait_for(
        "both nodes on VXLAN",
        Duration::from_secs(20),
        operator_log,
        || async { Ok((status().await?.mode_convergence.as_deref() == Some("2/2")).then_some(())) },
    )
    .await?;
    // Freeze the agents so the plan can be read before anything moves.
    cluster.stop_agent(0);
    cluster.stop_agent(1);
    pools
        .patch(
            "ms-pool",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mode": "Routed"}})),
        )
        .await?;
    let plan = wait_for(
        "the plan in status",
        Duration::from_secs(10),
        operator_log,
        || async { Ok(status().await?.mode_plan) },
    )
    .await?;
    assert_eq!((plan.from.as_str(), plan.to.as_str()), ("VXLAN", "Routed"));
    assert_eq!(plan.nodes, ["ms-0", "ms-1"]);
    assert_eq!(plan.pending, ["ms-0", "ms-1"]);
    assert_eq!(plan.peers_to_routed, 1);
    assert_eq!(
        plan.mtu_changes,
        ["ms-0: 1450 -> 1500", "ms-1: 1450 -> 1500"]
    );
    // Progress as the nodes switch.
    cluster.restart_agent(0);
    wait_for(
        "ms-0 switched",
        Duration::from_secs(20),
        operator_log,
        || async {
            Ok(status()
                .await?
                .mode_plan
                .filter(|p| p.pending == ["ms-1"] && p.nodes == ["ms-0", "ms-1"])
                .map(|_| ()))
        },
    )
    .await?;
    cluster.restart_agent(1);
    let done = wait_for(
        "the switch done",
        Duration::from_secs(20),
        operator_log,
        || async {
            let s = status().await?;
            Ok(
                (s.mode_plan.is_none() && s.mode_convergence.as_deref() == Some("2/2"))
                    .then_some(s),
            )
        },
    )
    .await?;
    assert!(
        done.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{:?}",
        done.conditions
    );
    // New pods get the new MTU; the route to the peer is direct.
    let pod = cluster.start_pod(&cluster.name(0), "after").await;
    let eth0 = sinew_node_lib::netlink::Netlink::in_netns(&pod.ns)?
        .link_by_name("eth0")?
        .ok_or("no eth0 in the pod")?;
    assert_eq!(eth0.mtu, 1500);
    let routes = cluster.peer_routes(&cluster.name(0));
    assert!(
        !routes.is_empty() && routes.values().all(|r| !r.contains("sinew.vxlan")),
        "{routes:?}"
    );
    cluster.stop_pod(pod).await;
    Ok(())
}

/// How many objects of `resource` the agent of `node` has received from its watches.
fn watch_events(node: &sinew_e2e::cluster::SimNode, resource: &str) -> Result<u64, TestError> {
    let (_, metrics) = sinew_e2e::cluster::agent_http(node, "/metrics")?;
    let prefix = format!(
        "sinew_node_watch_events_total{{node=\"{}\",resource=\"{resource}\"}} ",
        node.name
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {prefix} in the agent's metrics").into())
}

/// Pods starting and stopping on one node are not news to the others (decision 95): their
/// allocations go into the block's `IPBlockUsage`, which agents do not watch, and the pool's
/// counts are written at most every few seconds. Before, every ADD and DEL rewrote the block
/// (and the pool), an event to every agent.
async fn an_agent_receives_no_event_per_pod_of_another_node(ctx: Ctx) -> TestResult {
    let cluster = LocalCluster::start_with(&ctx.cp, "quiet", &[0, 0], true).await;
    pool_for(&ctx, "quiet", "10.153.0.0/24", 26).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let (listener, busy) = (cluster.node(&cluster.name(0)), cluster.name(1));
    let blocks_before = watch_events(listener, "ipblocks")?;
    let pools_before = watch_events(listener, "ippools")?;
    // Fewer than a /26 holds: the busy node's first block serves them all.
    const PODS: usize = 30;
    let mut pods = Vec::new();
    for i in 0..PODS {
        pods.push(cluster.start_pod(&busy, &format!("busy-{i}")).await);
    }
    for p in pods {
        cluster.stop_pod(p).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let blocks = watch_events(listener, "ipblocks")? - blocks_before;
    let pools = watch_events(listener, "ippools")? - pools_before;
    eprintln!(
        "{} pod ADDs and DELs on {busy}: {blocks} IPBlock and {pools} IPPool events at {}",
        2 * PODS,
        listener.name
    );
    // The busy node's claims ahead of need and releases, and what the other tests of this
    // binary claim and release meanwhile: a handful, not one per pod.
    assert!(
        blocks < 12,
        "{blocks} IPBlock events for {} pod changes elsewhere",
        2 * PODS
    );
    assert!(
        pools < 12,
        "{pools} IPPool events for {} pod changes elsewhere",
        2 * PODS
    );
    Ok(())
}
