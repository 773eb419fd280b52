//! Which peer blocks a pass asks the kernel about for reverse-path filtering, and what the
//! last answers were. One question is one netlink round trip; asking for every peer in every
//! pass cost 5,000 round trips a pass at 5,000 peers. Verdicts are kept between passes and a
//! pass asks at most [`BUDGET`] questions: a pair not asked yet (a new peer, a new block, a
//! new path) first, then the oldest answers again in turn. A change of the `rp_filter`
//! settings read forgets every verdict, so the first pass after it already names up to
//! `BUDGET` dropped peers, and all of them within `pairs / BUDGET` passes.

use std::collections::{BTreeMap, HashMap};

use sinew_crds::Cidr;

use crate::peers::PeerPath;

/// The most questions one pass asks.
pub const BUDGET: usize = 64;

/// A peer's traffic on one path: the block asked about.
pub type Pair = (String, PeerPath);

/// The kept verdicts: for each pair, the block asked about and whether the kernel accepted
/// a source of it.
#[derive(Debug, Default)]
pub struct ReverseChecks {
    /// The `rp_filter` settings the verdicts were given under.
    settings: Vec<Option<u8>>,
    verdicts: BTreeMap<Pair, (Cidr, bool)>,
    /// Where the re-asking of old verdicts goes on next pass.
    cursor: usize,
}

impl ReverseChecks {
    /// The pairs to ask about this pass (at most [`BUDGET`]), given every pair the plan
    /// routes now and the `rp_filter` settings read now. Verdicts of pairs the plan no longer
    /// has are forgotten.
    pub fn questions(
        &mut self,
        pairs: &[(Pair, Cidr)],
        settings: Vec<Option<u8>>,
    ) -> Vec<(Pair, Cidr)> {
        if settings != self.settings {
            self.verdicts.clear();
            self.settings = settings;
        }
        let current: HashMap<&Pair, &Cidr> = pairs.iter().map(|(p, c)| (p, c)).collect();
        self.verdicts
            .retain(|pair, (block, _)| current.get(pair) == Some(&&*block));
        let mut ask: Vec<(Pair, Cidr)> = pairs
            .iter()
            .filter(|(pair, _)| !self.verdicts.contains_key(pair))
            .take(BUDGET)
            .cloned()
            .collect();
        let known: Vec<&(Pair, Cidr)> = pairs
            .iter()
            .filter(|(pair, _)| self.verdicts.contains_key(pair))
            .collect();
        let again = (BUDGET - ask.len()).min(known.len());
        for i in 0..again {
            ask.push(known[(self.cursor + i) % known.len()].clone());
        }
        if !known.is_empty() {
            self.cursor = (self.cursor + again) % known.len();
        }
        ask
    }

    /// Keeps what the kernel answered for `pair`.
    pub fn answered(&mut self, pair: Pair, block: Cidr, accepted: bool) {
        self.verdicts.insert(pair, (block, accepted));
    }

    /// The pairs whose last answer was a drop, with the block asked about.
    pub fn dropped(&self) -> impl Iterator<Item = (&Pair, &Cidr)> {
        self.verdicts
            .iter()
            .filter(|(_, (_, accepted))| !accepted)
            .map(|(pair, (block, _))| (pair, block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<(Pair, Cidr)> {
        (0..n)
            .map(|i| {
                let block: Cidr = format!("10.{}.{}.0/26", i / 256, i % 256).parse().unwrap();
                ((format!("node-{i}"), PeerPath::Vxlan), block)
            })
            .collect()
    }

    fn pass(checks: &mut ReverseChecks, pairs: &[(Pair, Cidr)], rp: u8, drop: &str) -> Vec<String> {
        let asked = checks.questions(pairs, vec![Some(rp)]);
        assert!(
            asked.len() <= BUDGET,
            "{} questions in one pass",
            asked.len()
        );
        for (pair, block) in &asked {
            let accepted = pair.0 != drop;
            checks.answered(pair.clone(), *block, accepted);
        }
        asked.into_iter().map(|((peer, _), _)| peer).collect()
    }

    #[test]
    fn a_pass_asks_at_most_the_budget_and_every_pair_is_asked_again_in_turn() {
        let all = pairs(5000);
        let mut checks = ReverseChecks::default();
        let mut asked = BTreeMap::<String, usize>::new();
        let passes = 5000usize.div_ceil(BUDGET);
        for _ in 0..2 * passes {
            for peer in pass(&mut checks, &all, 1, "") {
                *asked.entry(peer).or_default() += 1;
            }
        }
        assert_eq!(
            asked.len(),
            5000,
            "every pair is asked within {passes} passes"
        );
        assert!(asked.values().all(|n| *n >= 1 && *n <= 3), "{asked:?}");
    }

    #[test]
    fn a_new_peer_is_asked_in_its_first_pass_before_old_answers_are_renewed() {
        let mut all = pairs(300);
        let mut checks = ReverseChecks::default();
        for _ in 0..10 {
            pass(&mut checks, &all, 1, "");
        }
        let block: Cidr = "10.200.0.0/26".parse().unwrap();
        all.push((("newcomer".to_string(), PeerPath::Vxlan), block));
        assert!(pass(&mut checks, &all, 1, "newcomer").contains(&"newcomer".to_string()));
        let dropped: Vec<_> = checks.dropped().map(|(p, _)| p.0.clone()).collect();
        assert_eq!(dropped, vec!["newcomer".to_string()]);
    }

    #[test]
    fn new_settings_forget_every_verdict_and_a_gone_peer_is_no_longer_reported() {
        let mut all = pairs(100);
        let mut checks = ReverseChecks::default();
        pass(&mut checks, &all, 0, "");
        pass(&mut checks, &all, 0, "");
        assert_eq!(checks.dropped().count(), 0);
        // Strict filtering turned on: the first pass already finds drops.
        pass(&mut checks, &all, 1, "node-3");
        assert_eq!(checks.dropped().count(), 1);
        all.retain(|((peer, _), _)| peer != "node-3");
        checks.questions(&all, vec![Some(1)]);
        assert_eq!(
            checks.dropped().count(),
            0,
            "a departed peer's verdict is forgotten"
        );
    }

    #[test]
    fn a_peer_with_another_block_is_asked_again() {
        let mut all = pairs(200);
        let mut checks = ReverseChecks::default();
        for _ in 0..4 {
            pass(&mut checks, &all, 1, "");
        }
        all[150].1 = "10.201.0.0/26".parse().unwrap();
        assert!(pass(&mut checks, &all, 1, "").contains(&"node-150".to_string()));
    }
}
