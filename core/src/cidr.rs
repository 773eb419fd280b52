//! Typed IP prefixes for both families: parsing, containment, overlap, block iteration.
//!
//! Everything is done on `u128` so IPv4 and IPv6 share one code path; an IPv4 prefix simply
//! has a 32-bit address space.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Address family of a prefix or address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Number of bits in an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The block prefix length a pool of this family uses when `blockSize` is not set.
    pub fn default_block_size(self) -> u8 {
        match self {
            Family::V4 => 26,
            Family::V6 => 122,
        }
    }

    /// Smallest and largest allowed block prefix length for this family.
    pub fn block_size_bounds(self) -> (u8, u8) {
        match self {
            Family::V4 => (20, 32),
            Family::V6 => (116, 128),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why a string is not a usable prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not in address/prefix form (e.g. 10.244.0.0/16)")]
    MissingPrefix(String),
    #[error("{0:?} is not a valid IP address")]
    BadAddress(String),
    #[error("prefix length {len} is out of range for {family} (0-{max})")]
    BadPrefixLength {
        len: String,
        family: Family,
        max: u8,
    },
    #[error("{given} has host bits set; the network address is {canonical}")]
    HostBitsSet { given: String, canonical: Cidr },
}

/// An IP network: an address with all host bits zero and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    family: Family,
    network: u128,
    prefix: u8,
}

fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn u128_to_addr(family: Family, value: u128) -> IpAddr {
    match family {
        // An IPv4 value never exceeds 32 bits: every constructor masks to the family width.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// All ones across a `bits`-wide address space.
fn width_mask(bits: u8) -> u128 {
    u128::MAX >> (128 - u32::from(bits))
}

/// Mask selecting the network bits of a `prefix`-long prefix in a `bits`-wide space.
fn net_mask(bits: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(bits - prefix);
    width_mask(bits) & u128::MAX.checked_shl(host_bits).unwrap_or(0)
}

impl Cidr {
    /// Builds a prefix from an address, masking off host bits.
    pub fn new_truncating(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let family = Family::of(addr);
        if prefix > family.bits() {
            return Err(CidrError::BadPrefixLength {
                len: prefix.to_string(),
                family,
                max: family.bits(),
            });
        }
        Ok(Cidr {
            family,
            network: addr_to_u128(addr) & net_mask(family.bits(), prefix),
            prefix,
        })
    }

    /// The single-address prefix (/32 or /128) of `addr`.
    /// `fe80::/10`: IPv6 link-local addresses (neighbour discovery speaks from them).
    pub fn link_local_v6() -> Self {
        Cidr {
            family: Family::V6,
            network: 0xfe80_u128 << 112,
            prefix: 10,
        }
    }

    pub fn host(addr: IpAddr) -> Self {
        let family = Family::of(addr);
        Cidr {
            family,
            network: addr_to_u128(addr),
            prefix: family.bits(),
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> IpAddr {
        u128_to_addr(self.family, self.network)
    }

    /// Number of addresses in the prefix, saturating at `u128::MAX` for `::/0`.
    pub fn size(&self) -> u128 {
        let host_bits = u32::from(self.family.bits() - self.prefix);
        1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
    }

    fn last_value(&self) -> u128 {
        self.network | (width_mask(self.family.bits()) & !net_mask(self.family.bits(), self.prefix))
    }

    /// The last address of the prefix.
    pub fn last(&self) -> IpAddr {
        u128_to_addr(self.family, self.last_value())
    }

    /// The `index`-th address of the prefix, if the prefix is that large.
    pub fn nth(&self, index: u128) -> Option<IpAddr> {
        (index < self.size()).then(|| u128_to_addr(self.family, self.network + index))
    }

    /// Offset of `addr` from the start of the prefix, if `addr` is inside it.
    pub fn offset_of(&self, addr: IpAddr) -> Option<u128> {
        self.contains(addr)
            .then(|| addr_to_u128(addr) - self.network)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family
            && addr_to_u128(addr) & net_mask(self.family.bits(), self.prefix) == self.network
    }

    /// Whether `other` lies entirely within this prefix.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.family == self.family
            && other.prefix >= self.prefix
            && other.network & net_mask(self.family.bits(), self.prefix) == self.network
    }

    /// Whether the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// Number of `block_prefix`-long blocks tiling this prefix: 0 when `block_prefix` is
    /// shorter than this prefix or longer than the family allows; saturates at `u128::MAX`
    /// (only `::/0` cut into /128s has more).
    pub fn block_count(&self, block_prefix: u8) -> u128 {
        if block_prefix < self.prefix || block_prefix > self.family.bits() {
            return 0;
        }
        1u128
            .checked_shl(u32::from(block_prefix - self.prefix))
            .unwrap_or(u128::MAX)
    }

    /// The `index`-th `block_prefix`-long block of this prefix in address order, computed
    /// directly (constant time at any size, so a /48 cut into /122s costs what a /16 does).
    pub fn block(&self, block_prefix: u8, index: u128) -> Option<Cidr> {
        if index >= self.block_count(block_prefix) {
            return None;
        }
        let host_bits = u32::from(self.family.bits() - block_prefix);
        // index < 2^(block_prefix - prefix), so the shifted offset stays inside this prefix.
        let offset = index.checked_shl(host_bits).unwrap_or(0);
        Some(Cidr {
            family: self.family,
            network: self.network | offset,
            prefix: block_prefix,
        })
    }

    /// The index of `block` among this prefix's blocks of its length, if it is one of them.
    pub fn block_index(&self, block: &Cidr) -> Option<u128> {
        if !self.contains_cidr(block) {
            return None;
        }
        let host_bits = u32::from(self.family.bits() - block.prefix);
        Some(
            (block.network - self.network)
                .checked_shr(host_bits)
                .unwrap_or(0),
        )
    }

    /// The sub-prefixes of length `block_prefix` that tile this prefix, in address order.
    /// Empty when `block_prefix` is shorter than this prefix or longer than the family allows.
    pub fn blocks(&self, block_prefix: u8) -> Blocks {
        Blocks {
            parent: *self,
            block_prefix,
            next: 0,
            count: self.block_count(block_prefix),
        }
    }

    /// A name for this prefix that is a valid Kubernetes object name and maps back to exactly
    /// one prefix: `10-244-1-0-26`, or for IPv6 the eight fully written groups
    /// (`fd00-0000-…-0040-122`).
    pub fn object_name(&self) -> String {
        let mut name = String::with_capacity(44);
        // Writing to a String cannot fail.
        let _ = self.write_object_name(&mut name);
        name
    }

    /// Whether `name` is this prefix's [`object_name`](Cidr::object_name), compared as it
    /// is written, without building it (a pass checks every block's name).
    pub fn is_object_name(&self, name: &str) -> bool {
        /// Takes what is written off the front of `rest`; fails at the first difference.
        struct Prefix<'a>(&'a str);
        impl fmt::Write for Prefix<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.0 = self.0.strip_prefix(s).ok_or(fmt::Error)?;
                Ok(())
            }
        }
        let mut rest = Prefix(name);
        self.write_object_name(&mut rest).is_ok() && rest.0.is_empty()
    }

    fn write_object_name(&self, out: &mut impl fmt::Write) -> fmt::Result {
        match self.network() {
            IpAddr::V4(a) => {
                let o = a.octets();
                write!(out, "{}-{}-{}-{}-{}", o[0], o[1], o[2], o[3], self.prefix)
            }
            IpAddr::V6(a) => {
                for g in a.segments() {
                    write!(out, "{g:04x}-")?;
                }
                write!(out, "{}", self.prefix)
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `address/prefix` and insists on the network address (no host bits set), the
    /// same rule the CRD schema applies.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::MissingPrefix(s.to_string()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(addr.to_string()))?;
        let family = Family::of(addr);
        let bad_len = || CidrError::BadPrefixLength {
            len: len.to_string(),
            family,
            max: family.bits(),
        };
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_len());
        }
        let prefix: u8 = len.parse().map_err(|_| bad_len())?;
        let cidr = Cidr::new_truncating(addr, prefix)?;
        if cidr.network != addr_to_u128(addr) {
            return Err(CidrError::HostBitsSet {
                given: s.to_string(),
                canonical: cidr,
            });
        }
        Ok(cidr)
    }
}

/// Iterator over the equal-sized blocks of a prefix.
#[derive(Debug, Clone)]
pub struct Blocks {
    parent: Cidr,
    block_prefix: u8,
    next: u128,
    count: u128,
}

impl Iterator for Blocks {
    type Item = Cidr;

    fn next(&mut self) -> Option<Cidr> {
        if self.next >= self.count {
            return None;
        }
        let block = self.parent.block(self.block_prefix, self.next);
        self.next += 1;
        block
    }

    /// Skips by arithmetic, not by stepping: `nth` on a /48 of /122 blocks is constant time.
    fn nth(&mut self, n: usize) -> Option<Cidr> {
        self.next = self.next.saturating_add(n as u128);
        self.next()
    }
}

