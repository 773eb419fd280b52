//! Fills the API server with the synthetic cluster (see [`super::world`]): pools, Nodes shaped
//! like a kubelet's with an agent's report, Pod objects, and each node's block with its
//! `IPBlockUsage` listing the allocations. Concurrent: 150,000 pods take minutes even so.

use std::time::Instant;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sinew_crds::IPPool;

use super::world::{self, Allocation, RACK_LABEL, SynthNode};
use super::{BoxError, Scale};
use crate::cluster::CLUSTER_LABEL;

/// Requests in flight for Node writes and blocks.
const CONCURRENCY: usize = 16;
/// Requests in flight for Pod creations (the bulk).
const POD_CONCURRENCY: usize = 48;

/// Loads everything; returns the nodes with their pods.
pub async fn load(
    client: &kube::Client,
    scale: &Scale,
    peers_of: &str,
) -> Result<Vec<SynthNode>, BoxError> {
    let params = PatchParams::apply("sinew-bench").force();
    let pools: Api<IPPool> = Api::all(client.clone());
    for p in 0..scale.pools {
        let pool = json!({"apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": format!("pool-{p}")},
            "spec": {"cidr": format!("10.{}.0.0/16", p + 1), "blockSize": 26, "mode": "Auto",
                     "nodeSelector": {"matchLabels": {RACK_LABEL: p.to_string()}}}});
        pools
            .patch(&format!("pool-{p}"), &params, &Patch::Apply(&pool))
            .await?;
    }
    let mut nodes = world::nodes(scale);
    let start = Instant::now();
    let api: Api<Node> = Api::all(client.clone());
    stream::iter(nodes.iter())
        .map(|node| node_object(&api, &params, node, peers_of))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!(
        "[scale] {} nodes in {:.1} s",
        nodes.len(),
        start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let total = scale.nodes * scale.pods_per_node;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let created: Vec<(usize, usize, String)> = stream::iter(
        (0..scale.nodes).flat_map(|n| (0..scale.pods_per_node).map(move |a| (n, a))),
    )
    .map(|(n, a)| {
        let (pods, done, ip) = (&pods, &done, nodes[n].address(a + 1));
        async move {
            let name = format!("app-{n:04}-{a}");
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default",
                "labels": {"app": format!("app-{}", n % 50)}},
                "spec": {"nodeName": world::node_name(n), "containers": [{"name": "app", "image": "registry.example/app:v1"}]}});
            let created = pods
                .create(&PostParams::default(), &serde_json::from_value(pod)?)
                .await?;
            // Its address, as its kubelet writes it (the API server ignores a created status).
            let running = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
                .await?;
            let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if k % 10_000 == 0 {
                eprintln!(
                    "[scale] {k} / {total} pods ({:.0} per s)",
                    k as f64 / start.elapsed().as_secs_f64()
                );
            }
            Ok::<_, BoxError>((n, a, created.metadata.uid.unwrap_or_default()))
        }
    })
    .buffer_unordered(POD_CONCURRENCY)
    .try_collect()
    .await?;
    let mut created = created;
    created.sort_by_key(|(n, a, _)| (*n, *a));
    for (n, a, uid) in created {
        let node = &mut nodes[n];
        let ip = node.address(a + 1);
        node.allocations.push_back(Allocation {
            pod: format!("app-{n:04}-{a}"),
            uid,
            ip,
            container: format!("{:064x}", n * 1000 + a),
        });
    }

    let start = Instant::now();
    stream::iter(nodes.iter())
        .map(|node| async move {
            world::create_block(client, &node.name, &node.pool, &node.cidr).await?;
            world::write_allocations(client, node).await
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!(
        "[scale] {} blocks and their allocations in {:.1} s",
        nodes.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(nodes)
}

/// Node `node` like a kubelet's (labels, addresses, capacity, images, node info) with an
/// agent's report and VTEP MAC; a peer of the local cluster `peers_of`.
async fn node_object(
    api: &Api<Node>,
    params: &PatchParams,
    node: &SynthNode,
    peers_of: &str,
) -> Result<(), BoxError> {
    let (n, name) = (node.index, &node.name);
    let mac = sinew_node_lib::consts::vtep_mac(name)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let report = json!({"ready": true, "specHash": "bench", "underlay": format!("192.168.{}.0/24", n / 250),
                        "underlayMtu": 1500, "modes": {node.pool.clone(): "Auto"}});
    let rack = node.pool.trim_start_matches("pool-");
    let object = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
        "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                   "node.kubernetes.io/instance-type": "m5.large",
                   "topology.kubernetes.io/zone": format!("zone-{}", n % 3),
                   RACK_LABEL: rack, CLUSTER_LABEL: peers_of},
        "annotations": {"sinew.dev/node-state": report.to_string(),
                        "sinew.dev/vtep-mac": mac}}});
    api.patch(name, params, &Patch::Apply(&object)).await?;
    let images: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"names": [format!("registry.example/app-{i}@sha256:{:064x}", i), format!("registry.example/app-{i}:v1.{i}")], "sizeBytes": 50_000_000 + i}))
        .collect();
    let status = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": world::node_address(n)},
                                 {"type": "Hostname", "address": name}],
                   "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                   "allocatable": {"cpu": "2", "memory": "7Gi", "pods": "110"},
                   "images": images,
                   "nodeInfo": {"machineID": format!("{n:032x}"), "systemUUID": format!("{n:032x}"), "bootID": format!("{n:032x}"),
                                "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12", "containerRuntimeVersion": "containerd://1.7",
                                "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}});
    api.patch_status(name, params, &Patch::Apply(&status))
        .await?;
    Ok(())
}
