//! Wiring: reflectors for the objects the reconcilers read, and the two controllers.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use sinew_crds::{CLUSTER_NETWORK_NAME, ClusterNetwork, IPBlock, IPPool};
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
            ctx.metrics
                .reconciled(controller, start.elapsed(), result.is_err());
            result
        })
    }
}

/// Keeps a reflector's store filled for as long as the process runs.
fn reflect<K>(api: Api<K>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                warn!(error = %e, "watch error; retrying");
            }
        }
    });
    store
}

/// Runs both controllers until the process ends.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    metrics: Arc<crate::http::Metrics>,
) -> anyhow::Result<()> {
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
        nodes: reflect(Api::<Node>::all(client.clone())),
        networks: reflect(Api::<ClusterNetwork>::all(client.clone())),
        pools: reflect(Api::<IPPool>::all(client.clone())),
        blocks: reflect(Api::<IPBlock>::all(client.clone())),
        pods: reflect(Api::<PartialObjectMeta<Pod>>::all(client.clone())),
        service_cidrs: reflect(Api::<ServiceCIDR>::all(client.clone())),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "sinew-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        metrics,
    });
    for (what, ready) in [
        ("nodes", ctx.nodes.wait_until_ready().await),
        ("pools", ctx.pools.wait_until_ready().await),
        ("blocks", ctx.blocks.wait_until_ready().await),
        ("pods", ctx.pods.wait_until_ready().await),
        ("servicecidrs", ctx.service_cidrs.wait_until_ready().await),
    ] {
        ready.map_err(|e| anyhow::anyhow!("watch of {what} ended: {e}"))?;
    }

    // Every Node report matters to the (single) ClusterNetwork.
    let networks = Controller::new(
        Api::<ClusterNetwork>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<DaemonSet>::namespaced(client.clone(), &settings.namespace),
        watcher::Config::default(),
    )
    .watches(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        |_| Some(ObjectRef::<ClusterNetwork>::new(CLUSTER_NETWORK_NAME)),
    )
    .shutdown_on_signal()
    .run(
        timed("clusternetwork", network::reconcile),
        error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {});

    // A block changes its pool's usage; a node report changes every pool's convergence; a
    // pool changes every other pool's overlap verdict.
    let refs = |store: &reflector::Store<IPPool>| {
        store
            .state()
            .iter()
            .map(|p| ObjectRef::from(p.as_ref()))
            .collect::<Vec<_>>()
    };
    let (on_node, on_pool) = (ctx.pools.clone(), ctx.pools.clone());
    let pools = Controller::new(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<IPBlock>::all(client.clone()),
        watcher::Config::default(),
        |b: IPBlock| Some(ObjectRef::<IPPool>::new(&b.spec.pool)),
    )
    .watches(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        move |_: Node| refs(&on_node),
    )
    .watches(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
        move |_: IPPool| refs(&on_pool),
    )
    .shutdown_on_signal()
    .run(timed("ippool", pool::reconcile), error_policy, ctx.clone())
    .for_each(|_| async {});
    tokio::spawn(crate::gc::run(ctx.clone()));
    ctx.metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    info!(namespace = %settings.namespace, "controllers running");
    futures::join!(networks, pools);
    Ok(())
}
