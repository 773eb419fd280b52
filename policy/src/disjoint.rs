//! Cutting overlapping rule items into the disjoint elements an interval set accepts: the
//! address space is split at every item boundary, each segment gets the union of the port
//! ranges active on it (merged per protocol), and adjacent segments with equal port sets are
//! merged. Each resulting piece keeps the reasons of every item that overlaps it.
//!
//! Cost: sorting the boundaries, then per segment the active port ranges and reasons, so
//! O(n log n) for items that rarely overlap (ipBlocks with excepts, pod addresses) and
//! O(segments x overlapping items) at worst.

use std::collections::{BTreeMap, BTreeSet};

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

/// One disjoint output element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub lo: u128,
    pub hi: u128,
    pub port: PortKey,
    pub reasons: Vec<Reason>,
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
pub(crate) fn disjoint(items: &[Item], top: u128, max: usize) -> Result<Vec<Piece>, TooMany> {
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
            flush(&mut run, &mut out, max)?;
            continue;
        }
        let (shape, reasons) = port_set(&active);
        match &mut run {
            Some(r) if r.shape == shape && r.hi.checked_add(1) == Some(b) => {
                r.hi = seg_hi;
                for (acc, add) in r.reasons.iter_mut().zip(reasons) {
                    acc.extend(add);
                }
            }
            _ => {
                flush(&mut run, &mut out, max)?;
                run = Some(Run {
                    lo: b,
                    hi: seg_hi,
                    shape,
                    reasons,
                });
            }
        }
    }
    flush(&mut run, &mut out, max)?;
    Ok(out)
}

/// The active port ranges merged per protocol (overlapping or adjacent ranges join), and the
/// reasons of each merged range.
fn port_set(
    active: &BTreeMap<PortKey, BTreeMap<Reason, u32>>,
) -> (Vec<PortKey>, Vec<BTreeSet<Reason>>) {
    let mut shape: Vec<PortKey> = Vec::new();
    let mut reasons: Vec<BTreeSet<Reason>> = Vec::new();
    for (key, rs) in active {
        let joined = match (shape.last_mut(), key) {
            (Some(Some((lp, _, lhi))), Some((p, lo, hi)))
                if lp == p && u32::from(*lo) <= u32::from(*lhi) + 1 =>
            {
                *lhi = (*lhi).max(*hi);
                true
            }
            (Some(None), None) => true,
            _ => false,
        };
        if !joined {
            shape.push(*key);
            reasons.push(BTreeSet::new());
        }
        if let Some(acc) = reasons.last_mut() {
            acc.extend(rs.keys().copied());
        }
    }
    (shape, reasons)
}

fn flush(run: &mut Option<Run>, out: &mut Vec<Piece>, max: usize) -> Result<(), TooMany> {
    let Some(r) = run.take() else {
        return Ok(());
    };
    for (port, reasons) in r.shape.into_iter().zip(r.reasons) {
        out.push(Piece {
            lo: r.lo,
            hi: r.hi,
            port,
            reasons: reasons.into_iter().collect(),
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
        let got = disjoint(&items, 255, 100).unwrap();
        assert_eq!(
            shape(&got),
            [
                (0, 4, TCP80),
                (5, 9, Some((Protocol::Tcp, 80, 90))),
                (10, 19, TCP80)
            ]
        );
        assert_eq!(got[1].reasons, [reason(0), reason(1), reason(2)]);
        assert_eq!(got[2].reasons, [reason(1)]);
    }

    #[test]
    fn equal_port_sets_on_touching_ranges_become_one_element_with_both_reasons() {
        let items = [item(0, 9, None, 0), item(10, 20, None, 1)];
        let got = disjoint(&items, 255, 100).unwrap();
        assert_eq!(shape(&got), [(0, 20, None)]);
        assert_eq!(got[0].reasons, [reason(0), reason(1)]);
    }

    #[test]
    fn a_range_reaching_the_top_of_the_space_and_a_gap() {
        let items = [item(0, 1, None, 0), item(3, 255, None, 1)];
        let got = disjoint(&items, 255, 100).unwrap();
        assert_eq!(shape(&got), [(0, 1, None), (3, 255, None)]);
        let items = [item(0, u128::MAX, None, 0)];
        assert_eq!(
            shape(&disjoint(&items, u128::MAX, 1).unwrap()),
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
        let got = disjoint(&items, 255, 100).unwrap();
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
        assert_eq!(disjoint(&items, 255, 2).unwrap().len(), 2);
        assert_eq!(disjoint(&items, 255, 1), Err(TooMany));
    }
}