/// Parses one entry of a pool's `reserved` list: a single address or a prefix.
pub fn parse_ip_or_cidr(s: &str) -> Result<Cidr, CidrError> {
    if s.contains('/') {
        s.parse()
    } else {
        s.parse::<IpAddr>()
            .map(Cidr::host)
            .map_err(|_| CidrError::BadAddress(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_both_families() {
        assert_eq!(c("10.244.0.0/16").to_string(), "10.244.0.0/16");
        assert_eq!(c("fd00:10::/64").to_string(), "fd00:10::/64");
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(c("::/0").size(), u128::MAX);
        assert_eq!(c("10.0.0.1/32").size(), 1);
    }

    #[test]
    fn rejects_malformed_prefixes_with_specific_errors() {
        assert!(matches!(
            "10.0.0.0".parse::<Cidr>(),
            Err(CidrError::MissingPrefix(_))
        ));
        assert!(matches!(
            "10.0.0.256/24".parse::<Cidr>(),
            Err(CidrError::BadAddress(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::BadPrefixLength { .. })
        ));
        assert!(matches!(
            "fd00::/129".parse::<Cidr>(),
            Err(CidrError::BadPrefixLength { .. })
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<Cidr>(),
            Err(CidrError::BadPrefixLength { .. })
        ));
        let err = "10.0.0.1/24".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.0.0.1/24 has host bits set; the network address is 10.0.0.0/24"
        );
    }

    #[test]
    fn last_address_and_nth() {
        assert_eq!(c("10.244.1.0/26").last().to_string(), "10.244.1.63");
        assert_eq!(c("fd00::/122").last().to_string(), "fd00::3f");
        assert_eq!(c("10.244.1.0/26").nth(5).unwrap().to_string(), "10.244.1.5");
        assert_eq!(c("10.244.1.0/26").nth(64), None);
        assert_eq!(c("0.0.0.0/0").last().to_string(), "255.255.255.255");
        assert_eq!(
            c("::/0").last().to_string(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }

    #[test]
    fn blocks_tile_the_pool() {
        let blocks: Vec<_> = c("10.244.0.0/24")
            .blocks(26)
            .map(|b| b.to_string())
            .collect();
        assert_eq!(
            blocks,
            [
                "10.244.0.0/26",
                "10.244.0.64/26",
                "10.244.0.128/26",
                "10.244.0.192/26"
            ]
        );
        assert_eq!(c("10.244.0.0/24").blocks(23).count(), 0);
        assert_eq!(c("fd00::/120").blocks(122).count(), 4);
    }

    #[test]
    fn realistic_ipv6_pools_index_blocks_in_constant_time() {
        // A /48 cut into /122s has 2^74 blocks: stepping to a hashed index would never end.
        let pool = c("fd00:10:20::/48");
        assert_eq!(pool.block_count(122), 1u128 << 74);
        let last = pool.block(122, (1u128 << 74) - 1).unwrap();
        assert_eq!(last.to_string(), "fd00:10:20:ffff:ffff:ffff:ffff:ffc0/122");
        assert_eq!(
            pool.blocks(122).nth(usize::MAX).unwrap().to_string(),
            pool.block(122, usize::MAX as u128).unwrap().to_string()
        );
        let pool = c("fd00:10:20::/56");
        assert_eq!(
            pool.block(122, 0x1_0000_0001).unwrap().to_string(),
            "fd00:10:20::40:0:40/122"
        );
        assert_eq!(
            c("10.0.0.0/8").block(26, 1).unwrap().to_string(),
            "10.0.0.64/26"
        );
        assert_eq!(c("10.0.0.0/8").block(26, 1 << 18), None);
    }

    #[test]
    fn object_names_are_valid_and_distinct() {
        assert_eq!(c("10.244.1.64/26").object_name(), "10-244-1-64-26");
        assert_eq!(
            c("fd00::40/122").object_name(),
            "fd00-0000-0000-0000-0000-0000-0000-0040-122"
        );
        let block = c("10.244.1.64/26");
        assert!(block.is_object_name("10-244-1-64-26"));
        for other in [
            "10-244-1-64-2",
            "10-244-1-64-260",
            "10-244-1-64",
            "",
            "10-244-1-64-26-",
        ] {
            assert!(!block.is_object_name(other), "{other}");
        }
    }

    #[test]
    fn reserved_entries_accept_addresses_and_prefixes() {
        assert_eq!(
            parse_ip_or_cidr("10.0.0.7").unwrap().to_string(),
            "10.0.0.7/32"
        );
        assert_eq!(parse_ip_or_cidr("10.0.0.0/30").unwrap().size(), 4);
        assert!(parse_ip_or_cidr("ten").is_err());
    }

    fn any_cidr() -> impl Strategy<Value = Cidr> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Cidr::new_truncating(
                IpAddr::V4(a.into()),
                p
            )
            .unwrap()),
            (any::<u128>(), 0u8..=128).prop_map(|(a, p)| Cidr::new_truncating(
                IpAddr::V6(a.into()),
                p
            )
            .unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(cidr in any_cidr()) {
            prop_assert_eq!(cidr.to_string().parse::<Cidr>().unwrap(), cidr);
        }

        #[test]
        fn network_and_last_are_contained(cidr in any_cidr()) {
            prop_assert!(cidr.contains(cidr.network()));
            prop_assert!(cidr.contains(cidr.last()));
            prop_assert_eq!(cidr.offset_of(cidr.network()), Some(0));
        }

        #[test]
        fn overlap_is_symmetric_and_matches_containment(a in any_cidr(), b in any_cidr()) {
            prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
            let shares_an_endpoint = a.contains(b.network()) || b.contains(a.network());
            prop_assert_eq!(a.overlaps(&b), shares_an_endpoint);
        }

        #[test]
        fn blocks_are_disjoint_contiguous_and_inside(
            pool in (any::<u32>(), 16u8..=28).prop_map(|(a, p)| Cidr::new_truncating(IpAddr::V4(a.into()), p).unwrap()),
            extra in 0u8..=4,
        ) {
            let block_prefix = pool.prefix_len() + extra;
            let blocks: Vec<Cidr> = pool.blocks(block_prefix).collect();
            prop_assert_eq!(blocks.len() as u128, 1u128 << extra);
            let mut expected_start = pool.network();
            for b in &blocks {
                prop_assert!(pool.contains_cidr(b));
                prop_assert_eq!(b.network(), expected_start);
                let next = addr_to_u128(b.last()) + 1;
                expected_start = u128_to_addr(Family::V4, next);
            }
            prop_assert_eq!(blocks.last().unwrap().last(), pool.last());
        }

        #[test]
        fn v6_blocks_stay_inside(addr in any::<u128>(), p in 100u8..=124, extra in 0u8..=4) {
            let pool = Cidr::new_truncating(IpAddr::V6(addr.into()), p).unwrap();
            for b in pool.blocks(p + extra) {
                prop_assert!(pool.contains_cidr(&b));
                prop_assert!(!b.overlaps(&Cidr::new_truncating(pool.last(), 128).unwrap()) || b.contains(pool.last()));
            }
        }

        /// Every prefix length of both families, cut into every legal block length: the
        /// directly computed block is the one stepping would reach, lies inside the pool,
        /// follows its predecessor without a gap and maps back to its index.
        #[test]
        fn block_indexing_is_arithmetic_for_every_prefix(
            addr in any::<u128>(),
            v6 in any::<bool>(),
            prefix in 0u8..=128,
            extra in 0u8..=128,
            pick in any::<u128>(),
        ) {
            let (ip, bits) = if v6 {
                (IpAddr::V6(addr.into()), 128u8)
            } else {
                (IpAddr::V4((addr as u32).into()), 32u8)
            };
            let prefix = prefix % (bits + 1);
            let block_prefix = prefix + extra % (bits - prefix + 1);
            let pool = Cidr::new_truncating(ip, prefix).unwrap();
            let count = pool.block_count(block_prefix);
            let expected = 1u128.checked_shl(u32::from(block_prefix - prefix)).unwrap_or(u128::MAX);
            prop_assert_eq!(count, expected);
            let index = pick % count;
            let block = pool.block(block_prefix, index).unwrap();
            prop_assert_eq!(block.prefix_len(), block_prefix);
            prop_assert!(pool.contains_cidr(&block));
            prop_assert_eq!(pool.block_index(&block), Some(index));
            prop_assert_eq!(pool.blocks(block_prefix).nth(usize::try_from(index).unwrap_or(usize::MAX)).is_some(), true);
            if index > 0 {
                let before = pool.block(block_prefix, index - 1).unwrap();
                prop_assert_eq!(addr_to_u128(before.last()) + 1, block.network);
            }
            if index == count - 1 && count != u128::MAX {
                prop_assert_eq!(block.last(), pool.last());
            }
            prop_assert_eq!(pool.block(block_prefix, count), None::<Cidr>);
        }

        #[test]
        fn object_names_are_injective(a in any_cidr(), b in any_cidr()) {
            prop_assert_eq!(a.object_name() == b.object_name(), a == b);
            prop_assert!(a.is_object_name(&a.object_name()));
            prop_assert_eq!(a.is_object_name(&b.object_name()), a == b);
        }
    }
}
