//! Wiring: reflectors for the objects the reconcilers read, and the two controllers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use sinew_crds::ip_block::POOL_LABEL;
use sinew_crds::{CLUSTER_NETWORK_NAME, ClusterNetwork, IPBlock, IPBlockUsage, IPPool};
use sinew_runtime::watch::{Wake, Watchable};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::context::{Context, Error, Settings};
use crate::{network, pool};

fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    warn!(error = %error, kind = error.label(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Wraps a reconcile function so every run is counted and timed in the metrics.
fn timed<K, F, Fut>(
    controller: &'static str,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<Context>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    K: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        Box::pin(async move {
            let start = std::time::Instant::now();
            let result = reconcile(obj, ctx.clone()).await;
            let kind = result.as_ref().err().map(Error::label);
            ctx.metrics.reconciled(controller, start.elapsed(), kind);
            result
        })
    }
}

/// A metadata-only watch of `K`, as a trigger stream (nothing of it is kept).
fn metadata<K>(
    api: Api<PartialObjectMeta<K>>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + std::fmt::Debug + 'static,
    PartialObjectMeta<K>: Watchable,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .touched_objects()
}

/// Keeps a store of `K` filled from one watch, with `prune` dropping what the operator never
/// reads (the store is most of the operator's memory).
fn reflect<K: Watchable>(api: Api<K>, prune: fn(&mut K)) -> reflector::Store<K> {
    sinew_runtime::watch::reflect(api, watcher::Config::default(), prune, None)
}

/// Keeps of a usage what the cache serves: its spec and counts. The allocations (150,000 at
/// Kubernetes' limits) are read live by the few that need them (the GC, in pages; a departed
/// node's block and a pending release, one usage each), so they never all sit in memory.
pub(crate) fn prune_usage(usage: &mut IPBlockUsage) {
    sinew_runtime::watch::prune_meta(usage);
    if let Some(status) = usage.status.as_mut() {
        status.allocations = Vec::new();
    }
}

/// Usages per page of the cache's (re-)list: 100 at about 30 allocations each.
const USAGE_LIST_PAGE: u32 = 100;

/// The cache of `IPBlockUsage`s, and the pools whose usage changed, each named only once the
/// cache holds the change (a trigger of its own could come first and count stale usage).
fn usages(
    api: Api<IPBlockUsage>,
) -> (
    reflector::Store<IPBlockUsage>,
    tokio::sync::mpsc::UnboundedReceiver<ObjectRef<IPPool>>,
) {
    let (store, writer) = reflector::store();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Listed in small pages: a page arrives with its allocations, which are dropped at once.
    let stream = watcher(api, watcher::Config::default().page_size(USAGE_LIST_PAGE))
        .default_backoff()
        .modify(prune_usage)
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut triggers = crate::pool::pacing::UsageTriggers::default();
        loop {
            let due = triggers.next_due();
            // (Evaluated with the branch disabled too, never awaited then.)
            let wake = tokio::time::Instant::from_std(due.unwrap_or_else(Instant::now));
            let pools = tokio::select! {
                event = stream.next() => {
                    let Some(event) = event else { break };
                    match event {
                        Ok(watcher::Event::Apply(u) | watcher::Event::Delete(u)) => triggers
                            .changed(&u.spec.pool, Instant::now())
                            .then(|| u.spec.pool.clone())
                            .into_iter()
                            .collect(),
                        Ok(_) => Vec::new(),
                        Err(e) => {
                            warn!(error = %e, "watch of ipblockusages failed; retrying");
                            Vec::new()
                        }
                    }
                }
                () = tokio::time::sleep_until(wake), if due.is_some() => triggers.due(Instant::now()),
            };
            for pool in pools {
                if tx.send(ObjectRef::new(&pool)).is_err() {
                    return;
                }
            }
        }
    });
    (store, rx)
}

