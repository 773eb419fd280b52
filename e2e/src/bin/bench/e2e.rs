//! `bench e2e`: sinew on a 3-node local cluster (the demo's: control plane, `helm install` of
//! charts/sinew, the operator and one agent per node under the chart's identities; nodes
//! `bench-0` and `bench-1` on one subnet, `bench-2` behind a router), measuring what a user
//! of the cluster waits for: pods getting their network, the pool status catching up, a live
//! mode switch converging, and pod-to-pod TCP throughput against a bare veth pair.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sinew_crds::{IPBlock, IPBlockUsage, IPPool, PoolMode};
use sinew_e2e::ControlPlane;
use sinew_e2e::cluster::{LocalCluster, Pod, PodRef, SimNode};
use sinew_e2e::helm::Helm;
use sinew_e2e::netsim;
use sinew_node_lib::netlink::Netlink;
use sinew_node_lib::netns::NetNs;

/// The pool the chart creates (mode `Auto`, 10.244.0.0/16).
const POOL: &str = "default-ipv4";
/// Subnet of each node: two on one L2 subnet, one behind the fabric's router.
const SUBNETS: [u8; 3] = [0, 0, 1];
/// How often the API and the nodes' routes are polled while waiting for something.
const POLL: Duration = Duration::from_millis(10);
/// Mode switch rounds (Auto -> VXLAN -> Auto).
const SWITCH_ROUNDS: usize = 3;
/// Rounds of starting and deleting all pods; the median counts.
const RATE_ROUNDS: usize = 3;
/// Transfers per path; the best one counts.
const TRANSFERS: usize = 3;

type Result<T> = std::result::Result<T, String>;

/// What to measure, from the command line.
pub struct Settings {
    pub pods: usize,
    pub parallel: usize,
    pub samples: usize,
    pub mib: usize,
}

/// One line of the table.
pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: String,
    pub note: String,
}

