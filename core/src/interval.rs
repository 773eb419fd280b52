//! Interval maths for address sets that hold prefixes as ranges (nf_tables interval sets):
//! which prefixes a set keeps, and the range boundaries that represent them.
//!
//! An interval set refuses overlapping ranges, so a set keeps only the outermost prefixes
//! ([`outermost`]). The kernel holds each prefix as a start boundary at its network address
//! and an end boundary at the first address after it ([`bounds`]), the way the `nft` program
//! sends them: the address space is a sequence of ranges that are in the set or not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Cidr, Family};

/// The outermost prefixes of `family` among `cidrs`, sorted, without duplicates: prefixes of
/// the other family are left out, and so is every prefix nested in another one.
pub fn outermost(cidrs: &[Cidr], family: Family) -> Vec<Cidr> {
    let mut v: Vec<Cidr> = cidrs
        .iter()
        .filter(|c| c.family() == family)
        .copied()
        .collect();
    // Sorted by network address, a container before what it holds: a prefix is nested
    // exactly when the last one kept holds it (those kept are disjoint), so one sweep does
    // (a set of every node's address is thousands of prefixes, built every pass).
    v.sort();
    let mut out: Vec<Cidr> = Vec::with_capacity(v.len());
    for c in v {
        if !out.last().is_some_and(|kept| kept.contains_cidr(&c)) {
            out.push(c);
        }
    }
    out
}

/// One boundary of an interval set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Where the range starts (a network address) or, for an end, the first address after
    /// the range.
    pub addr: IpAddr,
    /// An end boundary: the addresses from here on are not in the set.
    pub end: bool,
    /// A start whose range runs to the top of the address space (it has no end boundary).
    pub open: bool,
}

/// The boundaries of an interval set holding these prefixes (disjoint and sorted, as
/// [`outermost`] gives them, all of one family): an end at address 0 unless the first prefix
/// starts there, then for each prefix its network address and, unless it reaches the top of
/// the address space (then its start is marked open), an end at its last address + 1.
pub fn bounds(prefixes: &[Cidr]) -> Vec<Bound> {
    let mut out = Vec::with_capacity(prefixes.len() * 2 + 1);
    let Some(first) = prefixes.first() else {
        return out;
    };
    let family = first.family();
    if value(first.network()) != 0 {
        out.push(Bound {
            addr: address(family, 0),
            end: true,
            open: false,
        });
    }
    let top = top(family);
    for p in prefixes {
        let last = value(p.last());
        out.push(Bound {
            addr: p.network(),
            end: false,
            open: last == top,
        });
        if last != top {
            out.push(Bound {
                addr: address(family, last + 1),
                end: true,
                open: false,
            });
        }
    }
    out
}

