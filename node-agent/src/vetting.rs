//! Vetting: what the agent believes of cluster state (pure). Peers turn every `IPBlock` into a route and
//! the plugin hands out addresses from every pool in `node.json`, so nothing is taken on faith:
//!
//! - **Pools** are usable for new addresses only once the operator has judged them (their status
//!   carries an `observedGeneration`) and found no conflict, and only when this agent's own check
//!   agrees: a pool overlapping an older pool ([`creation_order`], the operator's rule too) is
//!   conflicted here whatever its status says, so a missing or stale status fails closed.
//! - **Blocks** count only when their object name is the canonical name of their CIDR, their
//!   pool exists, the CIDR lies inside the pool and its prefix is the pool's block size. Of two
//!   blocks that overlap (possible only across overlapping pools), the older
//!   ([`creation_order`]) wins, deterministically on every node. Admission refuses such objects too; this
//!   is the defence in depth for a compromised node or a policy that was not installed.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::jiff::Timestamp;
use sinew_crds::interval::DisjointPrefixes;
use sinew_crds::node::{Problem, ProblemKind};
use sinew_crds::precedence::{CreationOrder, creation_order};
use sinew_crds::{Cidr, IPBlock, IPPool};

use crate::blocks::MAX_BLOCKS_PER_POOL;
use crate::peers::BlockInfo;

/// The facts of one pool the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFacts {
    pub name: String,
    pub cidr: Cidr,
    pub block_size: u8,
    /// Why no new blocks or addresses may come from this pool now (`None`: usable).
    pub unusable: Option<String>,
}

/// Creation order (typed creation time, then name): the lower wins an overlap.
type Age = CreationOrder<Timestamp>;

/// Facts of every pool with a valid CIDR (deleting pools included: their blocks drain).
pub fn pools(pools: &[impl Borrow<IPPool>]) -> BTreeMap<String, PoolFacts> {
    let mut parsed: Vec<(Age, &IPPool, Cidr)> = pools
        .iter()
        .map(Borrow::borrow)
        .filter_map(|p: &IPPool| Some((creation_order(&p.metadata), p, p.spec.parsed_cidr().ok()?)))
        .collect();
    parsed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = BTreeMap::new();
    for (i, (_, pool, cidr)) in parsed.iter().enumerate() {
        let name = pool.metadata.name.clone().unwrap_or_default();
        let older_overlap = parsed[..i]
            .iter()
            .find(|(_, other, other_cidr)| {
                other.metadata.deletion_timestamp.is_none() && other_cidr.overlaps(cidr)
            })
            .map(|(_, other, other_cidr)| {
                format!(
                    "overlaps the older pool {} ({other_cidr})",
                    other.metadata.name.as_deref().unwrap_or_default()
                )
            });
        let judged = pool
            .status
            .as_ref()
            .is_some_and(|s| s.observed_generation.is_some());
        let unusable = if pool.metadata.deletion_timestamp.is_some() {
            Some("being deleted".to_string())
        } else if let Some(overlap) = older_overlap {
            Some(overlap)
        } else if !judged {
            Some("not yet judged by the operator (no status)".to_string())
        } else if pool.is_conflicted() {
            Some("stalled by the operator for a conflict".to_string())
        } else if pool.spec.disabled {
            Some("disabled".to_string())
        } else {
            None
        };
        out.insert(
            name.clone(),
            PoolFacts {
                name,
                cidr: *cidr,
                block_size: pool.spec.effective_block_size(cidr.family()),
                unusable,
            },
        );
    }
    out
}

/// Why `block` cannot be trusted, if it cannot.
fn distrust(block: &IPBlock, cidr: &Cidr, pools: &BTreeMap<String, PoolFacts>) -> Option<String> {
    let name = block.metadata.name.as_deref().unwrap_or_default();
    if !cidr.is_object_name(name) {
        return Some(format!(
            "its name is not the canonical {} of {cidr}",
            cidr.object_name()
        ));
    }
    let Some(pool) = pools.get(&block.spec.pool) else {
        return Some(format!("its pool {} does not exist", block.spec.pool));
    };
    if !pool.cidr.contains_cidr(cidr) {
        return Some(format!(
            "{cidr} lies outside its pool {} ({})",
            pool.name, pool.cidr
        ));
    }
    if cidr.prefix_len() != pool.block_size {
        return Some(format!(
            "{cidr} is not a /{} block of pool {}",
            pool.block_size, pool.name
        ));
    }
    None
}