impl Row {
    fn new(metric: &str, value: String, target: &str, note: String) -> Row {
        Row {
            metric: metric.into(),
            value,
            target: target.into(),
            note,
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 0.5)
}

fn spread(samples: &[Duration]) -> String {
    let min = samples.iter().min().copied().unwrap_or_default();
    let max = samples.iter().max().copied().unwrap_or_default();
    format!("min {}, max {}", ms(min), ms(max))
}

/// Runs the whole benchmark; everything it creates is removed when it returns, whether it
/// succeeded or not (the control plane, cluster and namespace guards drop).
pub async fn run(settings: &Settings) -> Result<Vec<Row>> {
    eprintln!("building sinew and starting the control plane...");
    sinew_e2e::plugin::workspace_binary("sinew-operator", "sinew-operator");
    sinew_e2e::plugin::workspace_binary("sinew-node-agent", "sinew-node");
    sinew_e2e::plugin::sinew_binary();
    let cp = ControlPlane::start()
        .await
        .map_err(|e| format!("starting the control plane: {e}"))?;
    let client = cp.client().await.map_err(|e| format!("API client: {e}"))?;
    Helm::new(&cp).map_err(|e| e.to_string())?.install(&[])?;
    let _operator = sinew_e2e::helm::start_operator(&cp, &client, "sinew-operator-0")
        .await
        .map_err(|e| format!("starting the operator: {e}"))?;
    eprintln!("bringing up 3 nodes...");
    let cluster = LocalCluster::start_with(&cp, "bench", &SUBNETS, true).await;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let pools: Api<IPPool> = Api::all(client.clone());
    let blocks: Api<IPBlock> = Api::all(client.clone());
    let owners = block_owners(&blocks).await?;
    wait_converged(
        &pools,
        &cluster,
        &owners,
        PoolMode::Auto,
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| format!("the fresh cluster did not converge: {e}"))?;

    let mut rows = Vec::new();
    eprintln!(
        "starting {} pods ({} at a time), then deleting them...",
        settings.pods, settings.parallel
    );
    rows.extend(pod_rates(&cluster, settings).await?);
    wait_allocated(&pools, 0, Duration::from_secs(30)).await?;

    eprintln!(
        "timing ADD/DEL -> IPPool status.allocated ({} samples)...",
        settings.samples
    );
    rows.extend(
        status_latency(
            &cluster,
            &pools,
            &Api::all(client.clone()),
            settings.samples,
        )
        .await?,
    );

    eprintln!("starting the throughput pods...");
    let a = add_pod(&cluster, 0, "tput-a").await?;
    let b = add_pod(&cluster, 0, "tput-b").await?;
    let c = add_pod(&cluster, 1, "tput-c").await?;
    let d = add_pod(&cluster, 2, "tput-d").await?;
    let owners = block_owners(&blocks).await?;
    wait_converged(
        &pools,
        &cluster,
        &owners,
        PoolMode::Auto,
        Duration::from_secs(30),
    )
    .await?;
    let bytes = settings.mib << 20;

    eprintln!("bare veth baseline...");
    let veth = {
        let (left, right) = (netsim::netns("veth"), netsim::netns("veth"));
        let ips = (
            IpAddr::V4(Ipv4Addr::new(10, 98, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 98, 0, 2)),
        );
        netsim::veth_pair(&left, &right, ips, 24)?;
        throughput(&right, &left, ips.1, bytes)?
    };
    eprintln!("pod-to-pod throughput, mode Auto...");
    let same_node = throughput(&b.ns, &a.ns, b.ipv4(), bytes)?;
    let routed = throughput(&c.ns, &a.ns, c.ipv4(), bytes)?;
    let cross_subnet = throughput(&d.ns, &a.ns, d.ipv4(), bytes)?;

    eprintln!("switching modes ({SWITCH_ROUNDS} rounds Auto -> VXLAN -> Auto)...");
    let (mut to_vxlan, mut to_auto) = (Vec::new(), Vec::new());
    let mut vxlan = None;
    for _ in 0..SWITCH_ROUNDS {
        to_vxlan.push(switch_mode(&pools, &cluster, &owners, PoolMode::Vxlan).await?);
        if vxlan.is_none() {
            eprintln!("pod-to-pod throughput, mode VXLAN...");
            vxlan = Some(throughput(&c.ns, &a.ns, c.ipv4(), bytes)?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        to_auto.push(switch_mode(&pools, &cluster, &owners, PoolMode::Auto).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (name, switches) in [("Auto -> VXLAN", &to_vxlan), ("VXLAN -> Auto", &to_auto)] {
        let kernel: Vec<Duration> = switches.iter().map(|s| s.0).collect();
        let status: Vec<Duration> = switches.iter().map(|s| s.1).collect();
        rows.push(Row::new(
            &format!("{name}: routes on all nodes (median)"),
            ms(median(&kernel)),
            "-",
            format!(
                "patch of spec.mode until every peer route of all 3 nodes uses the mode's device; {} switches, {}",
                kernel.len(),
                spread(&kernel)
            ),
        ));
        rows.push(Row::new(
            &format!("{name}: pool status converged (median)"),
            ms(median(&status)),
            "-",
            format!(
                "until modeConvergence 3/3, observedGeneration = generation, Ready=True; {}",
                spread(&status)
            ),
        ));
    }

    let mtu = |pod: &Pod| pod_mtu(&pod.ns).map_or_else(|| "?".into(), |m| m.to_string());
    let vs_veth = |mbs: f64| format!("{:.2} of veth", mbs / veth);
    let bulk = format!("best of {TRANSFERS} x {} MiB", settings.mib);
    rows.push(Row::new(
        "TCP pod -> pod, same node",
        format!("{same_node:.0} MB/s"),
        &vs_veth(same_node),
        format!("{bulk}; bench-0 -> bench-0, pod MTU {}", mtu(&a)),
    ));
    rows.push(Row::new(
        "TCP pod -> pod, across nodes, routed",
        format!("{routed:.0} MB/s"),
        &vs_veth(routed),
        format!("{bulk}; bench-0 -> bench-1 (same subnet), mode Auto"),
    ));
    if let Some(vxlan) = vxlan {
        rows.push(Row::new(
            "TCP pod -> pod, across nodes, VXLAN",
            format!("{vxlan:.0} MB/s"),
            &vs_veth(vxlan),
            format!("{bulk}; bench-0 -> bench-1 (same subnet), mode VXLAN"),
        ));
    }
    rows.push(Row::new(
        "TCP pod -> pod, across subnets (VXLAN + router)",
        format!("{cross_subnet:.0} MB/s"),
        &vs_veth(cross_subnet),
        format!("{bulk}; bench-0 -> bench-2, mode Auto"),
    ));
    rows.push(Row::new(
        "TCP over a bare veth pair (no sinew)",
        format!("{veth:.0} MB/s"),
        "baseline",
        format!("{bulk}; two namespaces, one veth pair, MTU 1500"),
    ));

    eprintln!("measuring the agents' cost at rest ({IDLE_WINDOW:?}, 4 pods, probes running)...");
    rows.extend(agent_cost(&cluster).await?);

    for p in [a, b, c, d] {
        remove_pod(&cluster, p).await?;
    }
    Ok(rows)
}

/// How long the agents' CPU is measured at rest.
const IDLE_WINDOW: Duration = Duration::from_secs(30);

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state: utime and stime
    // are the 12th and 13th of them.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (f.len() == 2).then(|| Duration::from_millis((f[0] + f[1]) * 1000 / tick))
}

fn passes(node: &SimNode) -> Option<u64> {
    let (_, metrics) = sinew_e2e::cluster::agent_http(node, "/metrics").ok()?;
    metrics
        .lines()
        .find(|l| l.starts_with("sinew_node_passes_total"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Each agent's CPU per pass (a pass runs the node checks: link, route and rule dumps) and
/// per second (passes plus the probe mesh's thread), over [`IDLE_WINDOW`] with no change in
/// the cluster but the resync.
async fn agent_cost(cluster: &LocalCluster) -> Result<Vec<Row>> {
    let sample = |n: &SimNode| Some((cpu_time(n.agent_pid()?)?, passes(n)?));
    let before: Vec<_> = cluster.nodes.iter().map(sample).collect();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after: Vec<_> = cluster.nodes.iter().map(sample).collect();
    let (mut cpu, mut runs) = (Duration::ZERO, 0u64);
    for (b, a) in before.iter().zip(&after) {
        let (Some((c0, p0)), Some((c1, p1))) = (b, a) else {
            return Err("an agent's CPU time or pass count could not be read".into());
        };
        cpu += c1.saturating_sub(*c0);
        runs += p1.saturating_sub(*p0);
    }
    let agents = cluster.nodes.len() as u32;
    Ok(vec![
        Row::new(
            "agent CPU per pass",
            format!("{:.1} ms", cpu.as_secs_f64() * 1000.0 / runs.max(1) as f64),
            "-",
            format!(
                "{runs} passes of {agents} agents in {IDLE_WINDOW:?} (resync 2 s): node checks (links, routes and rules of both families), peers, NAT, status; probe thread included"
            ),
        ),
        Row::new(
            "agent CPU at rest",
            format!(
                "{:.2} %",
                cpu.as_secs_f64() * 100.0 / (IDLE_WINDOW.as_secs_f64() * f64::from(agents))
            ),
            "-",
            "of one core, per agent: passes plus the probe mesh (2 peers, a round every 2 s)"
                .into(),
        ),
    ])
}

/// Block CIDR -> owning node, for the pool's blocks.
async fn block_owners(blocks: &Api<IPBlock>) -> Result<BTreeMap<String, String>> {
    Ok(blocks
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing IPBlocks: {e}"))?
        .items
        .into_iter()
        .filter(|b| b.spec.pool == POOL)
        .map(|b| (b.spec.cidr, b.spec.node))
        .collect())
}

/// Whether every node routes every block of every other node through the device `mode`
/// calls for (VXLAN: `sinew.vxlan`; Auto: the underlay towards a peer of the same subnet).
fn routes_converged(
    cluster: &LocalCluster,
    owners: &BTreeMap<String, String>,
    mode: PoolMode,
) -> bool {
    cluster.nodes.iter().enumerate().all(|(i, node)| {
        let routes = cluster.peer_routes(&node.name);
        owners
            .iter()
            .filter(|(_, owner)| **owner != node.name)
            .all(|(cidr, owner)| {
                let Some(j) = cluster.nodes.iter().position(|n| n.name == *owner) else {
                    return false;
                };
                let want_vxlan = match mode {
                    PoolMode::Vxlan => true,
                    PoolMode::Routed => false,
                    PoolMode::Auto => SUBNETS[i] != SUBNETS[j],
                };
                routes
                    .get(cidr)
                    .is_some_and(|via| via.contains("sinew.vxlan") == want_vxlan)
            })
    })
}

/// Whether the operator reports the pool's current spec programmed on every node.
fn status_converged(pool: &IPPool, nodes: usize) -> bool {
    let Some(status) = &pool.status else {
        return false;
    };
    status.observed_generation == pool.metadata.generation
        && status.mode_convergence.as_deref() == Some(format!("{nodes}/{nodes}").as_str())
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Waits until both the nodes' routes and the pool status show `mode` applied; returns how
/// long after `start` each was first seen.
async fn converge_times(
    pools: &Api<IPPool>,
    cluster: &LocalCluster,
    owners: &BTreeMap<String, String>,
    mode: PoolMode,
    start: Instant,
    timeout: Duration,
) -> Result<(Duration, Duration)> {
    let (mut kernel, mut status) = (None, None);
    loop {
        if kernel.is_none() && routes_converged(cluster, owners, mode) {
            kernel = Some(start.elapsed());
        }
        if status.is_none() {
            let pool = pools
                .get(POOL)
                .await
                .map_err(|e| format!("reading IPPool {POOL}: {e}"))?;
            if status_converged(&pool, cluster.nodes.len()) {
                status = Some(start.elapsed());
            }
        }
        if let (Some(k), Some(s)) = (kernel, status) {
            return Ok((k, s));
        }
        if start.elapsed() > timeout {
            let pool = pools.get(POOL).await.ok();
            return Err(format!(
                "mode {mode} not converged after {timeout:?} (routes: {}, status: {}); status now: {}",
                if kernel.is_some() { "yes" } else { "no" },
                if status.is_some() { "yes" } else { "no" },
                pool.and_then(|p| serde_json::to_string(&p.status).ok())
                    .unwrap_or_default()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_converged(
    pools: &Api<IPPool>,
    cluster: &LocalCluster,
    owners: &BTreeMap<String, String>,
    mode: PoolMode,
    timeout: Duration,
) -> Result<()> {
    converge_times(pools, cluster, owners, mode, Instant::now(), timeout)
        .await
        .map(|_| ())
}

/// Patches the pool's mode and times (routes, status) convergence from the patch request.
async fn switch_mode(
    pools: &Api<IPPool>,
    cluster: &LocalCluster,
    owners: &BTreeMap<String, String>,
    mode: PoolMode,
) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    pools
        .patch(
            POOL,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mode": mode}})),
        )
        .await
        .map_err(|e| format!("patching IPPool {POOL} to {mode}: {e}"))?;
    converge_times(pools, cluster, owners, mode, start, Duration::from_secs(30)).await
}

/// The pool's `status.allocated` (0 when not reported yet).
async fn allocated(pools: &Api<IPPool>) -> Result<u64> {
    let pool = pools
        .get(POOL)
        .await
        .map_err(|e| format!("reading IPPool {POOL}: {e}"))?;
    Ok(pool.status.and_then(|s| s.allocated).unwrap_or(0))
}

/// Polls until `status.allocated` is `want`; returns when it was first seen.
async fn wait_allocated(pools: &Api<IPPool>, want: u64, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = allocated(pools).await?;
        if now == want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "IPPool {POOL} status.allocated is {now}, expected {want} within {timeout:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Creates the Pod object `default/<name>` scheduled to node `node` (as the API server holds
/// it before the kubelet starts the sandbox); returns its UID.
async fn pod_object(cluster: &LocalCluster, node: usize, name: &str) -> String {
    cluster
        .create_pod_object(&cluster.nodes[node].name, "default", name)
        .await
}

/// A pod namespace, as the runtime creates it for the sandbox before CNI ADD.
fn sandbox() -> Result<NetNs> {
    NetNs::create(&netsim::unique_name("pod")).map_err(|e| format!("creating a pod namespace: {e}"))
}

/// Creates pod `default/<name>` on node `node` and attaches it through the cluster's
/// networker (upstream cnitool, as the runtime would).
async fn add_pod(cluster: &LocalCluster, node: usize, name: &str) -> Result<Pod> {
    let uid = pod_object(cluster, node, name).await;
    attach(cluster, node, name, &uid, sandbox()?)
}

/// CNI ADD of pod `default/<name>` (Pod object `uid`) on node `node` into namespace `ns`.
fn attach(cluster: &LocalCluster, node: usize, name: &str, uid: &str, ns: NetNs) -> Result<Pod> {
    let sim = &cluster.nodes[node];
    let pod = PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid: uid.into(),
    };
    let run = cluster.networker.add(sim, &pod, ns.path());
    if !run.success {
        return Err(format!(
            "ADD of pod {name} on {}: {} {}",
            sim.name, run.stdout, run.stderr
        ));
    }
    let result = serde_json::from_str(&run.stdout)
        .map_err(|e| format!("CNI result of pod {name}: {e}: {}", run.stdout))?;
    let pod = Pod {
        namespace: pod.namespace,
        name: pod.name,
        uid: pod.uid,
        node: sim.name.clone(),
        ns,
        result,
    };
    if !pod.ips().iter().any(IpAddr::is_ipv4) {
        return Err(format!("pod {name} got no IPv4 address: {}", pod.result));
    }
    Ok(pod)
}

/// CNI DEL of a pod (its Pod object stays; see [`remove_pod`]).
fn del_pod(cluster: &LocalCluster, pod: &Pod) -> Result<()> {
    let r = PodRef {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
    };
    let run = cluster
        .networker
        .del(cluster.node(&pod.node), &r, pod.ns.path());
    if !run.success {
        return Err(format!(
            "DEL of pod {} on {}: {} {}",
            pod.name, pod.node, run.stdout, run.stderr
        ));
    }
    Ok(())
}

/// What one job of [`in_parallel`] returned, and how long it took.
type Slot<T> = Mutex<Option<(Result<T>, Duration)>>;

/// Runs `job(i)` for every `i < count` on `parallel` threads; returns the results in order,
/// each with its latency, and the wall time from the first start to the last return.
fn in_parallel<T: Send>(
    count: usize,
    parallel: usize,
    job: impl Fn(usize) -> Result<T> + Sync,
) -> Result<(Vec<T>, Vec<Duration>, Duration)> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Slot<T>> = (0..count).map(|_| Mutex::new(None)).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        return;
                    }
                    let t = Instant::now();
                    let out = job(i);
                    let took = t.elapsed();
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some((out, took));
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    let (mut done, mut latencies, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for slot in slots {
        match slot.into_inner().ok().flatten() {
            Some((Ok(v), took)) => {
                done.push(v);
                latencies.push(took);
            }
            Some((Err(e), _)) => errors.push(e),
            None => errors.push("a worker thread died".into()),
        }
    }
    if let Some(first) = errors.first() {
        return Err(format!(
            "{} of {count} failed; first: {first}",
            errors.len()
        ));
    }
    Ok((done, latencies, wall))
}

/// CNI DEL of a pod, then deletion of its Pod object.
async fn remove_pod(cluster: &LocalCluster, pod: Pod) -> Result<()> {
    del_pod(cluster, &pod)?;
    cluster.delete_pod_object(&pod.namespace, &pod.name).await;
    Ok(())
}

/// Pods network-ready per second, then deleted per second: [`RATE_ROUNDS`] rounds of
/// `settings.pods` ADDs then as many DELs; the median round counts. The Pod objects and
/// sandboxes are created before the ADDs and the objects deleted after the DELs, untimed.
async fn pod_rates(cluster: &LocalCluster, settings: &Settings) -> Result<Vec<Row>> {
    let n = settings.pods;
    let nodes = cluster.nodes.len();
    let (mut add_walls, mut del_walls) = (Vec::new(), Vec::new());
    let (mut add_lat, mut del_lat) = (Vec::new(), Vec::new());
    for round in 0..RATE_ROUNDS {
        let name = |i: usize| format!("rate-{round}-{i}");
        let (mut namespaces, mut uids) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            uids.push(pod_object(cluster, i % nodes, &name(i)).await);
            namespaces.push(Mutex::new(Some(sandbox()?)));
        }
        let (pods, lat, wall) = in_parallel(n, settings.parallel, |i| {
            let ns = namespaces[i]
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .ok_or("pod namespace taken twice")?;
            attach(cluster, i % nodes, &name(i), &uids[i], ns)
        })?;
        add_walls.push(wall);
        add_lat.extend(lat);
        let (_, lat, wall) = in_parallel(n, settings.parallel, |i| del_pod(cluster, &pods[i]))?;
        del_walls.push(wall);
        del_lat.extend(lat);
        for pod in pods {
            cluster.delete_pod_object(&pod.namespace, &pod.name).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rate = |wall: Duration| n as f64 / wall.as_secs_f64();
    let how = |verb: &str, walls: &[Duration], lat: &[Duration]| {
        let rates: Vec<f64> = walls.iter().map(|w| rate(*w)).collect();
        format!(
            "{n} pods round-robin on 3 nodes, {} cnitool {verb}s at a time, first {verb} to last returned; median of {RATE_ROUNDS} rounds (in order: {} /s); each {verb} p50 {}, p99 {}",
            settings.parallel,
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
        )
    };
    Ok(vec![
        Row::new(
            "pods network-ready per second (ADD)",
            format!("{:.1} /s", rate(median(&add_walls))),
            ">= 50 /s (issue #7)",
            how("ADD", &add_walls, &add_lat),
        ),
        Row::new(
            "pods torn down per second (DEL)",
            format!("{:.1} /s", rate(median(&del_walls))),
            "-",
            how("DEL", &del_walls, &del_lat),
        ),
    ])
}

/// A pause of 200 to 700 ms, different each time: the agent reports allocations on a
/// periodic loop, and evenly spaced samples would all land at the same phase of it.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(200 + u64::from(nanos % 500))
}

/// Polls until a block's `IPBlockUsage` lists `ip` (or, with `held` false, none does);
/// returns when that was first seen.
async fn wait_block_status(
    usages: &Api<IPBlockUsage>,
    ip: IpAddr,
    held: bool,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    let ip = ip.to_string();
    loop {
        let list = usages
            .list(&Default::default())
            .await
            .map_err(|e| format!("listing IPBlockUsages: {e}"))?;
        let listed = list.items.iter().any(|u| {
            u.status
                .as_ref()
                .is_some_and(|s| s.allocations.iter().any(|a| a.ip == ip))
        });
        if listed == held {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{ip} {} an IPBlockUsage within {timeout:?}",
                if held { "not in" } else { "still in" }
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Time from a pod's ADD (request start) to its address in its block's usage and to the
/// pool status counting it, and from its DEL to both dropping it again.
async fn status_latency(
    cluster: &LocalCluster,
    pools: &Api<IPPool>,
    usages: &Api<IPBlockUsage>,
    samples: usize,
) -> Result<Vec<Row>> {
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let (mut add_block, mut del_block) = (Vec::new(), Vec::new());
    let base = allocated(pools).await?;
    for i in 0..samples {
        let (node, name) = (i % cluster.nodes.len(), format!("status-{i}"));
        let uid = pod_object(cluster, node, &name).await;
        let ns = sandbox()?;
        let start = Instant::now();
        let pod = attach(cluster, node, &name, &uid, ns)?;
        let ip = *pod.ips().first().ok_or("the pod got no address")?;
        let seen = wait_block_status(usages, ip, true, Duration::from_secs(10)).await?;
        add_block.push(seen - start);
        let seen = wait_allocated(pools, base + 1, Duration::from_secs(10)).await?;
        add.push(seen - start);
        tokio::time::sleep(jitter()).await;
        let start = Instant::now();
        del_pod(cluster, &pod)?;
        let seen = wait_block_status(usages, ip, false, Duration::from_secs(10)).await?;
        del_block.push(seen - start);
        let seen = wait_allocated(pools, base, Duration::from_secs(10)).await?;
        del.push(seen - start);
        cluster.delete_pod_object(&pod.namespace, &pod.name).await;
        drop(pod);
        tokio::time::sleep(jitter()).await;
    }
    let how = |verb: &str, lat: &[Duration]| {
        format!(
            "{} pods, one at a time; from the {verb} request to the first GET (every 10 ms) showing the new count (a pool's counts alone are written at most every 5 s, decision 95); {}",
            lat.len(),
            spread(lat)
        )
    };
    let how_block = |verb: &str, lat: &[Duration]| {
        format!(
            "{} pods, one at a time; from the {verb} request to the first LIST (every 10 ms) whose IPBlockUsage shows the change; {}",
            lat.len(),
            spread(lat)
        )
    };
    Ok(vec![
        Row::new(
            "ADD -> IPBlockUsage (median)",
            ms(median(&add_block)),
            "< 100 ms (issue #13)",
            how_block("ADD", &add_block),
        ),
        Row::new(
            "DEL -> IPBlockUsage (median)",
            ms(median(&del_block)),
            "< 100 ms (issue #13)",
            how_block("DEL", &del_block),
        ),
        Row::new(
            "ADD -> IPPool status.allocated (median)",
            ms(median(&add)),
            "-",
            how("ADD", &add),
        ),
        Row::new(
            "DEL -> IPPool status.allocated (median)",
            ms(median(&del)),
            "-",
            how("DEL", &del),
        ),
    ])
}

/// Best of [`TRANSFERS`] bulk transfers of `bytes` from `client` to a sink in `server`, in
/// MB/s (10^6 bytes per second).
fn throughput(server: &NetNs, client: &NetNs, server_ip: IpAddr, bytes: usize) -> Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..TRANSFERS {
        let start = Instant::now();
        let got = netsim::bulk_transfer(server, client, SocketAddr::new(server_ip, 0), bytes)?;
        let took = start.elapsed();
        if got != bytes {
            return Err(format!(
                "sent {bytes} bytes to {server_ip}, the sink got {got}"
            ));
        }
        best = best.max(bytes as f64 / took.as_secs_f64() / 1e6);
    }
    Ok(best)
}

/// MTU of a pod's `eth0`.
fn pod_mtu(ns: &NetNs) -> Option<u32> {
    Netlink::in_netns(ns)
        .ok()?
        .link_by_name("eth0")
        .ok()
        .flatten()
        .map(|l| l.mtu)
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| metric | value | target/baseline | note |\n|---|---:|---|---|\n");
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {} |\n",
            r.metric, r.value, r.target, r.note
        );
    }
    out
}

const HEADING: &str = "## End-to-end: local cluster";
const BEGIN: &str =
    "<!-- begin: written by `bench e2e --write-docs`; notes after the end marker are kept -->";
const END: &str = "<!-- end: written by `bench e2e --write-docs` -->";

const METHOD: &str = "\
The cluster is the demo's, on this one machine: a real etcd and kube-apiserver, `helm install`
of charts/sinew, the operator and one `sinew-node` agent per node running as processes under
the chart's service-account identities. Nodes are network namespaces: `bench-0` and `bench-1`
on 10.99.0.0/24, `bench-2` on 10.99.1.0/24 behind a router namespace. Each pod is a Pod
object scheduled to its node (created before its ADD, deleted after its DEL, untimed) and a
network namespace attached through upstream `cnitool` (libcni) with the conflist and plugin
each agent installed. The pool is the chart's `default-ipv4` (10.244.0.0/16, /26 blocks, mode
`Auto`). The control plane, the agents, the operator and all traffic share the machine's cores.

- **Pods per second**: the pod namespaces (the runtime's sandboxes) are created first; then one
  cnitool ADD per pod, round-robin over the 3 nodes, `--parallel` at a time (kubelet runs CNI
  ADDs of different pods concurrently), timed from the first ADD starting to the last one
  returning a result with an address. Then the same for the DELs. 3 rounds; the median counts.
- **ADD/DEL to pool status**: one pod at a time, nodes in turn; from the start of the ADD (DEL)
  to the first GET of the IPPool (every 10 ms) whose `status.allocated` is one up (down). The
  path: the plugin writes the node's IPAM store, the agent's status loop patches the IPBlock
  status, the operator's pool controller sums the blocks into the pool status.
- **Mode switch**: a merge patch of `spec.mode`, Auto -> VXLAN then VXLAN -> Auto, 3 rounds;
  timed from the patch request until (routes) every node's peer route to every block of every
  other node goes through the device the mode calls for (`sinew.vxlan`, or the underlay
  towards a same-subnet peer in `Auto`), read with netlink every 10 ms, and until (status) the
  pool reports `modeConvergence` 3/3 for the new `metadata.generation` with `Ready=True`.
- **TCP throughput**: one connection, 64 KiB writes of `--mib` MiB, wall time from connect to
  the receiver's end of stream, best of 3; MB = 10^6 bytes. Same node: two pods on `bench-0`;
  routed: `bench-0` -> `bench-1` in `Auto`; VXLAN: the same pair in `VXLAN`; across subnets:
  `bench-0` -> `bench-2` in `Auto` (VXLAN through the router). Baseline: two namespaces joined by
  one veth pair with addresses, no sinew. Sender and receiver are threads of the benchmark.";

/// Writes the run into the "End-to-end: local cluster" section of docs/benchmarks.md: the part
/// between the markers is replaced (the section is appended when missing), the rest of the
/// file, including notes after the end marker, is kept.
pub fn write_docs(
    title: &str,
    machine: &str,
    table: &str,
    settings: &Settings,
) -> Result<std::path::PathBuf> {
    let root = sinew_e2e::tools::repo_root();
    let path = root.join("docs/benchmarks.md");
    let (date, commit) = super::run_stamp(&root);
    let block = format!(
        "{BEGIN}\nCommand (root): `make bench-e2e`, i.e.\n`cargo run -p sinew-e2e --release --bin bench -- e2e [--pods 60] [--parallel 8] [--samples 10] [--mib 256] --write-docs`\n(`--write-docs` rewrites this part of the section; without it the table is only printed).\n\n{METHOD}\n\nRun on {date}, release build of commit {commit}, with `--pods {} --parallel {} --samples {} --mib {}`:\n\n```\n{title}\nmachine: {machine}\n```\n\n{table}{END}\n",
        settings.pods, settings.parallel, settings.samples, settings.mib
    );
    super::write_section(&path, (BEGIN, END, HEADING), &block)?;
    Ok(path)
}
