//! `sinew-node`: the atomic installer of the plugin and its conflist, and the node agent that
//! claims blocks, programs peers and reports status. See `docs/architecture.md`.

#![forbid(unsafe_code)]

pub mod agent;
pub mod blocks;
pub mod conflist;
pub mod datapath;
pub mod diagnose;
pub mod http;
pub mod install;
pub mod nat;
pub mod node_watch;
pub mod peers;
pub mod policy;
pub mod probe;
pub mod sysctl;
pub mod tunnel;
pub mod vetting;
