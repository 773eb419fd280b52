//! sinew's core, free of Kubernetes: what the API crate, the operator, the node agent and the
//! per-pod plugin all need to agree on. Only `serde` (and `schemars` for the API crate's
//! schemas) — the plugin, exec'd once per pod, links this and no Kubernetes client.

#![forbid(unsafe_code)]

pub mod cidr;
pub mod interval;
mod log;
mod mode;
pub mod node;
pub mod precedence;

pub use cidr::{Cidr, CidrError, Family};
pub use log::LogLevel;
pub use mode::{Forwarding, PoolMode, vxlan_overhead};
pub use precedence::CreationOrder;
