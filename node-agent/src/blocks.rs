//! Which blocks this node claims, gives back or claims again (pure). The agent's API effector
//! carries the plan out; nothing here talks to the API server, the kernel or the clock.
//!
//! - **Claim** a block of a usable pool that selects this node when the node holds none of it,
//!   when fewer than `min_free` of its addresses are free here, or when the plugin asked for
//!   one (an ADD found the pool full here).
//! - **Release** a block that stayed empty for the grace period and is not needed: its pool no
//!   longer selects this node (or is unusable or gone), or the pool keeps at least `min_free`
//!   free addresses here without it.
//! - **Reassert** a block whose addresses pods here still hold but whose `IPBlock` is gone:
//!   otherwise another node could claim the range and hand out the same addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sinew_crds::Cidr;
use sinew_crds::node::{Problem, ProblemKind};
use sinew_node_lib::ipam::IpamState;

use crate::peers::BlockInfo;
use crate::vetting::PoolFacts;

/// What one pass knows about this node's addresses, from the IPAM store.
#[derive(Debug, Clone, Default)]
pub struct BlockUsage {
    /// Addresses held by a pod interface.
    held: BTreeSet<IpAddr>,
    /// Blocks named by held addresses: block -> (pool, addresses).
    in_use: BTreeMap<String, (String, usize)>,
    /// Blocks retired in the store (being given back): the plugin allocates nothing from
    /// them, whatever the cache still says about their `IPBlock`.
    retired: BTreeSet<String>,
}

impl BlockUsage {
    pub fn of(store: &IpamState) -> BlockUsage {
        let held = store
            .slots
            .iter()
            .filter(|(_, s)| s.holder.is_some())
            .map(|(ip, _)| *ip)
            .collect();
        let mut in_use: BTreeMap<String, (String, usize)> = BTreeMap::new();
        for a in store.attachments.values() {
            for h in &a.addresses {
                in_use
                    .entry(h.block.clone())
                    .or_insert_with(|| (h.pool.clone(), 0))
                    .1 += 1;
            }
        }
        BlockUsage {
            held,
            in_use,
            retired: store.retired.clone(),
        }
    }

    /// Addresses of `block` held by pods here.
    pub fn used(&self, block: &Cidr) -> u128 {
        self.held.iter().filter(|ip| block.contains(**ip)).count() as u128
    }

    /// Addresses of `block` the plugin can still hand out here: none in a retired block.
    pub fn free(&self, block: &Cidr) -> u128 {
        if self.retired.contains(&block.to_string()) {
            0
        } else {
            block.size().saturating_sub(self.used(block))
        }
    }
}

/// What a pool needs from this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockNeed {
    /// Enough free addresses here, nothing asked.
    Enough,
    /// Claim one more block; `free` addresses are left here now.
    Block { free: u128 },
}

/// The claim plan: pools needing a block (in pool order), and problems to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub needs: Vec<(String, BlockNeed)>,
    pub problems: Vec<Problem>,
}

/// This node's blocks of `pool`, in address order.
pub fn mine<'a>(blocks: &'a [BlockInfo], node: &str, pool: &str) -> Vec<&'a Cidr> {
    let mut mine: Vec<&Cidr> = blocks
        .iter()
        .filter(|b| b.node == node && b.pool == pool)
        .map(|b| &b.cidr)
        .collect();
    mine.sort();
    mine
}

