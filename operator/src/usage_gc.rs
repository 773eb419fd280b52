//! Usages no block accounts for any more. An `IPBlockUsage` is owned by its block, so the
//! cluster's garbage collector deletes it with the block; where none runs (or while it lags), a
//! usage left behind would keep its name from the next node that claims the block (its spec
//! is immutable). The operator deletes such a usage itself, once it is clearly orphaned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use sinew_crds::{IPBlock, IPBlockUsage};
use tracing::{debug, info};

use crate::context::{Context, Error};

/// How old a usage, and a block claimed again under its name, must be before the usage counts
/// as orphaned: an agent writes its block's usage right after the claim, and the caches may
/// show one before the other.
pub const MIN_AGE: Duration = Duration::from_secs(60);

fn older_than(t: Option<&Time>, now: Timestamp, age: Duration) -> bool {
    t.is_none_or(|t| now.duration_since(t.0).unsigned_abs() >= age)
}

/// Pure: the usages whose block is gone, or was claimed again (a block of that name whose UID
/// none of the usage's owners has), or that disagree with their block (written by another
/// node under its name: readers ignore it, and it would keep the block's own node from
/// writing), each for at least `min_age`.
pub fn orphans(
    usages: &[Arc<IPBlockUsage>],
    blocks: &[Arc<IPBlock>],
    now: Timestamp,
    min_age: Duration,
) -> Vec<Arc<IPBlockUsage>> {
    let blocks: BTreeMap<String, &IPBlock> =
        blocks.iter().map(|b| (b.name_any(), b.as_ref())).collect();
    usages
        .iter()
        .filter(|u| older_than(u.metadata.creation_timestamp.as_ref(), now, min_age))
        .filter(|u| match blocks.get(&u.name_any()) {
            None => true,
            Some(b) => {
                let owned = u
                    .owner_references()
                    .iter()
                    .any(|r| Some(&r.uid) == b.metadata.uid.as_ref());
                !(owned && u.describes(b))
                    && older_than(b.metadata.creation_timestamp.as_ref(), now, min_age)
            }
        })
        .cloned()
        .collect()
}

/// Deletes the orphaned usages (each by UID: one written again meanwhile stays).
pub async fn collect(ctx: &Context) -> Result<(), Error> {
    let orphans = orphans(
        &ctx.usages.state(),
        &ctx.blocks.state(),
        Timestamp::now(),
        MIN_AGE,
    );
    let api: Api<IPBlockUsage> = Api::all(ctx.client.clone());
    for u in orphans {
        let params = DeleteParams {
            preconditions: u.metadata.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&u.name_any(), &params).await {
            Ok(_) => {
                info!(usage = %u.name_any(), node = %u.spec.node, "deleted the usage of a block that is gone")
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                debug!(usage = %u.name_any(), "orphaned usage already gone or replaced")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use sinew_crds::{IPBlockSpec, IPBlockUsageSpec};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn block(uid: &str, created: i64) -> Arc<IPBlock> {
        let mut b = IPBlock::new(
            "10-0-0-0-26",
            IPBlockSpec {
                pool: "p".into(),
                cidr: "10.0.0.0/26".into(),
                node: "a".into(),
            },
        );
        b.metadata.uid = Some(uid.into());
        b.metadata.creation_timestamp = Some(Time(at(created)));
        Arc::new(b)
    }

    fn usage(owner: &str, created: i64) -> Arc<IPBlockUsage> {
        let mut u = IPBlockUsage::new(
            "10-0-0-0-26",
            IPBlockUsageSpec {
                pool: "p".into(),
                cidr: "10.0.0.0/26".into(),
                node: "a".into(),
            },
        );
        u.metadata.creation_timestamp = Some(Time(at(created)));
        u.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "sinew.dev/v1alpha1".into(),
            kind: "IPBlock".into(),
            name: "10-0-0-0-26".into(),
            uid: owner.into(),
            ..OwnerReference::default()
        }]);
        Arc::new(u)
    }

    #[test]
    fn a_usage_goes_once_its_block_is_gone_or_claimed_again_and_not_before() {
        let min = MIN_AGE;
        // Its block exists: kept, however old.
        assert!(orphans(&[usage("b1", 0)], &[block("b1", 0)], at(10_000), min).is_empty());
        // Its block is gone: deleted once the usage is old enough.
        assert!(orphans(&[usage("b1", 0)], &[], at(30), min).is_empty());
        assert_eq!(orphans(&[usage("b1", 0)], &[], at(60), min).len(), 1);
        // Claimed again (a new UID): the old usage goes once the new block is old enough for
        // its agent to have taken the usage over.
        let reclaimed = [block("b2", 100)];
        assert!(orphans(&[usage("b1", 0)], &reclaimed, at(130), min).is_empty());
        assert_eq!(
            orphans(&[usage("b1", 0)], &reclaimed, at(160), min).len(),
            1
        );
        // Taken over (owned by the new block): kept.
        assert!(orphans(&[usage("b2", 0)], &reclaimed, at(10_000), min).is_empty());
        // Written by another node under the block's name: deleted.
        let mut squatted = usage("b2", 0);
        Arc::make_mut(&mut squatted).spec.node = "b".into();
        assert_eq!(orphans(&[squatted], &reclaimed, at(160), min).len(), 1);
    }
}
