//! The operator at scale (`bench scale`): 1,000 Node objects with agent reports, 50 pools,
//! 1,000 IPBlocks and their usages holding 10,000 allocations and their 10,000 Pod objects, all in the real API
//! server; the operator (release build, leader) reconciles them. Measured: the time until
//! every pool shows its usage, the operator's resident memory, and how long a change takes to
//! show in `IPPool` status (a spec edit, and an agent's block report).

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sinew_crds::{IPBlock, IPBlockUsage, IPPool, IPPoolStatus};

use crate::ControlPlane;
use crate::process::Supervised;

/// Sizes of the run.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub nodes: usize,
    pub pools: usize,
    pub allocations_per_node: usize,
    /// Changes timed per kind.
    pub samples: usize,
}

impl Default for Scale {
    fn default() -> Self {
        Scale {
            nodes: 1000,
            pools: 50,
            allocations_per_node: 10,
            samples: 20,
        }
    }
}

/// What was measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub load: Duration,
    pub initial_convergence: Duration,
    pub rss_kib_steady: u64,
    pub rss_kib_peak: u64,
    pub spec_edit: Vec<Duration>,
    pub block_report: Vec<Duration>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resident and peak resident memory of `pid`, KiB.
pub fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const CONCURRENCY: usize = 16;

fn pool_of(node: usize, scale: &Scale) -> usize {
    node % scale.pools
}

/// Fills the API server: pools, nodes with reports, pods, blocks with allocations.
async fn load(client: &kube::Client, scale: &Scale) -> Result<(), BoxError> {
    let params = PatchParams::apply("sinew-bench").force();
    let pools: Api<IPPool> = Api::all(client.clone());
    for p in 0..scale.pools {
        // Pool p serves the nodes labelled rack=p: 10.<p+1>.0.0/16, /26 blocks.
        let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": format!("pool-{p}")},
            "spec": {"cidr": format!("10.{}.0.0/16", p + 1), "blockSize": 26, "mode": "Auto",
                     "nodeSelector": {"matchLabels": {"bench.sinew.dev/rack": p.to_string()}}}});
        pools
            .patch(&format!("pool-{p}"), &params, &Patch::Apply(&pool))
            .await?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    stream::iter(0..scale.nodes)
        .map(|n| {
            let nodes = nodes.clone();
            let params = params.clone();
            async move {
                let name = format!("node-{n:04}");
                let pool = pool_of(n, scale);
                let report = json!({"ready": true, "specHash": "bench", "underlay": format!("192.168.{}.0/24", n / 250),
                                    "underlayMtu": 1500, "modes": {format!("pool-{pool}"): "Auto"}});
                // Like a kubelet's Node: labels, addresses, capacity, images, node info.
                let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                               "node.kubernetes.io/instance-type": "m5.large",
                               "topology.kubernetes.io/zone": format!("zone-{}", n % 3),
                               "bench.sinew.dev/rack": pool.to_string()},
                    "annotations": {"sinew.dev/node-state": report.to_string(),
                                    "sinew.dev/vtep-mac": "02:00:00:00:00:01"}}});
                nodes.patch(&name, &params, &Patch::Apply(&node)).await?;
                let images: Vec<serde_json::Value> = (0..20)
                    .map(|i| json!({"names": [format!("registry.example/app-{i}@sha256:{:064x}", i), format!("registry.example/app-{i}:v1.{i}")], "sizeBytes": 50_000_000 + i}))
                    .collect();
                let status = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                    "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", n / 250, n % 250 + 1)},
                                             {"type": "Hostname", "address": name}],
                               "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                               "allocatable": {"cpu": "2", "memory": "7Gi", "pods": "110"},
                               "images": images,
                               "nodeInfo": {"machineID": format!("{n:032x}"), "systemUUID": format!("{n:032x}"), "bootID": format!("{n:032x}"),
                                            "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12", "containerRuntimeVersion": "containerd://1.7",
                                            "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}});
                nodes
                    .patch_status(&name, &params, &Patch::Apply(&status))
                    .await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let blocks: Api<IPBlock> = Api::all(client.clone());
    let usages: Api<IPBlockUsage> = Api::all(client.clone());
    stream::iter(0..scale.nodes)
        .map(|n| {
            let (pods, blocks, usages, params) =
                (pods.clone(), blocks.clone(), usages.clone(), params.clone());
            async move {
                let node = format!("node-{n:04}");
                let pool = pool_of(n, scale);
                // Each node's block: the (n / pools)-th /26 of its pool.
                let index = n / scale.pools;
                let base = index * 64;
                let cidr = format!("10.{}.{}.{}/26", pool + 1, base / 256, base % 256);
                let mut allocations = Vec::new();
                for a in 0..scale.allocations_per_node {
                    let name = format!("app-{n:04}-{a}");
                    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default",
                        "labels": {"app": format!("app-{}", n % 50)}},
                        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:v1"}]}});
                    let created = pods
                        .create(&PostParams::default(), &serde_json::from_value(pod)?)
                        .await?;
                    allocations.push(json!({"ip": format!("10.{}.{}.{}", pool + 1, base / 256, base % 256 + a + 1),
                        "containerId": format!("{:064x}", n * 100 + a), "interface": "eth0",
                        "podNamespace": "default", "podName": name, "podUid": created.metadata.uid, "generation": 1}));
                }
                let name = cidr.replace(['.', '/'], "-");
                // Labelled like an agent's claim.
                let block = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
                                   "metadata": {"name": name, "labels": {"sinew.dev/node": node, "sinew.dev/pool": format!("pool-{pool}")}},
                                   "spec": {"pool": format!("pool-{pool}"), "cidr": cidr, "node": node}});
                let block = blocks.patch(&name, &params, &Patch::Apply(&block)).await?;
                // Its usage, as the agent writes it: owned by the block, then its status.
                let usage = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
                                   "metadata": {"name": name, "ownerReferences": [{"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
                                                "name": name, "uid": block.metadata.uid}]},
                                   "spec": {"pool": format!("pool-{pool}"), "cidr": cidr, "node": node}});
                usages.patch(&name, &params, &Patch::Apply(&usage)).await?;
                let status = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": name},
                                    "status": {"allocated": allocations.len(), "allocations": allocations}});
                usages
                    .patch_status(&name, &params, &Patch::Apply(&status))
                    .await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

