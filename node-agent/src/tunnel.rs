//! The node's own address on its VXLAN device, one per family, and what the device's
//! addresses need to become it (pure).
//!
//! Without one, a node's packets to a remote pod over VXLAN leave with the node's underlay
//! address, and the pod's reply goes back over the underlay with a pod source address: a
//! cloud VPC's source/destination check and strict reverse-path filtering (RHEL's default)
//! drop it, so webhooks, metrics scraping, NodePort and probes across nodes fail exactly
//! where VXLAN mode is used. With an address from one of the node's blocks on the device, the
//! kernel picks it as the source of traffic into the tunnel, and the reply, addressed to a
//! pod-network address, comes back through the tunnel. Flannel and Calico do the same.
//!
//! Which address: the first free one of the node's lowest block, among the blocks of usable
//! pools whose mode sends the most traffic through the tunnel (`VXLAN`, then `Auto`, then
//! `Routed`), so that peers route replies to it through the tunnel too. An address that is
//! still a good choice is kept (a moving address breaks the node's open connections). It is
//! chosen under the IPAM store's lock ([`IpamState::tunnel`]), so no ADD can take it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use sinew_crds::{Cidr, Family, PoolMode};
use sinew_node_lib::ipam::IpamState;

/// One block of this node the tunnel address may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub block: Cidr,
    pub pool_cidr: Cidr,
    pub mode: PoolMode,
    /// The pool's `reserved` addresses and ranges.
    pub reserved: Vec<Cidr>,
}

fn rank(mode: PoolMode) -> u8 {
    match mode {
        PoolMode::Vxlan => 0,
        PoolMode::Auto => 1,
        PoolMode::Routed => 2,
    }
}

fn usable(state: &IpamState, c: &Candidate, ip: IpAddr) -> bool {
    c.block.contains(ip)
        && state.free_for_node(&c.pool_cidr, ip)
        && !c.reserved.iter().any(|r| r.contains(ip))
}

/// The tunnel address of `family`: the current one while it is still among the best
/// candidates, else the first usable address of the best lowest block; `None` without a
/// candidate block.
fn choose(state: &IpamState, family: Family, candidates: &[Candidate]) -> Option<IpAddr> {
    let mut best: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.block.family() == family && !state.retired.contains(&c.block.to_string()))
        .collect();
    let top = best.iter().map(|c| rank(c.mode)).min()?;
    best.retain(|c| rank(c.mode) == top);
    best.sort_by_key(|c| c.block);
    let current = state
        .tunnel
        .iter()
        .copied()
        .find(|ip| Family::of(*ip) == family);
    if let Some(ip) = current
        && best.iter().any(|c| usable(state, c, ip))
    {
        return Some(ip);
    }
    best.iter().find_map(|c| {
        let size = c.block.size().min(1 << 16);
        (0..size)
            .filter_map(|i| c.block.nth(i))
            .find(|ip| usable(state, c, *ip))
    })
}

/// Sets the store's tunnel addresses for these candidate blocks; returns them.
pub fn update(state: &mut IpamState, candidates: &[Candidate]) -> BTreeSet<IpAddr> {
    state.tunnel = [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| choose(state, f, candidates))
        .collect();
    state.tunnel.clone()
}

/// An address on a device, with its prefix length.
pub type DeviceAddress = (IpAddr, u8);