/// The blocks of `pool` (of prefix `size`) no block in `blocks` (any node, any pool) covers, in
/// search order: from index `start` on, wrapping around, each once. Computed from the covered
/// index ranges, never by testing every block against every other, so the search skips a
/// stretch of claimed blocks in one step and finds the last free block of a large, nearly
/// full pool as surely as the first one of an empty pool.
pub fn free_blocks(
    pool: &Cidr,
    size: u8,
    start: u128,
    blocks: &[BlockInfo],
) -> impl Iterator<Item = Cidr> + use<> {
    let pool = *pool;
    let total = pool.block_count(size);
    let host_bits = u32::from(pool.family().bits().saturating_sub(size));
    let index = move |addr: IpAddr| -> Option<u128> {
        pool.offset_of(addr)
            .map(|o| o.checked_shr(host_bits).unwrap_or(0))
    };
    let mut covered: Vec<(u128, u128)> = blocks
        .iter()
        .filter(|b| b.cidr.overlaps(&pool))
        .filter_map(|b| {
            let first = if pool.contains(b.cidr.network()) {
                b.cidr.network()
            } else {
                pool.network()
            };
            let last = if pool.contains(b.cidr.last()) {
                b.cidr.last()
            } else {
                pool.last()
            };
            Some((index(first)?, index(last)?))
        })
        .collect();
    covered.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(covered.len());
    for (a, b) in covered {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut pos = if total == 0 { 0 } else { start % total };
    // Indices not passed yet: the search ends after one full turn.
    let mut remaining = total;
    std::iter::from_fn(move || {
        while remaining > 0 {
            let i = merged.partition_point(|r| r.0 <= pos);
            if let Some(&(_, end)) = i.checked_sub(1).and_then(|i| merged.get(i))
                && end >= pos
            {
                // Skip the covered stretch (it never crosses the end of the pool).
                let skipped = (end - pos + 1).min(remaining);
                remaining -= skipped;
                pos = if end + 1 >= total { 0 } else { end + 1 };
                continue;
            }
            let found = pool.block(size, pos);
            remaining -= 1;
            pos = if pos + 1 >= total { 0 } else { pos + 1 };
            return found;
        }
        None
    })
}

/// Decides, for each selected pool (`selected`, by name), whether this node claims a block.
/// The most blocks one node may hold in one pool. An agent claims a block only when its
/// blocks of the pool run short, so it holds a handful; this bound keeps a node (or a stolen
/// agent token) that creates thousands from routing or reserving the pool on every node:
/// every agent ignores a node's blocks of a pool beyond the oldest 256, and no agent claims
/// more.
pub const MAX_BLOCKS_PER_POOL: usize = 256;

pub fn claims(
    node: &str,
    selected: &[String],
    facts: &BTreeMap<String, PoolFacts>,
    blocks: &[BlockInfo],
    holdings: &BlockUsage,
    requested: &BTreeSet<String>,
    min_free: u64,
) -> Claims {
    let mut plan = Claims::default();
    for name in selected {
        let Some(fact) = facts.get(name) else {
            continue;
        };
        // A pool not judged yet, stalled for a conflict or disabled gets no new blocks;
        // existing pods keep theirs.
        if let Some(why) = &fact.unusable {
            if requested.contains(name) {
                plan.problems.push(Problem::new(
                    ProblemKind::PoolUnusable,
                    format!("a pod asked for pool {name}, which hands out no addresses: {why}"),
                ));
            }
            continue;
        }
        let mine = mine(blocks, node, name);
        // A block being given back (retired, its IPBlock not yet gone from the cache) is
        // neither room nor a block of the pool any more.
        let serving = mine
            .iter()
            .filter(|b| !holdings.retired.contains(&b.to_string()))
            .count();
        let free: u128 = mine.iter().map(|b| holdings.free(b)).sum();
        let need = if serving > 0 && free >= u128::from(min_free) && !requested.contains(name) {
            BlockNeed::Enough
        } else if mine.len() >= MAX_BLOCKS_PER_POOL {
            plan.problems.push(Problem::new(
                ProblemKind::BlockClaimFailed,
                format!(
                    "pool {name}: this node holds {} blocks of it, the most one node may hold ({MAX_BLOCKS_PER_POOL}); no more are claimed ({free} addresses free)",
                    mine.len()
                ),
            ));
            BlockNeed::Enough
        } else {
            BlockNeed::Block { free }
        };
        plan.needs.push((name.clone(), need));
    }
    plan
}

/// Empty-block timers carried from pass to pass: block -> first seen empty.
pub type EmptySince = BTreeMap<String, Instant>;

/// Whether `pending` (the plugin's block requests, with when each was made) holds one the
/// last pass did not read (`read`): a new pool, or a request made again since. A request a
/// pass read and could not serve (the pool is full or unusable) does not run pass after pass.
pub fn fresh_requests(
    pending: &[(String, std::time::SystemTime)],
    read: &BTreeMap<String, std::time::SystemTime>,
) -> bool {
    pending
        .iter()
        .any(|(pool, made)| read.get(pool) != Some(made))
}

/// The blocks of this node to give back now, in order; updates the timers.
#[allow(clippy::too_many_arguments)]
pub fn releases(
    node: &str,
    usable_selected: &BTreeSet<String>,
    blocks: &[BlockInfo],
    holdings: &BlockUsage,
    empty_since: &mut EmptySince,
    now: Instant,
    grace: Duration,
    min_free: u64,
) -> Vec<Cidr> {
    let mine: Vec<&BlockInfo> = blocks.iter().filter(|b| b.node == node).collect();
    // Timers of blocks no longer ours stop.
    empty_since.retain(|k, _| mine.iter().any(|b| b.cidr.to_string() == *k));
    let mut releasable = Vec::new();
    for b in &mine {
        let key = b.cidr.to_string();
        if holdings.used(&b.cidr) > 0 {
            empty_since.remove(&key);
            continue;
        }
        let since = *empty_since.entry(key).or_insert(now);
        if now.duration_since(since) < grace {
            continue;
        }
        let surplus = !usable_selected.contains(&b.pool) || {
            // Retired blocks count for nothing: they are already on their way out.
            let others_free: u128 = mine
                .iter()
                .filter(|o| o.pool == b.pool && o.cidr != b.cidr && !releasable.contains(&o.cidr))
                .map(|o| holdings.free(&o.cidr))
                .sum();
            others_free >= u128::from(min_free)
        };
        if surplus {
            releasable.push(b.cidr);
        }
    }
    releasable
}

/// A block pods here hold addresses of, whose `IPBlock` is not this node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub block: Cidr,
    pub pool: String,
    pub addresses: usize,
    /// The node whose trusted `IPBlock` covers these addresses now (the block is lost: two
    /// nodes can hand out the same addresses); `None`: no `IPBlock` at all, claim it again.
    pub owner: Option<String>,
}

