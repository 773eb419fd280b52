//! Cutting overlapping rule items into the disjoint elements an interval set accepts: the
//! address space is split at every item boundary, each segment gets the union of the port
//! ranges active on it (merged per protocol), and adjacent segments with equal port sets are
//! merged. Each resulting piece keeps the reasons of every item that overlaps it.
//!
//! Cost: sorting the boundaries, then per segment the active port ranges and reasons, so
//! O(n log n) for items that rarely overlap (ipBlocks with excepts, pod addresses) and
//! O(segments x overlapping items) at worst.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::plan::Reason;
use crate::view::Protocol;

/// The ports part of an item: `None` for "every protocol and port".
pub(crate) type PortKey = Option<(Protocol, u16, u16)>;

/// One address range x ports, with the rule that asked for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub lo: u128,
    pub hi: u128,
    pub port: PortKey,
    pub reason: Reason,
}

/// One disjoint output element; its reasons are a set numbered by the [`Interner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub lo: u128,
    pub hi: u128,
    pub port: PortKey,
    pub reasons: u32,
}

/// Distinct reason sets in order of first use (so the numbering is deterministic).
#[derive(Default)]
pub(crate) struct Interner {
    pub sets: Vec<Vec<Reason>>,
    index: HashMap<Vec<Reason>, u32>,
}

impl Interner {
    pub fn intern(&mut self, set: Vec<Reason>) -> u32 {
        if let Some(i) = self.index.get(&set) {
            return *i;
        }
        let i = self.sets.len() as u32;
        self.sets.push(set.clone());
        self.index.insert(set, i);
        i
    }
}

/// More pieces than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooMany;

struct Run {
    lo: u128,
    hi: u128,
    shape: Vec<PortKey>,
    reasons: Vec<BTreeSet<Reason>>,
}

