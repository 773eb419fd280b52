//! `sinew-operator`: reconciles `ClusterNetwork` (node agent rollout, node status, clean-up)
//! and `IPPool` (validation the schema cannot do, aggregated status, drain on deletion).

#![forbid(unsafe_code)]

pub mod conditions;
pub mod context;
pub mod daemonset;
pub mod gc;
pub mod http;
pub mod leader;
pub mod network;
pub mod nodes;
pub mod pod_uids;
pub mod pool;
pub mod run;
#[cfg(test)]
mod scenarios;
pub mod trend;
pub mod uninstall;
pub mod usage_gc;