/// The blocks held here that are not this node's (`node`) by any trusted `IPBlock`: gone
/// (of a pool that still exists: claim it again), or covered by another node's block (lost:
/// report it, whatever its pool).
pub fn orphans(
    node: &str,
    holdings: &BlockUsage,
    facts: &BTreeMap<String, PoolFacts>,
    blocks: &[BlockInfo],
) -> Vec<Orphan> {
    holdings
        .in_use
        .iter()
        .filter_map(|(block, (pool, count))| {
            let cidr = block.parse::<Cidr>().ok()?;
            if blocks.iter().any(|b| b.cidr == cidr && b.node == node) {
                return None;
            }
            let owner = blocks
                .iter()
                .find(|b| b.node != node && b.cidr.overlaps(&cidr))
                .map(|b| b.node.clone());
            (owner.is_some() || facts.contains_key(pool)).then(|| Orphan {
                block: cidr,
                pool: pool.clone(),
                addresses: *count,
                owner,
            })
        })
        .collect()
}

/// The `BlockLost` problem of `orphan`, whose addresses `owner`'s block covers now.
pub fn lost_problem(orphan: &Orphan, owner: &str) -> Problem {
    Problem::new(
        ProblemKind::BlockLost,
        format!(
            "{} addresses of {} are held by pods on this node, but IPBlock {} now belongs to node {owner}: delete and recreate those pods",
            orphan.addresses,
            orphan.block,
            orphan.block.object_name()
        ),
    )
}

