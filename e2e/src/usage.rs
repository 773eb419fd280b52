//! What the blocks' usages say: each `IPBlock` with the allocations of the `IPBlockUsage` that
//! agrees with it (as the operator and `kubectl sinew` read them).

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use sinew_crds::{Allocation, IPBlock, IPBlockUsage};

/// Every block of `pool` (every block, without one) and its allocations (none when its usage
/// is not written yet).
pub async fn block_allocations(
    client: &Client,
    pool: Option<&str>,
) -> Result<Vec<(IPBlock, Vec<Allocation>)>, kube::Error> {
    let params = match pool {
        Some(pool) => ListParams::default().fields(&format!("spec.pool={pool}")),
        None => ListParams::default(),
    };
    let blocks = Api::<IPBlock>::all(client.clone())
        .list(&params)
        .await?
        .items;
    let usages = Api::<IPBlockUsage>::all(client.clone())
        .list(&params)
        .await?
        .items;
    let mut usage = sinew_crds::usage_by_block(&blocks, &usages);
    Ok(blocks
        .into_iter()
        .map(|b| {
            let allocations = usage
                .remove(&b.name_any())
                .map(|u| u.allocations)
                .unwrap_or_default();
            (b, allocations)
        })
        .collect())
}
