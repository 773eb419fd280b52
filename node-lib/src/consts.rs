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
/// The node's VXLAN device.
pub const VXLAN_DEVICE: &str = "sinew.vxlan";
/// The nftables table the agent owns (family `inet`).
pub const NFT_TABLE: &str = "sinew";
pub use sinew_core::node::{DEFAULT_STATE_DIR, PLUGIN_BINARY};
/// Where the kernel publishes the current boot's random id.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