/// Gives `block` back in the store if no pod holds an address of it: the node's tunnel address
/// leaves it first (another block gives the device its address afterwards), and the block is
/// retired, so no ADD can allocate from it any more. Returns (retired, the tunnel address
/// moved); nothing changes when a pod still holds an address in it.
pub fn retire_for_release(st: &mut IpamState, block: &Cidr) -> (bool, bool) {
    let before = st.tunnel.clone();
    st.tunnel.retain(|ip| !block.contains(*ip));
    let retired = st.retire_if_empty(block);
    if !retired {
        st.tunnel = before;
        return (false, false);
    }
    (true, st.tunnel != before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_node_lib::ipam::{Attachment, HeldAddress, Slot};

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn facts(unusable: Option<&str>) -> BTreeMap<String, PoolFacts> {
        BTreeMap::from([(
            "p".to_string(),
            PoolFacts {
                name: "p".into(),
                cidr: cidr("10.244.0.0/16"),
                block_size: 30,
                unusable: unusable.map(str::to_string),
            },
        )])
    }

    fn block(c: &str, node: &str) -> BlockInfo {
        BlockInfo {
            cidr: cidr(c),
            node: node.into(),
            pool: "p".into(),
        }
    }

    /// A store where pods hold each `(address, block)` of pool p.
    fn holding(ips: &[(&str, &str)]) -> BlockUsage {
        let mut st = IpamState::default();
        for (i, (ip, blk)) in ips.iter().enumerate() {
            let ip: IpAddr = ip.parse().unwrap();
            st.slots.insert(
                ip,
                Slot {
                    generation: 1,
                    holder: Some(format!("c{i}/eth0")),
                },
            );
            let a = Attachment {
                container_id: format!("c{i}"),
                ifname: "eth0".into(),
                netns: None,
                host_veth: format!("snw{i}"),
                mtu: 1450,
                addresses: vec![HeldAddress {
                    ip,
                    block: blk.to_string(),
                    pool: "p".into(),
                    generation: 1,
                    mode: sinew_crds::PoolMode::Auto,
                }],
                pod_namespace: None,
                pod_name: None,
                pod_uid: None,
                network: None,
                port_mappings: Vec::new(),
            };
            st.attachments.insert(format!("c{i}/eth0"), a);
        }
        BlockUsage::of(&st)
    }

    fn sel() -> Vec<String> {
        vec!["p".to_string()]
    }

    #[test]
    fn a_node_without_a_block_claims_one_and_one_with_room_does_not() {
        let none = BTreeSet::new();
        let plan = claims(
            "n1",
            &sel(),
            &facts(None),
            &[],
            &BlockUsage::default(),
            &none,
            2,
        );
        assert_eq!(plan.needs, vec![("p".into(), BlockNeed::Block { free: 0 })]);
        // A /30 with one address held: 3 free >= 2.
        let blocks = [block("10.244.0.0/30", "n1"), block("10.244.0.4/30", "n2")];
        let h = holding(&[("10.244.0.1", "10.244.0.0/30")]);
        let plan = claims("n1", &sel(), &facts(None), &blocks, &h, &none, 2);
        assert_eq!(plan.needs, vec![("p".into(), BlockNeed::Enough)]);
        // Below min_free: another block. Another node's holdings do not count as ours.
        let plan = claims("n1", &sel(), &facts(None), &blocks, &h, &none, 4);
        assert_eq!(plan.needs, vec![("p".into(), BlockNeed::Block { free: 3 })]);
        // The plugin asked: claim even with room.
        let asked = BTreeSet::from(["p".to_string()]);
        let plan = claims("n1", &sel(), &facts(None), &blocks, &h, &asked, 2);
        assert_eq!(plan.needs, vec![("p".into(), BlockNeed::Block { free: 3 })]);
    }

    /// A node at the bound claims no more, even when a pod asks, and says why.
    #[test]
    fn a_node_claims_no_more_than_its_share_of_a_pool() {
        let full: Vec<BlockInfo> = (0..MAX_BLOCKS_PER_POOL)
            .map(|i| block(&format!("10.244.{}.{}/30", i / 64, (i % 64) * 4), "n1"))
            .collect();
        let asked = BTreeSet::from(["p".to_string()]);
        let plan = claims(
            "n1",
            &sel(),
            &facts(None),
            &full,
            &BlockUsage::default(),
            &asked,
            2,
        );
        assert_eq!(plan.needs, vec![("p".into(), BlockNeed::Enough)]);
        assert_eq!(plan.problems.len(), 1);
        assert_eq!(plan.problems[0].kind, ProblemKind::BlockClaimFailed);
        assert!(
            plan.problems[0]
                .message
                .contains("the most one node may hold (256)"),
            "{}",
            plan.problems[0]
        );
        let plan = claims(
            "n1",
            &sel(),
            &facts(None),
            &full[1..],
            &BlockUsage::default(),
            &asked,
            2,
        );
        assert!(matches!(plan.needs[0].1, BlockNeed::Block { .. }));
    }

    #[test]
    fn an_unusable_pool_gets_no_block_and_a_request_for_it_is_a_problem() {
        let asked = BTreeSet::from(["p".to_string()]);
        let f = facts(Some("disabled"));
        let plan = claims("n1", &sel(), &f, &[], &BlockUsage::default(), &asked, 2);
        assert!(plan.needs.is_empty());
        assert_eq!(plan.problems.len(), 1);
        assert_eq!(plan.problems[0].kind, ProblemKind::PoolUnusable);
        assert!(plan.problems[0].message.contains("disabled"));
        let quiet = claims(
            "n1",
            &sel(),
            &f,
            &[],
            &BlockUsage::default(),
            &BTreeSet::new(),
            2,
        );
        assert!(quiet.problems.is_empty() && quiet.needs.is_empty());
    }

    #[test]
    fn empty_blocks_go_back_after_the_grace_period_only_when_not_needed() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let blocks = [block("10.244.0.0/30", "n1"), block("10.244.0.4/30", "n1")];
        let usable = BTreeSet::from(["p".to_string()]);
        let mut timers = EmptySince::new();
        let h = holding(&[("10.244.0.1", "10.244.0.0/30")]);
        // The empty second block starts its timer; nothing goes before the grace period.
        let out = releases("n1", &usable, &blocks, &h, &mut timers, t0, grace, 2);
        assert!(out.is_empty());
        assert_eq!(timers.len(), 1);
        let later = t0 + grace;
        // 3 free in the first block >= min_free 2: the second is surplus.
        let out = releases("n1", &usable, &blocks, &h, &mut timers, later, grace, 2);
        assert_eq!(out, vec![cidr("10.244.0.4/30")]);
        // With min_free 4 the node needs it.
        let out = releases("n1", &usable, &blocks, &h, &mut timers, later, grace, 4);
        assert!(out.is_empty());
        // A pod taking an address stops the timer.
        let h2 = holding(&[
            ("10.244.0.1", "10.244.0.0/30"),
            ("10.244.0.5", "10.244.0.4/30"),
        ]);
        releases("n1", &usable, &blocks, &h2, &mut timers, later, grace, 2);
        assert!(timers.is_empty());
    }

    #[test]
    fn the_block_search_finds_the_last_free_block_of_a_large_nearly_full_pool() {
        // A /12 in /28s: 65,536 blocks, all claimed but one far from where the search starts.
        let pool = cidr("10.0.0.0/12");
        let free = 40_000u128;
        let claimed: Vec<BlockInfo> = pool
            .blocks(28)
            .enumerate()
            .filter(|(i, _)| *i as u128 != free)
            .map(|(_, b)| BlockInfo {
                cidr: b,
                node: "other".into(),
                pool: "p".into(),
            })
            .collect();
        let started = Instant::now();
        let found: Vec<Cidr> = free_blocks(&pool, 28, 100, &claimed).collect();
        assert_eq!(found, vec![pool.block(28, free).unwrap()]);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Nothing claimed: from the start, wrapping around, every block once.
        let small = cidr("10.1.0.0/26");
        let order: Vec<String> = free_blocks(&small, 28, 2, &[])
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            order,
            [
                "10.1.0.32/28",
                "10.1.0.48/28",
                "10.1.0.0/28",
                "10.1.0.16/28"
            ]
        );
        // A wider block (another pool overlapping) covers several; a block wider than the
        // pool covers it all.
        let wide = |c: &str| BlockInfo {
            cidr: cidr(c),
            node: "n".into(),
            pool: "q".into(),
        };
        let left: Vec<String> = free_blocks(&small, 28, 0, &[wide("10.1.0.0/27")])
            .map(|c| c.to_string())
            .collect();
        assert_eq!(left, ["10.1.0.32/28", "10.1.0.48/28"]);
        assert_eq!(free_blocks(&small, 28, 0, &[wide("10.0.0.0/8")]).count(), 0);
        assert_eq!(
            free_blocks(&small, 24, 0, &[]).count(),
            0,
            "no /24 in a /26"
        );
    }

    #[test]
    fn only_a_new_or_renewed_block_request_wakes_a_pass() {
        let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let read = BTreeMap::from([("p".to_string(), t0)]);
        assert!(!fresh_requests(&[("p".into(), t0)], &read), "read already");
        assert!(!fresh_requests(&[], &read));
        assert!(fresh_requests(
            &[("p".into(), t0 + Duration::from_millis(1))],
            &read
        ));
        assert!(fresh_requests(&[("p".into(), t0), ("q".into(), t0)], &read));
        assert!(fresh_requests(&[("p".into(), t0)], &BTreeMap::new()));
    }

    #[test]
    fn a_retired_block_still_in_the_cache_is_no_room() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(1);
        let usable = BTreeSet::from(["p".to_string()]);
        // A (1 of 4 held), B empty, C empty and already retired (its deletion not yet seen).
        let blocks = [
            block("10.244.0.0/30", "n1"),
            block("10.244.0.4/30", "n1"),
            block("10.244.0.8/30", "n1"),
        ];
        let mut h = holding(&[("10.244.0.1", "10.244.0.0/30")]);
        h.retired.insert("10.244.0.8/30".into());
        let mut timers = EmptySince::new();
        releases("n1", &usable, &blocks, &h, &mut timers, t0, grace, 4);
        let out = releases(
            "n1",
            &usable,
            &blocks,
            &h,
            &mut timers,
            t0 + grace,
            grace,
            4,
        );
        // B is what keeps 4 free (A has 3, C none): only C goes (its deletion again).
        assert_eq!(out, vec![cidr("10.244.0.8/30")]);
        // Nor is it room for claims: A full and C retired means another block.
        let full = {
            let mut h = holding(&[
                ("10.244.0.0", "10.244.0.0/30"),
                ("10.244.0.1", "10.244.0.0/30"),
                ("10.244.0.2", "10.244.0.0/30"),
                ("10.244.0.3", "10.244.0.0/30"),
            ]);
            h.retired.insert("10.244.0.8/30".into());
            h
        };
        let two = [block("10.244.0.0/30", "n1"), block("10.244.0.8/30", "n1")];
        let plan = claims("n1", &sel(), &facts(None), &two, &full, &BTreeSet::new(), 2);
        assert_eq!(plan.needs, vec![("p".into(), BlockNeed::Block { free: 0 })]);
    }

    #[test]
    fn blocks_of_a_pool_that_no_longer_selects_the_node_all_go_back() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(1);
        let blocks = [block("10.244.0.0/30", "n1"), block("10.244.0.4/30", "n1")];
        let mut timers = EmptySince::new();
        let none = BTreeSet::new();
        let h = BlockUsage::default();
        releases("n1", &none, &blocks, &h, &mut timers, t0, grace, 2);
        let out = releases("n1", &none, &blocks, &h, &mut timers, t0 + grace, grace, 2);
        assert_eq!(out, vec![cidr("10.244.0.0/30"), cidr("10.244.0.4/30")]);
    }

    #[test]
    fn held_blocks_without_an_ipblock_are_claimed_again() {
        let h = holding(&[
            ("10.244.0.1", "10.244.0.0/30"),
            ("10.244.0.2", "10.244.0.0/30"),
        ]);
        let out = orphans("n1", &h, &facts(None), &[]);
        assert_eq!(
            out,
            vec![Orphan {
                block: cidr("10.244.0.0/30"),
                pool: "p".into(),
                addresses: 2,
                owner: None,
            }]
        );
        // Our block, or pool gone: nothing to do.
        assert!(orphans("n1", &h, &facts(None), &[block("10.244.0.0/30", "n1")]).is_empty());
        assert!(orphans("n1", &h, &BTreeMap::new(), &[]).is_empty());
    }

    #[test]
    fn a_held_block_another_node_owns_now_is_lost() {
        let h = holding(&[("10.244.0.1", "10.244.0.0/30")]);
        let lost = Orphan {
            block: cidr("10.244.0.0/30"),
            pool: "p".into(),
            addresses: 1,
            owner: Some("n2".into()),
        };
        // Its IPBlock was deleted and node n2 claimed the range: both hand out its addresses.
        let taken = [block("10.244.0.0/30", "n2")];
        assert_eq!(orphans("n1", &h, &facts(None), &taken), vec![lost.clone()]);
        // Whatever the pool (gone, or another one overlapping) and the size of n2's block.
        let wider = [block("10.244.0.0/29", "n2")];
        assert_eq!(
            orphans("n1", &h, &BTreeMap::new(), &wider),
            vec![lost.clone()]
        );
    }

    #[test]
    fn a_block_given_back_takes_the_tunnel_address_off_only_when_it_goes() {
        let block: Cidr = "10.9.0.0/26".parse().unwrap();
        let mut st = IpamState::default();
        st.tunnel.insert("10.9.0.1".parse().unwrap());
        st.slots.insert(
            "10.9.0.5".parse().unwrap(),
            sinew_node_lib::ipam::Slot {
                generation: 1,
                holder: Some("ctr/eth0".into()),
            },
        );
        let before = st.clone();
        assert_eq!(retire_for_release(&mut st, &block), (false, false));
        assert_eq!(st, before, "a pod still holds an address: nothing changes");

        st.slots.clear();
        assert_eq!(retire_for_release(&mut st, &block), (true, true));
        assert!(
            st.tunnel.is_empty(),
            "the tunnel address left with the block"
        );
        assert!(st.retired.contains("10.9.0.0/26"));

        let other: Cidr = "10.9.0.64/26".parse().unwrap();
        let mut st = IpamState::default();
        st.tunnel.insert("10.9.0.1".parse().unwrap());
        assert_eq!(retire_for_release(&mut st, &other), (true, false));
        assert_eq!(st.tunnel.len(), 1, "another block's tunnel address stays");
    }
}
