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
use crate::trust::PoolFacts;

/// What one pass knows about this node's addresses, from the IPAM store.
#[derive(Debug, Clone, Default)]
pub struct Holdings {
    /// Addresses held by a pod interface.
    held: BTreeSet<IpAddr>,
    /// Blocks named by held addresses: block -> (pool, addresses).
    in_use: BTreeMap<String, (String, usize)>,
}

impl Holdings {
    pub fn of(store: &IpamState) -> Holdings {
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
        Holdings { held, in_use }
    }

    /// Addresses of `block` held by pods here.
    pub fn used(&self, block: &Cidr) -> u128 {
        self.held.iter().filter(|ip| block.contains(**ip)).count() as u128
    }
}

/// What a pool needs from this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Enough free addresses here, nothing asked.
    Enough,
    /// Claim one more block; `free` addresses are left here now.
    Block { free: u128 },
}

/// The claim plan: pools needing a block (in pool order), and problems to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub needs: Vec<(String, Need)>,
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

/// Decides, for each selected pool (`selected`, by name), whether this node claims a block.
pub fn claims(
    node: &str,
    selected: &[String],
    facts: &BTreeMap<String, PoolFacts>,
    blocks: &[BlockInfo],
    holdings: &Holdings,
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
        let capacity: u128 = mine.iter().map(|b| b.size()).sum();
        let used: u128 = mine.iter().map(|b| holdings.used(b)).sum();
        let free = capacity.saturating_sub(used);
        let need = if !mine.is_empty() && free >= u128::from(min_free) && !requested.contains(name)
        {
            Need::Enough
        } else {
            Need::Block { free }
        };
        plan.needs.push((name.clone(), need));
    }
    plan
}

/// Empty-block timers carried from pass to pass: block -> first seen empty.
pub type EmptySince = BTreeMap<String, Instant>;

/// The blocks of this node to give back now, in order; updates the timers.
#[allow(clippy::too_many_arguments)]
pub fn releases(
    node: &str,
    usable_selected: &BTreeSet<String>,
    blocks: &[BlockInfo],
    holdings: &Holdings,
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
            let others_free: u128 = mine
                .iter()
                .filter(|o| o.pool == b.pool && o.cidr != b.cidr && !releasable.contains(&o.cidr))
                .map(|o| o.cidr.size() - holdings.used(&o.cidr))
                .sum();
            others_free >= u128::from(min_free)
        };
        if surplus {
            releasable.push(b.cidr);
        }
    }
    releasable
}

/// A block pods here hold addresses of, whose `IPBlock` is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub block: Cidr,
    pub pool: String,
    pub addresses: usize,
}

/// The blocks to claim again: held here, of a pool that still exists, with no trusted
/// `IPBlock` left.
pub fn orphans(
    holdings: &Holdings,
    facts: &BTreeMap<String, PoolFacts>,
    blocks: &[BlockInfo],
) -> Vec<Orphan> {
    holdings
        .in_use
        .iter()
        .filter_map(|(block, (pool, count))| {
            let cidr = block.parse::<Cidr>().ok()?;
            let known = blocks.iter().any(|b| b.cidr == cidr);
            (!known && facts.contains_key(pool)).then(|| Orphan {
                block: cidr,
                pool: pool.clone(),
                addresses: *count,
            })
        })
        .collect()
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
    fn holding(ips: &[(&str, &str)]) -> Holdings {
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
        Holdings::of(&st)
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
            &Holdings::default(),
            &none,
            2,
        );
        assert_eq!(plan.needs, vec![("p".into(), Need::Block { free: 0 })]);
        // A /30 with one address held: 3 free >= 2.
        let blocks = [block("10.244.0.0/30", "n1"), block("10.244.0.4/30", "n2")];
        let h = holding(&[("10.244.0.1", "10.244.0.0/30")]);
        let plan = claims("n1", &sel(), &facts(None), &blocks, &h, &none, 2);
        assert_eq!(plan.needs, vec![("p".into(), Need::Enough)]);
        // Below min_free: another block. Another node's holdings do not count as ours.
        let plan = claims("n1", &sel(), &facts(None), &blocks, &h, &none, 4);
        assert_eq!(plan.needs, vec![("p".into(), Need::Block { free: 3 })]);
        // The plugin asked: claim even with room.
        let asked = BTreeSet::from(["p".to_string()]);
        let plan = claims("n1", &sel(), &facts(None), &blocks, &h, &asked, 2);
        assert_eq!(plan.needs, vec![("p".into(), Need::Block { free: 3 })]);
    }

    #[test]
    fn an_unusable_pool_gets_no_block_and_a_request_for_it_is_a_problem() {
        let asked = BTreeSet::from(["p".to_string()]);
        let f = facts(Some("disabled"));
        let plan = claims("n1", &sel(), &f, &[], &Holdings::default(), &asked, 2);
        assert!(plan.needs.is_empty());
        assert_eq!(plan.problems.len(), 1);
        assert_eq!(plan.problems[0].kind, ProblemKind::PoolUnusable);
        assert!(plan.problems[0].message.contains("disabled"));
        let quiet = claims(
            "n1",
            &sel(),
            &f,
            &[],
            &Holdings::default(),
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
    fn blocks_of_a_pool_that_no_longer_selects_the_node_all_go_back() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(1);
        let blocks = [block("10.244.0.0/30", "n1"), block("10.244.0.4/30", "n1")];
        let mut timers = EmptySince::new();
        let none = BTreeSet::new();
        let h = Holdings::default();
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
        let out = orphans(&h, &facts(None), &[]);
        assert_eq!(
            out,
            vec![Orphan {
                block: cidr("10.244.0.0/30"),
                pool: "p".into(),
                addresses: 2
            }]
        );
        // Known block, or pool gone: nothing to do.
        assert!(orphans(&h, &facts(None), &[block("10.244.0.0/30", "n1")]).is_empty());
        assert!(orphans(&h, &BTreeMap::new(), &[]).is_empty());
    }
}
