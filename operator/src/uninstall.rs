//! `sinew-operator uninstall`: what Helm's pre-delete hook runs. Deletes every `IPPool` and
//! the `ClusterNetwork` while the operator and agents still run, and waits until their
//! finalizers are done (pools drained, every node cleaned, the DaemonSet gone).

use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use sinew_crds::{ClusterNetwork, IPPool};
use tracing::info;

use crate::context::delete_if_present;

/// Why an uninstall did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Delete(#[from] crate::context::Error),
    #[error("still present after {seconds}s: {waiting}")]
    Timeout { seconds: u64, waiting: String },
}

/// What a remaining object is waiting for: its `Ready` condition's message, if any.
fn waiting_on<K>(
    obj: &K,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> String
where
    K: Resource<DynamicType = ()>,
{
    let why = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!(": {}", c.message))
        .unwrap_or_default();
    format!("{} {}{why}", K::kind(&()), obj.name_any())
}

/// Deletes every pool and the `ClusterNetwork`, then waits (up to `timeout`) until they are gone.
pub async fn uninstall(client: kube::Client, timeout: Duration) -> Result<(), Error> {
    let pools: Api<IPPool> = Api::all(client.clone());
    let networks: Api<ClusterNetwork> = Api::all(client);
    for p in pools.list(&ListParams::default()).await? {
        delete_if_present(&pools, &p.name_any()).await?;
        info!(pool = %p.name_any(), "IPPool deleted");
    }
    for n in networks.list(&ListParams::default()).await? {
        delete_if_present(&networks, &n.name_any()).await?;
        info!(network = %n.name_any(), "ClusterNetwork deleted; nodes are cleaning up");
    }
    let start = Instant::now();
    loop {
        let mut waiting: Vec<String> = pools
            .list(&ListParams::default())
            .await?
            .iter()
            .map(|p| waiting_on(p, p.status.as_ref().map_or(&[][..], |s| &s.conditions)))
            .collect();
        waiting.extend(
            networks
                .list(&ListParams::default())
                .await?
                .iter()
                .map(|n| waiting_on(n, n.status.as_ref().map_or(&[][..], |s| &s.conditions))),
        );
        if waiting.is_empty() {
            info!("every sinew object is gone");
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                seconds: timeout.as_secs(),
                waiting: waiting.join("; "),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