/// The blocks to act on, oldest first, and one problem line per block refused.
pub fn blocks(
    blocks: &[impl Borrow<IPBlock>],
    pools: &BTreeMap<String, PoolFacts>,
) -> (Vec<BlockInfo>, Vec<Problem>) {
    let mut candidates: Vec<(Age, &IPBlock)> = blocks
        .iter()
        .map(Borrow::borrow)
        .map(|b: &IPBlock| (creation_order(&b.metadata), b))
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    let mut trusted: Vec<BlockInfo> = Vec::new();
    // The trusted blocks are disjoint: an overlap is two lookups, not a scan.
    let mut held: DisjointPrefixes<&str> = DisjointPrefixes::default();
    let mut per_node_pool: HashMap<(&str, &str), usize> = HashMap::new();
    let mut problems = Vec::new();
    for (_, block) in candidates {
        let name = block.metadata.name.as_deref().unwrap_or_default();
        let Ok(cidr) = block.spec.cidr.parse::<Cidr>() else {
            problems.push(Problem::new(
                ProblemKind::UntrustedBlock,
                format!(
                    "ignoring IPBlock {name} (node {}): its CIDR {:?} does not parse",
                    block.spec.node, block.spec.cidr
                ),
            ));
            continue;
        };
        let count = per_node_pool
            .entry((block.spec.node.as_str(), block.spec.pool.as_str()))
            .or_default();
        let why = distrust(block, &cidr, pools)
            .or_else(|| {
                held.overlapping(&cidr).map(|(older, node)| {
                    format!("it overlaps the older block {older} of node {node}")
                })
            })
            .or_else(|| {
                (*count >= MAX_BLOCKS_PER_POOL).then(|| {
                    format!(
                        "node {} already holds {MAX_BLOCKS_PER_POOL} older blocks of pool {}, the most one node may hold",
                        block.spec.node, block.spec.pool
                    )
                })
            });
        match why {
            Some(why) => problems.push(Problem::new(
                ProblemKind::UntrustedBlock,
                format!("ignoring IPBlock {name} (node {}): {why}", block.spec.node),
            )),
            None => {
                *count += 1;
                held.insert(cidr, &block.spec.node);
                trusted.push(BlockInfo {
                    cidr,
                    node: block.spec.node.clone(),
                    pool: block.spec.pool.clone(),
                });
            }
        }
    }
    (trusted, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;
    use sinew_crds::{IPBlockSpec, IPPoolSpec, IPPoolStatus};

    fn meta(name: &str, created_s: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created_s).unwrap(),
            )),
            ..ObjectMeta::default()
        }
    }

    fn pool(name: &str, cidr: &str, created_s: i64, judged: bool) -> IPPool {
        let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({"cidr": cidr})).unwrap();
        IPPool {
            metadata: meta(name, created_s),
            spec,
            status: judged.then(|| IPPoolStatus {
                observed_generation: Some(1),
                ..IPPoolStatus::default()
            }),
        }
    }

    fn block(name: &str, cidr: &str, pool: &str, node: &str, created_s: i64) -> IPBlock {
        IPBlock {
            metadata: meta(name, created_s),
            spec: IPBlockSpec {
                pool: pool.into(),
                cidr: cidr.into(),
                node: node.into(),
            },
        }
    }

    fn canonical(cidr: &str, pool: &str, node: &str, created_s: i64) -> IPBlock {
        let name = cidr.parse::<Cidr>().unwrap().object_name();
        block(&name, cidr, pool, node, created_s)
    }

    #[test]
    fn a_pool_is_usable_only_once_judged_and_never_when_it_overlaps_an_older_one() {
        let facts = pools(&[
            pool("old", "10.244.0.0/16", 0, true),
            pool("new", "10.244.128.0/17", 10, true),
            pool("fresh", "10.250.0.0/16", 20, false),
            pool("fine", "fd00:10::/56", 30, true),
        ]);
        assert_eq!(facts["old"].unusable, None);
        assert_eq!(
            facts["new"].unusable.as_deref(),
            Some("overlaps the older pool old (10.244.0.0/16)")
        );
        assert!(
            facts["fresh"]
                .unusable
                .as_deref()
                .unwrap()
                .contains("not yet judged")
        );
        assert_eq!(facts["fine"].unusable, None);
        assert_eq!(facts["fine"].block_size, 122);
    }

    #[test]
    fn forged_blocks_are_ignored_with_the_reason() {
        let facts = pools(&[pool("p", "10.244.0.0/16", 0, true)]);
        let input = [
            canonical("10.244.1.0/26", "p", "a", 1),
            // A non-canonical name for a real block.
            block("innocent", "10.244.2.0/26", "p", "evil", 2),
            // Outside its pool: would hijack the node network.
            canonical("10.0.0.0/26", "p", "evil", 3),
            // Inside, but not the pool's block size: would shadow other nodes' blocks.
            canonical("10.244.0.0/20", "p", "evil", 4),
            // A pool that does not exist.
            canonical("10.245.0.0/26", "nope", "evil", 5),
        ];
        let (trusted, problems) = blocks(&input, &facts);
        assert_eq!(
            trusted
                .iter()
                .map(|b| b.cidr.to_string())
                .collect::<Vec<_>>(),
            ["10.244.1.0/26"]
        );
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0]
                .message
                .contains("not the canonical 10-244-2-0-26"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].message.contains("outside its pool p"),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].message.contains("not a /26 block of pool p"),
            "{}",
            problems[2]
        );
        assert!(
            problems[3].message.contains("pool nope does not exist"),
            "{}",
            problems[3]
        );
    }

    /// A node that creates thousands of blocks (a bug, a stolen token) gets its oldest 256
    /// of a pool routed; the rest are ignored with the reason, and other nodes are untouched.
    #[test]
    fn a_node_holds_at_most_its_share_of_blocks_of_a_pool() {
        let mut p = pool("p", "10.0.0.0/8", 0, true);
        p.spec.block_size = Some(26);
        let facts = pools(&[p]);
        let mut all: Vec<IPBlock> = (0..1_000u32)
            .map(|i| {
                let cidr = format!("10.{}.{}.0/26", i / 256, i % 256);
                canonical(&cidr, "p", "greedy", 1 + i64::from(i))
            })
            .collect();
        all.push(canonical("10.200.0.0/26", "p", "honest", 5_000));
        let (trusted, problems) = blocks(&all, &facts);
        let greedy = trusted.iter().filter(|b| b.node == "greedy").count();
        assert_eq!(greedy, MAX_BLOCKS_PER_POOL);
        assert!(trusted.iter().any(|b| b.node == "honest"));
        assert_eq!(problems.len(), 1_000 - MAX_BLOCKS_PER_POOL);
        assert!(
            problems[0]
                .message
                .contains("node greedy already holds 256 older blocks of pool p"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn of_overlapping_blocks_the_older_wins_on_every_node() {
        let mut b = pool("b", "10.244.0.0/24", 5, true);
        b.spec.block_size = Some(28);
        let facts = pools(&[pool("a", "10.244.0.0/16", 0, true), b]);
        let older = canonical("10.244.0.0/26", "a", "n1", 1);
        let newer = canonical("10.244.0.0/26", "b", "n2", 2);
        let newer_other_size = {
            let mut b = canonical("10.244.0.0/28", "b", "n2", 3);
            b.metadata.name = Some("10-244-0-0-28".into());
            b
        };
        for input in [
            vec![older.clone(), newer_other_size.clone()],
            vec![newer_other_size.clone(), older.clone()],
        ] {
            let (trusted, problems) = blocks(&input, &facts);
            assert_eq!(trusted.len(), 1);
            assert_eq!(trusted[0].node, "n1");
            assert!(
                problems[0]
                    .message
                    .contains("overlaps the older block 10.244.0.0/26 of node n1")
            );
        }
        // Same CIDR, same canonical name: the API server holds only one of them anyway.
        assert_eq!(older.metadata.name, newer.metadata.name);
    }

    /// An object as a watch delivers it: JSON, `creationTimestamp` as the server wrote it.
    fn from_watch<K: serde::de::DeserializeOwned>(
        kind: &str,
        name: &str,
        created: &str,
        spec: serde_json::Value,
    ) -> K {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn creation_times_within_one_second_order_as_times_not_as_text() {
        // "…:00.5Z" sorts before "…:00Z" as text, but was created half a second later: the
        // pool and the block created at the whole second are the older ones.
        let (first, later) = ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5Z");
        let pool = |name: &str, created: &str, spec: serde_json::Value| -> IPPool {
            let mut p: IPPool = from_watch("IPPool", name, created, spec);
            p.status = Some(IPPoolStatus {
                observed_generation: Some(1),
                ..IPPoolStatus::default()
            });
            p
        };
        let facts = pools(&[
            pool(
                "later",
                later,
                serde_json::json!({"cidr": "10.244.0.0/24", "blockSize": 28}),
            ),
            pool("first", first, serde_json::json!({"cidr": "10.244.0.0/16"})),
        ]);
        assert_eq!(facts["first"].unusable, None);
        assert_eq!(
            facts["later"].unusable.as_deref(),
            Some("overlaps the older pool first (10.244.0.0/16)")
        );
        let block = |cidr: &str, pool: &str, node: &str, created: &str| -> IPBlock {
            let name = cidr.parse::<Cidr>().unwrap().object_name();
            from_watch(
                "IPBlock",
                &name,
                created,
                serde_json::json!({"cidr": cidr, "pool": pool, "node": node}),
            )
        };
        let older = block("10.244.0.0/26", "first", "n1", first);
        let newer = block("10.244.0.0/28", "later", "n2", later);
        for input in [
            vec![older.clone(), newer.clone()],
            vec![newer.clone(), older.clone()],
        ] {
            let (trusted, problems) = blocks(&input, &facts);
            assert_eq!(trusted.len(), 1, "{problems:#?}");
            assert_eq!(trusted[0].node, "n1");
            assert!(
                problems[0]
                    .message
                    .contains("overlaps the older block 10.244.0.0/26 of node n1"),
                "{}",
                problems[0]
            );
        }
    }
}