/// What the device's addresses (`have`, with their prefixes) need to become `wanted`: the
/// addresses to remove (any other sinew put there before: a moved or dropped choice) and the
/// host addresses to add. The device's own addresses stay: the IPv4 anchor the VXLAN device
/// is created with and IPv6 link-local ones.
pub fn device_changes(
    have: &[DeviceAddress],
    wanted: &BTreeSet<IpAddr>,
) -> (Vec<DeviceAddress>, Vec<DeviceAddress>) {
    let own = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => *a == sinew_node_lib::consts::VXLAN_ANCHOR_V4,
        IpAddr::V6(a) => a.is_unicast_link_local(),
    };
    let remove = have
        .iter()
        .filter(|(ip, _)| !own(ip) && !wanted.contains(ip))
        .copied()
        .collect();
    let add = wanted
        .iter()
        .map(|ip| (*ip, if ip.is_ipv4() { 32 } else { 128 }))
        .filter(|a| !have.contains(a))
        .collect();
    (remove, add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_node_lib::ipam::Slot;

    fn cand(block: &str, pool: &str, mode: PoolMode) -> Candidate {
        Candidate {
            block: block.parse().unwrap(),
            pool_cidr: pool.parse().unwrap(),
            mode,
            reserved: Vec::new(),
        }
    }

    fn held(state: &mut IpamState, ip: &str) {
        state.slots.insert(
            ip.parse().unwrap(),
            Slot {
                generation: 1,
                holder: Some("c/eth0".into()),
            },
        );
    }

    fn ips(set: &BTreeSet<IpAddr>) -> Vec<String> {
        set.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn first_free_address_of_the_lowest_block_per_family() {
        let mut s = IpamState::default();
        let c = [
            cand("10.244.1.64/26", "10.244.0.0/16", PoolMode::Vxlan),
            cand("10.244.0.0/26", "10.244.0.0/16", PoolMode::Vxlan),
            cand("fd00::40/122", "fd00::/64", PoolMode::Vxlan),
        ];
        // 10.244.0.0 is the pool's network address; .1 is held by a pod.
        held(&mut s, "10.244.0.1");
        assert_eq!(ips(&update(&mut s, &c)), ["10.244.0.2", "fd00::40"]);
    }

    #[test]
    fn a_good_address_is_kept_when_a_lower_block_arrives() {
        let mut s = IpamState::default();
        update(
            &mut s,
            &[cand("10.244.1.64/26", "10.244.0.0/16", PoolMode::Auto)],
        );
        let c = [
            cand("10.244.1.64/26", "10.244.0.0/16", PoolMode::Auto),
            cand("10.244.0.0/26", "10.244.0.0/16", PoolMode::Auto),
        ];
        assert_eq!(ips(&update(&mut s, &c)), ["10.244.1.64"]);
    }

    #[test]
    fn tunnel_pools_win_and_the_address_moves_off_a_lost_retired_or_routed_block() {
        let mut s = IpamState::default();
        let routed = cand("10.1.0.0/26", "10.1.0.0/16", PoolMode::Routed);
        let vxlan = cand("10.2.0.64/26", "10.2.0.0/16", PoolMode::Vxlan);
        assert_eq!(
            ips(&update(&mut s, std::slice::from_ref(&routed))),
            ["10.1.0.1"]
        );
        assert_eq!(
            ips(&update(&mut s, &[routed.clone(), vxlan.clone()])),
            ["10.2.0.64"],
            "a VXLAN pool's block is preferred"
        );
        s.retired.insert("10.2.0.64/26".into());
        assert_eq!(ips(&update(&mut s, &[routed.clone(), vxlan])), ["10.1.0.1"]);
        assert!(update(&mut s, &[]).is_empty(), "no block, no address");
    }

    #[test]
    fn reserved_addresses_and_full_blocks_are_skipped() {
        let mut s = IpamState::default();
        let mut c = cand("10.0.0.4/30", "10.0.0.0/16", PoolMode::Vxlan);
        c.reserved = vec!["10.0.0.4/31".parse().unwrap()];
        held(&mut s, "10.0.0.6");
        assert_eq!(ips(&update(&mut s, std::slice::from_ref(&c))), ["10.0.0.7"]);
        held(&mut s, "10.0.0.7");
        s.tunnel.clear();
        assert!(update(&mut s, &[c]).is_empty());
    }

    #[test]
    fn the_device_keeps_its_own_addresses_and_takes_only_the_chosen_ones() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let anchor = IpAddr::V4(sinew_node_lib::consts::VXLAN_ANCHOR_V4);
        let have = [
            (anchor, 32),
            (ip("fe80::1"), 64),
            (ip("10.244.0.1"), 32),
            (ip("10.244.0.9"), 32),
            (ip("fd00::1"), 128),
        ];
        let wanted = BTreeSet::from([ip("10.244.0.1"), ip("fd00::2")]);
        let (remove, add) = device_changes(&have, &wanted);
        assert_eq!(remove, [(ip("10.244.0.9"), 32), (ip("fd00::1"), 128)]);
        assert_eq!(add, [(ip("fd00::2"), 128)]);
        // The chosen address with another prefix (written by someone else) is written again.
        let (remove, add) = device_changes(&[(ip("10.244.0.1"), 24)], &wanted);
        assert_eq!(remove, []);
        assert_eq!(add, [(ip("10.244.0.1"), 32), (ip("fd00::2"), 128)]);
        // Nothing chosen (no peers): every address sinew put there goes, the own ones stay.
        let (remove, add) = device_changes(&have, &BTreeSet::new());
        assert_eq!(remove.len(), 3);
        assert!(add.is_empty());
    }
}
