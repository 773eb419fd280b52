//! The `sinew.dev/v1alpha1` API: [`ClusterNetwork`], [`IPPool`] and the internal [`IPBlock`],
//! the CIDR arithmetic they rely on, and the generator of their CRD manifests.

pub mod cidr;
pub mod cluster_network;
pub mod generate;
pub mod ip_block;
pub mod ip_pool;
pub mod selector;

pub use cidr::{Cidr, CidrError, Family};
pub use cluster_network::{
    CLUSTER_NETWORK_NAME, ClusterNetwork, ClusterNetworkSpec, ClusterNetworkStatus,
};
pub use ip_block::{
    Allocation, IPBlock, IPBlockSpec, IPBlockStatus, RELEASE_ANNOTATION, ReleaseRequest,
};
pub use ip_pool::{
    Forwarding, IPPool, IPPoolSpec, IPPoolStatus, ModePlan, PoolMode, vxlan_overhead,
};

/// API group of every sinew resource.
pub const GROUP: &str = "sinew.dev";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";
