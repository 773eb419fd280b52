//! Leak GC with evidence. An allocation is leaked only when its pod (by UID) is gone from the
//! API server, seen so on two passes at least `leakGracePeriod` apart, and still gone when
//! re-checked live right before the release. The operator never frees an address itself:
//! it asks the block's agent (annotation [`RELEASE_ANNOTATION`] with the exact address, slot
//! generation and pod UID), and the agent frees it only if its store still matches, so an
//! address re-used in between is never freed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use sinew_crds::{
    CLUSTER_NETWORK_NAME, ClusterNetwork, IPBlock, IPBlockUsage, RELEASE_ANNOTATION, ReleaseRequest,
};
use tracing::{debug, info, warn};

use crate::context::{Context, Error};

/// One allocation, identified exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub block: String,
    pub ip: String,
    pub generation: u64,
    pub pod_uid: String,
}

/// An allocation whose pod has been missing for long enough (pending the live re-check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: Key,
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub missing_since: Timestamp,
}

/// Allocations whose pod was seen missing, and since when.
#[derive(Debug, Default)]
pub struct Suspects {
    since: BTreeMap<Key, Timestamp>,
}

impl Suspects {
    /// One GC pass over `blocks` (each with its usage) at `now`, with `pod_exists` answering
    /// from the cache.
    /// Returns the allocations missing on an earlier pass at least `grace` ago. Allocations
    /// without a pod UID, namespace and name are never candidates: nothing proves them gone.
    pub fn pass(
        &mut self,
        now: Timestamp,
        grace: Duration,
        blocks: &[(Arc<IPBlock>, Arc<IPBlockUsage>)],
        pod_exists: impl Fn(&str) -> bool,
    ) -> Vec<Candidate> {
        let mut seen = BTreeSet::new();
        let mut candidates = Vec::new();
        for (block, usage) in blocks {
            for a in usage.status.iter().flat_map(|s| &s.allocations) {
                let (Some(uid), Some(namespace), Some(name)) =
                    (&a.pod_uid, &a.pod_namespace, &a.pod_name)
                else {
                    continue;
                };
                if pod_exists(uid) {
                    continue;
                }
                let key = Key {
                    block: block.name_any(),
                    ip: a.ip.clone(),
                    generation: a.generation,
                    pod_uid: uid.clone(),
                };
                seen.insert(key.clone());
                let first = *self.since.entry(key.clone()).or_insert(now);
                let missing_for = now.duration_since(first).unsigned_abs();
                if first < now && missing_for >= grace {
                    candidates.push(Candidate {
                        key,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        node: block.spec.node.clone(),
                        missing_since: first,
                    });
                }
            }
        }
        // Whatever is no longer a missing-pod allocation (pod back, address released) is
        // forgotten: its evidence starts again if it ever goes missing.
        self.since.retain(|k, _| seen.contains(k));
        candidates
    }
}

/// Whether the live API still has the pod (same UID). Errors count as "exists": the GC
/// never releases on doubt.
pub(crate) async fn pod_exists_live(pods: &Api<Pod>, name: &str, uid: &str) -> bool {
    match pods.get_opt(name).await {
        Ok(Some(p)) => crate::pod_uids::identities(&p.metadata)
            .iter()
            .any(|id| id == uid),
        Ok(None) => false,
        Err(e) => {
            warn!(error = %e, pod = %name, "live pod check failed; keeping the allocation");
            true
        }
    }
}

/// Adds `requests` to a block's release annotation (keeping the ones still pending).
async fn request_release(
    ctx: &Context,
    block: &IPBlock,
    requests: Vec<ReleaseRequest>,
) -> Result<(), Error> {
    let mut all: BTreeSet<ReleaseRequest> = block.release_requests().into_iter().collect();
    all.extend(requests);
    write_requests(ctx, &block.name_any(), &all).await
}

