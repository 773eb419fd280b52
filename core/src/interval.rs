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
    v.sort();
    v.dedup();
    v.iter()
        .filter(|c| !v.iter().any(|o| o != *c && o.contains_cidr(c)))
        .copied()
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

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