/// Disjoint pieces covering exactly what `items` cover (all of one family, `hi <= top`),
/// sorted by address, then protocol and first port; `Err` once more than `max` pieces.
pub(crate) fn disjoint(
    items: &[Item],
    top: u128,
    max: usize,
    interner: &mut Interner,
) -> Result<Vec<Piece>, TooMany> {
    let mut bounds: Vec<u128> = Vec::with_capacity(items.len() * 2);
    for it in items {
        bounds.push(it.lo);
        if let Some(next) = it.hi.checked_add(1).filter(|n| *n <= top) {
            bounds.push(next);
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut by_start: Vec<&Item> = items.iter().collect();
    by_start.sort_by_key(|it| it.lo);
    let mut by_end: Vec<&Item> = items.iter().collect();
    by_end.sort_by_key(|it| it.hi);
    let (mut s, mut e) = (0, 0);
    let mut active: BTreeMap<PortKey, BTreeMap<Reason, u32>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut run: Option<Run> = None;
    for (k, &b) in bounds.iter().enumerate() {
        while e < by_end.len() && by_end[e].hi < b {
            let it = by_end[e];
            if let Some(reasons) = active.get_mut(&it.port) {
                if let Some(n) = reasons.get_mut(&it.reason) {
                    *n -= 1;
                    if *n == 0 {
                        reasons.remove(&it.reason);
                    }
                }
                if reasons.is_empty() {
                    active.remove(&it.port);
                }
            }
            e += 1;
        }
        let added = s;
        while s < by_start.len() && by_start[s].lo == b {
            let it = by_start[s];
            *active
                .entry(it.port)
                .or_default()
                .entry(it.reason)
                .or_default() += 1;
            s += 1;
        }
        let seg_hi = bounds.get(k + 1).map_or(top, |n| n - 1);
        if active.is_empty() {
            flush(&mut run, &mut out, max, interner)?;
            continue;
        }
        let shape = shape_of(&active);
        match &mut run {
            Some(r) if r.shape == shape && r.hi.checked_add(1) == Some(b) => {
                // The run holds the reasons of every item active in it so far: add only the
                // items that start here, each to the piece its ports fall in.
                r.hi = seg_hi;
                for it in &by_start[added..s] {
                    let i = piece_of(&r.shape, &it.port);
                    if let Some(acc) = r.reasons.get_mut(i) {
                        acc.insert(it.reason);
                    }
                }
            }
            _ => {
                flush(&mut run, &mut out, max, interner)?;
                let mut reasons = vec![BTreeSet::new(); shape.len()];
                for (key, rs) in &active {
                    if let Some(acc) = reasons.get_mut(piece_of(&shape, key)) {
                        acc.extend(rs.keys().copied());
                    }
                }
                run = Some(Run {
                    lo: b,
                    hi: seg_hi,
                    shape,
                    reasons,
                });
            }
        }
    }
    flush(&mut run, &mut out, max, interner)?;
    Ok(out)
}

/// The active port ranges merged per protocol (overlapping or adjacent ranges join).
fn shape_of(active: &BTreeMap<PortKey, BTreeMap<Reason, u32>>) -> Vec<PortKey> {
    let mut shape: Vec<PortKey> = Vec::new();
    for key in active.keys() {
        match (shape.last_mut(), key) {
            (Some(Some((lp, _, lhi))), Some((p, lo, hi)))
                if lp == p && u32::from(*lo) <= u32::from(*lhi) + 1 =>
            {
                *lhi = (*lhi).max(*hi);
            }
            (Some(None), None) => {}
            _ => shape.push(*key),
        }
    }
    shape
}

/// The index of the merged range of `shape` that holds the port range `key`.
fn piece_of(shape: &[PortKey], key: &PortKey) -> usize {
    let start = |k: &PortKey| k.map(|(p, lo, _)| (p, lo));
    shape
        .partition_point(|s| start(s) <= start(key))
        .saturating_sub(1)
}

fn flush(
    run: &mut Option<Run>,
    out: &mut Vec<Piece>,
    max: usize,
    interner: &mut Interner,
) -> Result<(), TooMany> {
    let Some(r) = run.take() else {
        return Ok(());
    };
    for (port, reasons) in r.shape.into_iter().zip(r.reasons) {
        out.push(Piece {
            lo: r.lo,
            hi: r.hi,
            port,
            reasons: interner.intern(reasons.into_iter().collect()),
        });
    }
    if out.len() > max {
        return Err(TooMany);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(rule: u32) -> Reason {
        Reason {
            policy: 0,
            rule,
            peer: None,
            port: None,
        }
    }

    fn item(lo: u128, hi: u128, port: PortKey, rule: u32) -> Item {
        Item {
            lo,
            hi,
            port,
            reason: reason(rule),
        }
    }

    fn cut(items: &[Item], top: u128, max: usize) -> Result<(Vec<Piece>, Interner), TooMany> {
        let mut interner = Interner::default();
        let pieces = disjoint(items, top, max, &mut interner)?;
        Ok((pieces, interner))
    }

    fn shape(pieces: &[Piece]) -> Vec<(u128, u128, PortKey)> {
        pieces.iter().map(|p| (p.lo, p.hi, p.port)).collect()
    }

    const TCP80: PortKey = Some((Protocol::Tcp, 80, 80));

    #[test]
    fn overlapping_ranges_split_and_adjacent_equal_segments_merge() {
        let items = [
            item(0, 9, TCP80, 0),
            item(5, 19, TCP80, 1),
            item(5, 9, Some((Protocol::Tcp, 81, 90)), 2),
        ];
        let (got, sets) = cut(&items, 255, 100).unwrap();
        assert_eq!(
            shape(&got),
            [
                (0, 4, TCP80),
                (5, 9, Some((Protocol::Tcp, 80, 90))),
                (10, 19, TCP80)
            ]
        );
        assert_eq!(
            sets.sets[got[1].reasons as usize],
            [reason(0), reason(1), reason(2)]
        );
        assert_eq!(sets.sets[got[2].reasons as usize], [reason(1)]);
    }

    #[test]
    fn equal_port_sets_on_touching_ranges_become_one_element_with_both_reasons() {
        let items = [item(0, 9, None, 0), item(10, 20, None, 1)];
        let (got, sets) = cut(&items, 255, 100).unwrap();
        assert_eq!(shape(&got), [(0, 20, None)]);
        assert_eq!(sets.sets[got[0].reasons as usize], [reason(0), reason(1)]);
    }

    #[test]
    fn a_range_reaching_the_top_of_the_space_and_a_gap() {
        let items = [item(0, 1, None, 0), item(3, 255, None, 1)];
        let (got, _) = cut(&items, 255, 100).unwrap();
        assert_eq!(shape(&got), [(0, 1, None), (3, 255, None)]);
        let items = [item(0, u128::MAX, None, 0)];
        assert_eq!(
            shape(&cut(&items, u128::MAX, 1).unwrap().0),
            [(0, u128::MAX, None)]
        );
    }

    #[test]
    fn port_ranges_join_when_touching_but_not_across_a_one_port_gap() {
        let items = [
            item(0, 0, Some((Protocol::Tcp, 79, 79)), 0),
            item(0, 0, Some((Protocol::Tcp, 81, 81)), 1),
            item(1, 1, Some((Protocol::Tcp, 79, 79)), 0),
            item(1, 1, Some((Protocol::Tcp, 80, 80)), 1),
        ];
        let (got, _) = cut(&items, 255, 100).unwrap();
        assert_eq!(
            shape(&got),
            [
                (0, 0, Some((Protocol::Tcp, 79, 79))),
                (0, 0, Some((Protocol::Tcp, 81, 81))),
                (1, 1, Some((Protocol::Tcp, 79, 80))),
            ]
        );
    }

    #[test]
    fn protocols_do_not_merge_and_too_many_pieces_fail() {
        let items = [
            item(0, 0, TCP80, 0),
            item(0, 0, Some((Protocol::Udp, 80, 80)), 0),
        ];
        assert_eq!(cut(&items, 255, 2).unwrap().0.len(), 2);
        assert_eq!(cut(&items, 255, 1).err(), Some(TooMany));
    }
}