async fn write_requests(
    ctx: &Context,
    block: &str,
    requests: &BTreeSet<ReleaseRequest>,
) -> Result<(), Error> {
    let api: Api<IPBlock> = Api::all(ctx.client.clone());
    let value = if requests.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(serde_json::to_string(requests).map_err(Error::Render)?)
    };
    let patch = serde_json::json!({"metadata": {"annotations": {RELEASE_ANNOTATION: value}}});
    api.patch(block, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Drops requests the agent has carried out (the allocation is gone from the block's usage)
/// or that no longer match anything (the address was re-used: never freed). Returns how
/// many were carried out. A block whose usage is not known yet keeps its requests.
async fn settle(ctx: &Context, blocks: &[Arc<IPBlock>]) -> Result<u64, Error> {
    let mut done = 0;
    for block in blocks {
        let requests = block.release_requests();
        if requests.is_empty() {
            continue;
        }
        let Some(status) = ctx.live_usage(block).await? else {
            continue;
        };
        let allocations = status.allocations.as_slice();
        let pending: BTreeSet<ReleaseRequest> = requests
            .iter()
            .filter(|r| allocations.iter().any(|a| r.matches(a)))
            .cloned()
            .collect();
        let gone = requests.len() - pending.len();
        if gone > 0 {
            done += gone as u64;
            write_requests(ctx, &block.name_any(), &pending).await?;
        }
    }
    Ok(done)
}

/// Usages per page of the GC's live list: at about 30 allocations each, a page holds a few
/// thousand allocations, never the cluster's 150,000.
const USAGE_PAGE: u32 = 200;
/// The pause after each page of a GC pass: at 5,000 usages a pass takes about 4 s, and a
/// spec edit arriving meanwhile is not kept waiting behind it.
const PAGE_PAUSE: Duration = Duration::from_millis(150);

/// The usages of the blocks of living `nodes`, read live page by page, each cut down to the
/// allocations whose pod (by UID) the cache does not have: all a GC pass judges. Nothing
/// else of an allocation list outlives its page.
async fn pods_missing(
    ctx: &Context,
    blocks: &[Arc<IPBlock>],
    nodes: &BTreeSet<String>,
) -> Result<Vec<(Arc<IPBlock>, Arc<IPBlockUsage>)>, Error> {
    let by_name: HashMap<String, &Arc<IPBlock>> = blocks
        .iter()
        .filter(|b| nodes.contains(&b.spec.node))
        .map(|b| (b.name_any(), b))
        .collect();
    let api: Api<IPBlockUsage> = Api::all(ctx.client.clone());
    let mut params = ListParams::default().limit(USAGE_PAGE);
    let mut found = Vec::new();
    loop {
        let page = api.list(&params).await?;
        for mut usage in page.items {
            let Some(block) = by_name.get(&usage.name_any()) else {
                continue;
            };
            if !usage.describes(block) {
                continue;
            }
            let Some(status) = usage.status.as_mut() else {
                continue;
            };
            status.allocations.retain(|a| {
                a.pod_uid
                    .as_deref()
                    .is_some_and(|uid| !ctx.pods.contains(uid))
            });
            if !status.allocations.is_empty() {
                found.push((Arc::clone(block), Arc::new(usage)));
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(found),
        }
        // A background job: the reconciles (and the API server) keep the CPU between pages.
        tokio::time::sleep(PAGE_PAUSE).await;
    }
}

/// One GC pass: settle earlier requests, gather evidence, re-check candidates live, request
/// their release and record each with an Event.
pub async fn pass(ctx: &Context, suspects: &mut Suspects, grace: Duration) -> Result<(), Error> {
    let blocks = ctx.blocks.state();
    let released = settle(ctx, &blocks).await?;
    ctx.metrics.gc_releases.inc_by(released);
    let nodes: BTreeSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    // Blocks of departed nodes are released whole by the pool reconciler.
    let live = pods_missing(ctx, &blocks, &nodes).await?;
    let candidates = suspects.pass(Timestamp::now(), grace, &live, |uid| ctx.pods.contains(uid));
    debug!(
        suspects = suspects.since.len(),
        candidates = candidates.len(),
        released,
        "GC pass"
    );
    let mut per_block: BTreeMap<String, Vec<(Candidate, ReleaseRequest)>> = BTreeMap::new();
    for c in candidates {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &c.namespace);
        if pod_exists_live(&pods, &c.name, &c.key.pod_uid).await {
            continue;
        }
        let request = ReleaseRequest {
            ip: c.key.ip.clone(),
            generation: c.key.generation,
            pod_uid: c.key.pod_uid.clone(),
            pod: format!("{}/{}", c.namespace, c.name),
            missing_since: c.missing_since.to_string(),
        };
        per_block
            .entry(c.key.block.clone())
            .or_default()
            .push((c, request));
    }
    for (name, items) in per_block {
        let Some(block) = blocks.iter().find(|b| b.name_any() == name) else {
            continue;
        };
        let already = block.release_requests();
        let new: Vec<(Candidate, ReleaseRequest)> = items
            .into_iter()
            .filter(|(_, r)| {
                !already
                    .iter()
                    .any(|a| a.ip == r.ip && a.generation == r.generation)
            })
            .collect();
        if new.is_empty() {
            continue;
        }
        request_release(ctx, block, new.iter().map(|(_, r)| r.clone()).collect()).await?;
        for (c, r) in new {
            info!(pod = %r.pod, pod_uid = %r.pod_uid, ip = %r.ip, node = %c.node, block = %name, "leaked allocation: release requested");
            let event = Event {
                type_: EventType::Warning,
                reason: "LeakedAddressReleased".into(),
                note: Some(format!(
                    "{} (generation {}) on node {} was held for pod {} (uid {}), which is gone from the API server since {}: seen missing on GC passes at least the grace period apart and re-checked live; the node agent frees it",
                    r.ip, r.generation, c.node, r.pod, r.pod_uid, r.missing_since
                )),
                action: "Release".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &block.object_ref(&())).await {
                warn!(error = %e, "recording an Event failed");
            }
        }
    }
    Ok(())
}

/// Runs GC passes every `gcInterval` of the `ClusterNetwork` for as long as the process runs.
pub async fn run(ctx: Arc<Context>) {
    let networks: Api<ClusterNetwork> = Api::all(ctx.client.clone());
    let mut suspects = Suspects::default();
    loop {
        let (interval, grace) = match networks.get_opt(CLUSTER_NETWORK_NAME).await {
            Ok(Some(n)) => n.spec.ipam.durations(),
            Ok(None) => (Duration::from_secs(30), Duration::MAX),
            Err(e) => {
                warn!(error = %e, "reading the ClusterNetwork for GC settings failed");
                (Duration::from_secs(30), Duration::MAX)
            }
        };
        if grace != Duration::MAX
            && let Err(e) = pass(&ctx, &mut suspects, grace).await
        {
            warn!(error = %e, "GC pass failed");
        }
        if let Err(e) = crate::usage_gc::collect(&ctx).await {
            warn!(error = %e, "deleting orphaned block usages failed");
        }
        tokio::time::sleep(interval.max(Duration::from_millis(500))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_crds::{Allocation, IPBlockSpec, IPBlockUsageSpec, IPBlockUsageStatus};

    fn block(allocs: &[(&str, u64, Option<&str>)]) -> (Arc<IPBlock>, Arc<IPBlockUsage>) {
        let b = IPBlock::new(
            "10-0-0-0-26",
            IPBlockSpec {
                pool: "p".into(),
                cidr: "10.0.0.0/26".into(),
                node: "n1".into(),
            },
        );
        let mut usage = IPBlockUsage::new("10-0-0-0-26", IPBlockUsageSpec::of(&b.spec));
        usage.status = Some(IPBlockUsageStatus {
            allocated: allocs.len() as u32,
            allocations: allocs
                .iter()
                .map(|(ip, generation, uid)| Allocation {
                    ip: ip.to_string(),
                    container_id: "c".into(),
                    interface: "eth0".into(),
                    pod_namespace: Some("default".into()),
                    pod_name: Some(format!("pod-{ip}")),
                    pod_uid: uid.map(String::from),
                    generation: *generation,
                })
                .collect(),
        });
        (Arc::new(b), Arc::new(usage))
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    const GRACE: Duration = Duration::from_secs(600);

    #[test]
    fn a_missing_pod_needs_two_passes_a_grace_period_apart() {
        let blocks = vec![block(&[("10.0.0.1", 1, Some("gone"))])];
        let mut s = Suspects::default();
        assert!(
            s.pass(at(0), GRACE, &blocks, |_| false).is_empty(),
            "first sighting"
        );
        assert!(
            s.pass(at(599), GRACE, &blocks, |_| false).is_empty(),
            "too early"
        );
        let c = s.pass(at(600), GRACE, &blocks, |_| false);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].key.ip, "10.0.0.1");
        assert_eq!(c[0].missing_since, at(0));
        assert_eq!(c[0].namespace, "default");
    }

    #[test]
    fn a_pod_that_exists_is_never_a_candidate_and_resets_the_evidence() {
        let blocks = vec![block(&[("10.0.0.1", 1, Some("uid"))])];
        let mut s = Suspects::default();
        s.pass(at(0), GRACE, &blocks, |_| false);
        // The pod shows up (the cache was behind): the evidence is dropped.
        assert!(s.pass(at(300), GRACE, &blocks, |_| true).is_empty());
        assert!(
            s.pass(at(700), GRACE, &blocks, |_| false).is_empty(),
            "evidence restarted"
        );
        assert!(s.pass(at(1300), GRACE, &blocks, |_| false).len() == 1);
        // Never while it exists, however long.
        let mut s = Suspects::default();
        for t in 0..10 {
            assert!(s.pass(at(t * 1000), GRACE, &blocks, |_| true).is_empty());
        }
    }

    #[test]
    fn a_reused_address_starts_over_and_unknown_owners_are_kept() {
        let mut s = Suspects::default();
        s.pass(
            at(0),
            GRACE,
            &[block(&[("10.0.0.1", 1, Some("a"))])],
            |_| false,
        );
        // Same address, new generation, new pod: different allocation, new evidence.
        let reused = vec![block(&[("10.0.0.1", 2, Some("b"))])];
        assert!(s.pass(at(700), GRACE, &reused, |_| false).is_empty());
        // An allocation without a pod UID can never be proven leaked.
        let anonymous = vec![block(&[("10.0.0.2", 1, None)])];
        let mut s = Suspects::default();
        s.pass(at(0), GRACE, &anonymous, |_| false);
        assert!(s.pass(at(10_000), GRACE, &anonymous, |_| false).is_empty());
    }
}
