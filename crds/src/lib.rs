//! The `sinew.dev/v1alpha1` API: [`ClusterNetwork`], [`IPPool`] and the internal [`IPBlock`]
//! and [`IPBlockUsage`], the CIDR arithmetic they rely on, and the generator of their CRD
//! manifests.

#![forbid(unsafe_code)]

pub mod cluster_network;
pub mod generate;
pub mod ip_block;
pub mod ip_block_usage;
pub mod ip_pool;
pub mod precedence;
pub mod selector;

// The Kubernetes-free core, re-exported: API users keep one import path.
pub use cluster_network::{
    CLUSTER_NETWORK_NAME, ClusterNetwork, ClusterNetworkSpec, ClusterNetworkStatus, DropLogMode,
    NetworkPolicyMode,
};
pub use ip_block::{Allocation, IPBlock, IPBlockSpec, RELEASE_ANNOTATION, ReleaseRequest};
pub use ip_block_usage::{IPBlockUsage, IPBlockUsageSpec, IPBlockUsageStatus, usage_by_block};
pub use ip_pool::{IPPool, IPPoolSpec, IPPoolStatus, ModePlan};
pub use sinew_core::{Cidr, CidrError, Family, Forwarding, LogLevel, PoolMode, vxlan_overhead};
pub use sinew_core::{cidr, interval, node};

/// API group of every sinew resource.
pub const GROUP: &str = "sinew.dev";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";
