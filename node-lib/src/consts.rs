//! Names and numbers that the plugin, the agent, the operator's clean-up and the tests must
//! agree on, defined once.

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Route protocol of the per-pod host routes the plugin installs (`proto 115` in `ip route`).
pub const POD_ROUTE_PROTOCOL: u8 = 115;
/// Route protocol of the peer-block routes the agent installs (`proto 116`).
pub const PEER_ROUTE_PROTOCOL: u8 = 116;
/// Prefix of the host end of every pod veth (`snw` + a hash of container id and ifname).
pub const HOST_VETH_PREFIX: &str = "snw";

/// FNV-1a, 64 bit: a hash that is stable across releases and platforms (names derived from
/// it must not change when sinew is upgraded).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Host-side veth name: [`HOST_VETH_PREFIX`] + 12 hex digits of a hash of container ID and
/// interface, so the same attachment always maps to the same name (DEL works even without a
/// record, and `kubectl sinew trace` can name it).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a(container_id.bytes().chain([b'/']).chain(ifname.bytes()));
    format!("{HOST_VETH_PREFIX}{:012x}", h >> 16)
}

/// The MAC of a node's VXLAN device, derived from the node's name alone: every peer computes
/// it itself, so no node can make its peers send another node's traffic to it by publishing
/// that node's MAC, and nodes cloned from one machine image (one machine-id, which is where
/// udev's persistent MACs come from) still get distinct ones. Locally administered unicast,
/// 46 bits of hash: among 5,000 nodes the chance of any two sharing one is about 2e-7, and a
/// clash is detected and reported rather than programmed.
pub fn vtep_mac(node: &str) -> [u8; 6] {
    let h = fnv1a(b"sinew-vtep/".iter().copied().chain(node.bytes())).to_be_bytes();
    [
        (h[0] & 0xfc) | 0x02,
        h[1],
        h[2],
        h[3],
        h[4],
        h[5] ^ h[6] ^ h[7],
    ]
}

/// The node's VXLAN device.
pub const VXLAN_DEVICE: &str = "sinew.vxlan";

/// A `scope host` address on the VXLAN device (IPv4 underlays), the same on every node and
/// never a source: without any IPv4 address on a device the kernel's reverse-path filter,
/// even loose, drops whatever arrives on it from a source routed elsewhere, which is what
/// the probe mesh's echoes into the tunnel are (their source is the peer's node address).
pub const VXLAN_ANCHOR_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 42, 1);
/// The nftables table the agent owns (family `inet`).
pub const NFT_TABLE: &str = "sinew";
pub use sinew_core::node::{DEFAULT_STATE_DIR, PLUGIN_BINARY};
/// Where the kernel publishes the current boot's random id.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_stable_unicast_local_and_distinct() {
        let a = vtep_mac("worker-1");
        assert_eq!(a, vtep_mac("worker-1"), "derived from the name alone");
        assert_ne!(a, vtep_mac("worker-2"));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        let macs: std::collections::BTreeSet<_> =
            (0..5000).map(|i| vtep_mac(&format!("node-{i}"))).collect();
        assert_eq!(macs.len(), 5000, "no clash among 5,000 node names");
    }
}
