//! Pod churn on the synthetic nodes, as their kubelets and agents would make it: each step on
//! a node stops its oldest pod (the Pod object deleted), starts a new one on the freed
//! address (a Pod object created, bound to the node as the scheduler leaves it, then its
//! status written with its address, as the kubelet does once the sandbox is up), and writes
//! the node's allocations once (what its agent reports after the DEL and the ADD). Steps are
//! spread over the nodes and paced to a rate.
//!
//! A real pod's life writes more than this (pending statuses before its address; readiness
//! and termination after it); three writes of the Pod per step is the least a kubelet makes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

use super::BoxError;
use super::world::{self, Allocation, SynthNode};

/// Concurrent workers, each with its own share of the nodes (no node is written by two).
const WORKERS: usize = 32;

/// What one churn run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Churned {
    /// Pods started (as many were stopped).
    pub steps: usize,
    pub wall: Duration,
}

impl Churned {
    /// Pods started per second (as many stopped).
    pub fn rate(&self) -> f64 {
        self.steps as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Churns `per_s` pod starts (and as many stops) per second for `duration`.
pub async fn churn(
    client: &kube::Client,
    nodes: &mut [SynthNode],
    per_s: usize,
    duration: Duration,
) -> Result<Churned, BoxError> {
    let mut shares: Vec<Vec<&mut SynthNode>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        shares[i % WORKERS].push(node);
    }
    let period = Duration::from_secs_f64(WORKERS as f64 / per_s.max(1) as f64);
    let start = Instant::now();
    let steps = try_join_all(
        shares
            .into_iter()
            .enumerate()
            .map(|(w, mut share)| async move {
                let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
                let mut ticks = tokio::time::interval_at(
                    tokio::time::Instant::now() + period.mul_f64(w as f64 / WORKERS as f64),
                    period,
                );
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut steps = 0;
                // Strided, so that consecutive steps of a worker touch nodes far apart.
                let stride = (share.len() / 7).max(1) | 1;
                let mut k = w;
                while start.elapsed() < duration && !share.is_empty() {
                    ticks.tick().await;
                    k = (k + stride) % share.len();
                    step(client, &pods, share[k]).await?;
                    steps += 1;
                }
                Ok::<_, BoxError>(steps)
            }),
    )
    .await?;
    Ok(Churned {
        steps: steps.iter().sum(),
        wall: start.elapsed(),
    })
}

/// Stops `node`'s oldest pod, starts a new one on its address, reports the allocations.
async fn step(
    client: &kube::Client,
    pods: &Api<Pod>,
    node: &mut SynthNode,
) -> Result<(), BoxError> {
    let Some(old) = node.allocations.pop_front() else {
        return Ok(());
    };
    pods.delete(&old.pod, &DeleteParams::default().grace_period(0))
        .await?;
    node.started += 1;
    let name = format!("churn-{:04}-{}", node.index, node.started);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default",
        "labels": {"app": format!("app-{}", node.index % 50)}},
        "spec": {"nodeName": node.name, "containers": [{"name": "app", "image": "registry.example/app:v1"}]}});
    let created = pods
        .create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    let running =
        json!({"status": {"phase": "Running", "podIP": old.ip, "podIPs": [{"ip": old.ip}]}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
        .await?;
    node.allocations.push_back(Allocation {
        pod: name,
        uid: created.metadata.uid.unwrap_or_default(),
        ip: old.ip,
        container: format!("{:064x}", (node.index << 20) + node.started),
    });
    world::write_allocations(client, node).await
}

/// The reference for what an agent receives: a watch of every pod (what each agent held
/// before decision 105), from now on, counting the events the API server sends it.
pub struct EveryPod {
    events: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EveryPod {
    pub async fn watch(client: &kube::Client) -> Result<EveryPod, BoxError> {
        let pods: Api<Pod> = Api::all(client.clone());
        // The cluster's current version, without listing 150,000 pods.
        let now = pods
            .list_metadata(&ListParams::default().limit(1))
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let stream = pods.watch(&WatchParams::default(), &now).await?;
        let events = Arc::new(AtomicU64::new(0));
        let counted = events.clone();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            loop {
                let event = match stream.try_next().await {
                    Ok(Some(event)) => event,
                    Ok(None) => return,
                    Err(e) => {
                        eprintln!("[scale] the reference pod watch failed: {e}");
                        return;
                    }
                };
                match event {
                    WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Error(e) => {
                        eprintln!("[scale] the reference pod watch ended: {e}");
                        return;
                    }
                }
            }
        });
        Ok(EveryPod { events, task })
    }

    /// Events received so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

impl Drop for EveryPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}