fn value(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn top(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// The address of `family` with this value (callers pass values of the family's width).
fn address(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// Disjoint prefixes, each with a value, indexed by network address: whether a prefix
/// overlaps one of them costs two ordered-map lookups, not a scan (a pass vets every block of
/// the cluster against the older ones: thousands of nodes, thousands of blocks).
#[derive(Debug, Clone)]
pub struct DisjointPrefixes<T> {
    by_start: std::collections::BTreeMap<IpAddr, (Cidr, T)>,
}

impl<T> Default for DisjointPrefixes<T> {
    fn default() -> Self {
        DisjointPrefixes {
            by_start: std::collections::BTreeMap::new(),
        }
    }
}

impl<T> DisjointPrefixes<T> {
    /// The held prefix that overlaps `cidr`, if any. Two prefixes overlap only when one holds
    /// the other: either the held prefix starting at or before `cidr` holds it, or the first
    /// starting at or after `cidr`'s start lies inside it.
    pub fn overlapping(&self, cidr: &Cidr) -> Option<(&Cidr, &T)> {
        let start = cidr.network();
        let before = self.by_start.range(..=start).next_back();
        let after = self.by_start.range(start..).next();
        before
            .filter(|(_, (held, _))| held.overlaps(cidr))
            .or_else(|| after.filter(|(_, (held, _))| held.overlaps(cidr)))
            .map(|(_, (held, value))| (held, value))
    }

    /// Adds `cidr` unless it overlaps a held prefix; whether it was added.
    pub fn insert(&mut self, cidr: Cidr, value: T) -> bool {
        if self.overlapping(&cidr).is_some() {
            return false;
        }
        self.by_start.insert(cidr.network(), (cidr, value));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Prefixes crowded into 10.0.0.0/16 (and a few IPv6), so that many overlap.
    fn crowded() -> impl Strategy<Value = Cidr> {
        prop_oneof![
            4 => (any::<u16>(), 16u8..=30).prop_map(|(low, p)| Cidr::new_truncating(
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 | u32::from(low))),
                p
            )
            .unwrap()),
            1 => (any::<u8>(), 112u8..=128).prop_map(|(low, p)| Cidr::new_truncating(
                IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(low))),
                p
            )
            .unwrap()),
        ]
    }

    proptest! {
        /// The index answers what a scan of every held prefix answers.
        #[test]
        fn disjoint_prefixes_find_what_a_scan_finds(
            inserted in proptest::collection::vec(crowded(), 0..60),
            probes in proptest::collection::vec(crowded(), 1..30),
        ) {
            let mut index = DisjointPrefixes::default();
            let mut held: Vec<Cidr> = Vec::new();
            for c in inserted {
                let scan = held.iter().any(|h| h.overlaps(&c));
                prop_assert_eq!(index.insert(c, ()), !scan);
                if !scan {
                    held.push(c);
                }
            }
            for p in probes {
                let found = index.overlapping(&p).map(|(c, _)| *c);
                prop_assert_eq!(found.is_some(), held.iter().any(|h| h.overlaps(&p)));
                if let Some(c) = found {
                    prop_assert!(c.overlaps(&p) && held.contains(&c));
                }
            }
        }
    }

    proptest! {
        /// The sweep keeps exactly the prefixes of the family that no other one holds.
        #[test]
        fn outermost_keeps_what_no_other_prefix_holds(
            cidrs in proptest::collection::vec(crowded(), 0..80),
        ) {
            for family in [Family::V4, Family::V6] {
                let mut expected: Vec<Cidr> = cidrs
                    .iter()
                    .filter(|c| c.family() == family)
                    .filter(|c| !cidrs.iter().any(|o| o != *c && o.contains_cidr(c)))
                    .copied()
                    .collect();
                expected.sort();
                expected.dedup();
                prop_assert_eq!(outermost(&cidrs, family), expected);
            }
        }
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn start(addr: &str, open: bool) -> Bound {
        Bound {
            addr: addr.parse().unwrap(),
            end: false,
            open,
        }
    }

    fn end(addr: &str) -> Bound {
        Bound {
            addr: addr.parse().unwrap(),
            end: true,
            open: false,
        }
    }

    #[test]
    fn sets_keep_outermost_prefixes_of_their_family() {
        let all = [
            cidr("10.1.0.0/16"),
            cidr("fd00::/56"),
            cidr("10.0.0.0/8"),
            cidr("10.0.0.0/8"),
            cidr("192.168.0.0/24"),
            cidr("10.0.0.0/9"),
        ];
        assert_eq!(
            outermost(&all, Family::V4),
            vec![cidr("10.0.0.0/8"), cidr("192.168.0.0/24")]
        );
        assert_eq!(outermost(&all, Family::V6), vec![cidr("fd00::/56")]);
        assert_eq!(outermost(&[], Family::V4), vec![]);
    }

    #[test]
    fn interval_ends_are_last_address_plus_one() {
        assert_eq!(bounds(&[]), vec![]);
        assert_eq!(
            bounds(&[cidr("10.244.0.0/16"), cidr("10.245.0.0/16")]),
            vec![
                end("0.0.0.0"),
                start("10.244.0.0", false),
                end("10.245.0.0"),
                start("10.245.0.0", false),
                end("10.246.0.0"),
            ]
        );
        // a host: the end is the next address; carries into the next octet
        assert_eq!(
            bounds(&[cidr("10.99.0.255/32")]),
            vec![
                end("0.0.0.0"),
                start("10.99.0.255", false),
                end("10.99.1.0"),
            ]
        );
        // starting at address 0: no leading end
        assert_eq!(
            bounds(&[cidr("0.0.0.0/8")]),
            vec![start("0.0.0.0", false), end("1.0.0.0")]
        );
        // /0: one open start, nothing else
        assert_eq!(bounds(&[cidr("0.0.0.0/0")]), vec![start("0.0.0.0", true)]);
        assert_eq!(bounds(&[cidr("::/0")]), vec![start("::", true)]);
        // the top of the address space has no end
        assert_eq!(
            bounds(&[cidr("10.0.0.0/8"), cidr("255.255.255.255/32")]),
            vec![
                end("0.0.0.0"),
                start("10.0.0.0", false),
                end("11.0.0.0"),
                start("255.255.255.255", true),
            ]
        );
        // fd00::/56 ends before fd00:0:0:100::
        assert_eq!(
            bounds(&[cidr("fd00::/56"), cidr("ffff::/16")]),
            vec![
                end("::"),
                start("fd00::", false),
                end("fd00:0:0:100::"),
                start("ffff::", true),
            ]
        );
    }
}
