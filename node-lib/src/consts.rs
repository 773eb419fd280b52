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