/// Runs both controllers until the process ends.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    metrics: Arc<crate::http::Metrics>,
) -> anyhow::Result<()> {
    // The ClusterNetwork is judged from the Node store, so it is woken by that store once it
    // holds a change (a wake from a watch of its own could come first and judge stale reports).
    let node_changed = Arc::new(Notify::new());
    let (usages, usage_changed) = usages(Api::all(client.clone()));
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
        nodes: sinew_runtime::watch::reflect(
            Api::<sinew_runtime::node::NodeFacts>::all(client.clone()),
            watcher::Config::default().page_size(sinew_runtime::watch::NODE_LIST_PAGE),
            sinew_runtime::node::prune,
            Some(Wake {
                notify: node_changed.clone(),
                fingerprint: Arc::new(sinew_runtime::node::fingerprint),
                received: None,
                changes: None,
            }),
        ),
        networks: reflect(
            Api::<ClusterNetwork>::all(client.clone()),
            sinew_runtime::watch::prune_meta,
        ),
        pools: reflect(
            Api::<IPPool>::all(client.clone()),
            sinew_runtime::watch::prune_meta,
        ),
        blocks: reflect(
            Api::<IPBlock>::all(client.clone()),
            sinew_runtime::watch::prune_meta,
        ),
        usages,
        pods: crate::pod_uids::PodUids::watch(Api::all(client.clone())),
        service_cidrs: reflect(
            Api::<ServiceCIDR>::all(client.clone()),
            sinew_runtime::watch::prune_meta,
        ),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "sinew-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        metrics,
        usage: Default::default(),
        status_writes: Default::default(),
    });
    // Decisions need every cache filled (a pool checked against half the nodes would miss
    // conflicts).
    if !ctx.caches_ready().await {
        anyhow::bail!("a watch ended before its initial list");
    }

    // Every Node report matters to the (single) ClusterNetwork.
    let network_controller = Controller::new(
        Api::<ClusterNetwork>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<DaemonSet>::namespaced(client.clone(), &settings.namespace),
        watcher::Config::default(),
    )
    .reconcile_on(futures::stream::unfold(node_changed, |n| async move {
        n.notified().await;
        Some((ObjectRef::<ClusterNetwork>::new(CLUSTER_NETWORK_NAME), n))
    }))
    .shutdown_on_signal()
    .run(
        timed("clusternetwork", network::reconcile),
        error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {});

    // A block or its usage changes its pool's usage; a node changes the pools that select it (convergence,
    // plans), contain its address (conflicts) or hold blocks on it; a pool changes the
    // verdict of the pools it overlaps and of those stalled on a conflict.
    let (by_node, by_pool, by_block) = (ctx.clone(), ctx.clone(), ctx.clone());
    let pool_controller = Controller::new(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches_stream(
        metadata(Api::<PartialObjectMeta<IPBlock>>::all(client.clone())),
        move |b| {
            // Agents label their blocks with the pool; otherwise the cache knows.
            let pool = b.labels().get(POOL_LABEL).cloned().or_else(|| {
                by_block
                    .blocks
                    .get(&ObjectRef::new(&b.name_any()))
                    .map(|full| full.spec.pool.clone())
            });
            pool.map(|p| ObjectRef::<IPPool>::new(&p))
        },
    )
    .reconcile_on(futures::stream::unfold(
        usage_changed,
        |mut rx| async move { rx.recv().await.map(|pool| (pool, rx)) },
    ))
    .watches_stream(
        metadata(Api::<PartialObjectMeta<Node>>::all(client.clone())),
        move |n| {
            let name = n.name_any();
            let addresses = by_node
                .nodes
                .get(&ObjectRef::new(&name))
                .map(|kept| kept.addresses.all.clone())
                .unwrap_or_default();
            pool::affected::by_node(
                &name,
                n.labels(),
                &addresses,
                &by_node.pools.state(),
                &by_node.blocks.state(),
            )
        },
    )
    .watches(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
        move |p: IPPool| pool::affected::by_pool(&p, &by_pool.pools.state()),
    )
    .shutdown_on_signal()
    .run(timed("ippool", pool::reconcile), error_policy, ctx.clone())
    .for_each(|_| async {});
    tokio::spawn(crate::gc::run(ctx.clone()));
    ctx.metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    info!(namespace = %settings.namespace, "controllers running");
    futures::join!(network_controller, pool_controller);
    Ok(())
}

#[cfg(test)]
mod tests {
    use sinew_crds::{Allocation, IPBlockSpec, IPBlockUsage, IPBlockUsageSpec, IPBlockUsageStatus};

    /// The cache must not grow with pods: at 150,000 allocations it held 105 MiB.
    #[test]
    fn the_usage_cache_keeps_counts_and_no_allocation() {
        let spec = IPBlockUsageSpec::of(&IPBlockSpec {
            pool: "p".into(),
            cidr: "10.0.0.0/26".into(),
            node: "n1".into(),
        });
        let mut usage = IPBlockUsage::new("10-0-0-0-26", spec.clone());
        usage.status = Some(IPBlockUsageStatus {
            allocated: 2,
            allocations: vec![Allocation {
                ip: "10.0.0.1".into(),
                container_id: "c".into(),
                interface: "eth0".into(),
                pod_namespace: Some("default".into()),
                pod_name: Some("web".into()),
                pod_uid: Some("u".into()),
                generation: 1,
            }],
        });
        super::prune_usage(&mut usage);
        assert_eq!(usage.spec, spec);
        let status = usage.status.expect("the counts stay");
        assert_eq!(status.allocated, 2);
        assert!(status.allocations.is_empty());
    }
}