async fn pools_converged(client: &kube::Client, scale: &Scale) -> Result<bool, BoxError> {
    let pools: Api<IPPool> = Api::all(client.clone());
    let expected = (scale.nodes / scale.pools * scale.allocations_per_node) as u64;
    let list = pools.list(&Default::default()).await?;
    Ok(list.items.len() == scale.pools
        && list.items.iter().all(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.allocated == Some(expected))
        }))
}

/// Polls `probe` every 5 ms until true; the elapsed time.
async fn time_until<F, Fut>(
    what: &str,
    within: Duration,
    mut probe: F,
) -> Result<Duration, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, BoxError>>,
{
    let start = Instant::now();
    loop {
        if probe().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!("not reached within {within:?} ({what})").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long until `field` of pool `name`'s status moves away from `before`.
async fn status_change(
    pools: &Api<IPPool>,
    name: &str,
    what: &str,
    field: fn(&IPPoolStatus) -> Option<u64>,
    before: Option<u64>,
) -> Result<Duration, BoxError> {
    time_until(
        &format!("{what} in status"),
        Duration::from_secs(30),
        || async {
            let p = pools.get(name).await?;
            Ok(p.status.as_ref().and_then(field) != before)
        },
    )
    .await
}

/// Runs the benchmark against a fresh control plane.
pub async fn run(scale: Scale) -> Result<Measured, BoxError> {
    let cp = ControlPlane::start().await?;
    let log = cp.dir().join("operator.log");
    let result = measure(&cp, scale).await;
    result.map_err(|e| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{e}\n--- operator ---\n{}", tail.join("\n")).into()
    })
}

async fn measure(cp: &ControlPlane, scale: Scale) -> Result<Measured, BoxError> {
    let client = cp.client().await?;
    crate::install::install_crds(&client).await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sinew-system"}});
    crate::install::apply_manifest(&client, &ns.to_string()).await?;
    let cn = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "ClusterNetwork", "metadata": {"name": "default"}, "spec": {}});
    crate::install::apply_manifest(&client, &cn.to_string()).await?;
    let mut m = Measured::default();
    eprintln!(
        "[scale] loading {} nodes, {} pools, {} pods and allocations into the API server",
        scale.nodes,
        scale.pools,
        scale.nodes * scale.allocations_per_node
    );
    let start = Instant::now();
    load(&client, &scale).await?;
    m.load = start.elapsed();

    // SINEW_OPERATOR_BIN measures another build (e.g. the static musl binary the image ships).
    let bin = std::env::var_os("SINEW_OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::plugin::workspace_binary("sinew-operator", "sinew-operator"));
    eprintln!("[scale] starting the operator: {}", bin.display());
    let mut cmd = std::process::Command::new(bin);
    cmd.env("KUBECONFIG", cp.kubeconfig_path())
        .env("POD_NAMESPACE", "sinew-system")
        .env("SINEW_METRICS_ADDR", "127.0.0.1:0")
        .env("SINEW_PROBE_ADDR", "127.0.0.1:0")
        .env("SINEW_LOG", "info");
    let operator = Supervised::spawn("sinew-operator", cmd, &cp.dir().join("operator.log"))?;
    m.initial_convergence = time_until("every pool's usage", Duration::from_secs(300), || {
        pools_converged(&client, &scale)
    })
    .await?;
    // Let the start-up churn settle, then read memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    (m.rss_kib_steady, m.rss_kib_peak) = rss_kib(operator.pid());

    eprintln!(
        "[scale] timing {} spec edits and {} block reports",
        scale.samples, scale.samples
    );
    let pools: Api<IPPool> = Api::all(client.clone());
    for i in 0..scale.samples {
        let name = format!("pool-{}", i % scale.pools);
        // Reserving one more address changes the capacity the status shows.
        let reserved: Vec<String> = (0..=i / scale.pools)
            .map(|r| format!("10.{}.255.{}", i % scale.pools + 1, r + 1))
            .collect();
        let before = pools.get(&name).await?.status.and_then(|s| s.capacity);
        pools
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"reserved": reserved}})),
            )
            .await?;
        m.spec_edit
            .push(status_change(&pools, &name, "a spec edit", |s| s.capacity, before).await?);
    }
    let usages: Api<IPBlockUsage> = Api::all(client.clone());
    let params = PatchParams::apply("sinew-bench").force();
    for i in 0..scale.samples {
        // Node i's agent reports one allocation fewer (a pod went away).
        let node = i * 7 % scale.nodes;
        let pool = format!("pool-{}", pool_of(node, &scale));
        let usage = usages
            .list(&kube::api::ListParams::default().fields(&format!("spec.node=node-{node:04}")))
            .await?
            .items
            .into_iter()
            .next()
            .ok_or("no block usage")?;
        let mut status = usage.status.clone().unwrap_or_default();
        status.allocations.pop();
        status.allocated = status.allocations.len() as u32;
        let before = pools.get(&pool).await?.status.and_then(|s| s.allocated);
        let name = kube::ResourceExt::name_any(&usage);
        let patch = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage", "metadata": {"name": name}, "status": status});
        usages
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await?;
        m.block_report
            .push(status_change(&pools, &pool, "a block report", |s| s.allocated, before).await?);
    }
    let (_, peak) = rss_kib(operator.pid());
    m.rss_kib_peak = peak;
    if let Some(status) = operator.try_exit() {
        return Err(format!("the operator exited: {status}\n{}", operator.log_tail(20)).into());
    }
    Ok(m)
}
