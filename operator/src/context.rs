//! What the reconcilers share, and their error type.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::ResourceExt;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use sinew_crds::{IPBlock, IPBlockUsage, IPBlockUsageStatus, IPPool};

use crate::daemonset;
use sinew_runtime::node::NodeFacts;

/// Field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "sinew-operator";
/// Finalizer on `ClusterNetwork` (nodes must be cleaned) and `IPPool` (addresses in use).
pub const FINALIZER: &str = "sinew.dev/cleanup";

/// Blocks' usages by block name (see [`Context::usage_of`]).
pub type Usages = BTreeMap<String, Arc<IPBlockUsage>>;

/// Operator settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub daemonset: daemonset::Settings,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub nodes: Store<NodeFacts>,
    /// The `ClusterNetwork` (fixed MTU for mode plans).
    pub networks: Store<sinew_crds::ClusterNetwork>,
    pub pools: Store<IPPool>,
    pub blocks: Store<IPBlock>,
    /// The blocks' usages (each block's `IPBlockUsage`, written by its node), holding their
    /// counts only: the allocations themselves are read live where one is needed (see
    /// [`Context::live_usage`] and the GC), so the operator's memory does not grow with pods.
    pub usages: Store<IPBlockUsage>,
    /// Pods, metadata only: whether an allocation's pod (by UID) still exists.
    pub pods: crate::pod_uids::PodUids,
    /// Service CIDRs of the cluster (pools must not overlap them).
    pub service_cidrs: Store<ServiceCIDR>,
    pub recorder: Recorder,
    pub metrics: std::sync::Arc<crate::http::Metrics>,
    /// Allocation samples per pool (the forecast of nearly exhausted pools).
    pub usage: crate::trend::UsageHistory,
    /// When each pool's status was last written (its counts are paced).
    pub status_writes: crate::pool::pacing::StatusWrites,
}

impl Context {
    /// Waits until every cache has had its initial list; false if a watch ended for good.
    pub async fn caches_ready(&self) -> bool {
        self.nodes.wait_until_ready().await.is_ok()
            && self.networks.wait_until_ready().await.is_ok()
            && self.pools.wait_until_ready().await.is_ok()
            && self.blocks.wait_until_ready().await.is_ok()
            && self.usages.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await
            && self.service_cidrs.wait_until_ready().await.is_ok()
    }
}

impl Context {
    /// The usage of each of `blocks` that has one agreeing with it and written, by block
    /// name: looked up in the cache (counts, no allocations), shared, never copied.
    pub fn usage_of<'a>(&self, blocks: impl IntoIterator<Item = &'a Arc<IPBlock>>) -> Usages {
        blocks
            .into_iter()
            .filter_map(|b| {
                let usage = self.usages.get(&ObjectRef::new(&b.name_any()))?;
                (usage.status.is_some() && usage.describes(b)).then(|| (b.name_any(), usage))
            })
            .collect()
    }

    /// The usage of `block` read live, allocations included, if one agreeing with the block
    /// is written (the cache holds counts only).
    pub async fn live_usage(&self, block: &IPBlock) -> Result<Option<IPBlockUsageStatus>, Error> {
        let api: kube::Api<IPBlockUsage> = kube::Api::all(self.client.clone());
        Ok(api
            .get_opt(&block.name_any())
            .await?
            .filter(|u| u.describes(block))
            .and_then(|u| u.status))
    }
}

/// Reconcile failures, one variant per step, so a failure says where it happened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("rendering the node agent DaemonSet: {0}")]
    Render(serde_json::Error),
}

impl Error {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Render(_) => "render",
        }
    }
}

/// Adds sinew's finalizer to `obj` unless it already carries it.
pub async fn ensure_finalizer<K>(api: &kube::Api<K>, obj: &K) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    edit_finalizers(api, obj, |current| {
        (!current.iter().any(|f| f == FINALIZER)).then(|| {
            let mut finalizers = current.to_vec();
            finalizers.push(FINALIZER.to_string());
            finalizers
        })
    })
    .await
}

/// Removes sinew's finalizer from `obj`; an object already gone is fine.
pub async fn remove_finalizer<K>(api: &kube::Api<K>, obj: &K) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    edit_finalizers(api, obj, |current| {
        Some(
            current
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        )
    })
    .await
}

/// Sets the finalizers of `obj` to what `edit` makes of its current list (`None`: nothing
/// to do), guarded by the object's `resourceVersion` (see [`finalizers_patch`]). On a
/// conflict the object is read again and `edit` applied to the fresh list, once; an object
/// already gone is fine.
async fn edit_finalizers<K>(
    api: &kube::Api<K>,
    obj: &K,
    edit: impl Fn(&[String]) -> Option<Vec<String>>,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use kube::ResourceExt;
    let name = obj.name_any();
    let mut current = obj.clone();
    for retry in [true, false] {
        let Some(finalizers) = edit(current.finalizers()) else {
            return Ok(());
        };
        let result = api
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&finalizers_patch(&current, &finalizers)),
            )
            .await;
        match result {
            Err(kube::Error::Api(e)) if e.code == 409 && retry => {
                tracing::debug!(object = %name, "finalizers changed meanwhile; reading the object again");
                match ignore_missing(api.get(&name).await)? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            other => return ignore_missing(other).map(|_| ()),
        }
    }
    Ok(())
}

/// A merge patch setting the finalizer list of `obj` to `finalizers`, made from the list of
/// `obj` at its `resourceVersion`: a merge patch replaces the whole list, so the API server
/// must refuse it (409 Conflict, and the reconcile runs again on a fresh object) when the
/// object changed since, or it would drop a finalizer another controller just added.
pub fn finalizers_patch<K: kube::Resource>(obj: &K, finalizers: &[String]) -> serde_json::Value {
    let mut metadata = serde_json::json!({"finalizers": finalizers});
    if let Some(rv) = &obj.meta().resource_version {
        metadata["resourceVersion"] = serde_json::Value::String(rv.clone());
    }
    serde_json::json!({"metadata": metadata})
}

/// Deletes `name`; `Ok(false)` when it was already gone.
pub async fn delete_if_present<K>(api: &kube::Api<K>, name: &str) -> Result<bool, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    ignore_missing(api.delete(name, &kube::api::DeleteParams::default()).await).map(|r| r.is_some())
}

/// Deletes `block` if it is still the object read (its UID as a precondition): a block deleted
/// and claimed again meanwhile (by another node) is a new object and stays. `Ok(false)` when
/// it was already gone or replaced.
pub async fn delete_block(api: &kube::Api<IPBlock>, block: &IPBlock) -> Result<bool, Error> {
    use kube::ResourceExt;
    let params = kube::api::DeleteParams {
        preconditions: block
            .metadata
            .uid
            .clone()
            .map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
        ..kube::api::DeleteParams::default()
    };
    match api.delete(&block.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        // The UID precondition failed: another object of that name by now.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!(block = %block.name_any(), "not deleted: the block was claimed again meanwhile");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

fn ignore_missing<T>(result: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` through the status subresource (server-side apply, one field manager),
/// unless it equals `current`.
pub async fn apply_status<K, S>(
    ctx: &Context,
    name: &str,
    current: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let api: kube::Api<K> = kube::Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "metadata": {"name": name},
        "status": status,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
