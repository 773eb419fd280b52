//! What sinew's two long-running daemons (`sinew-operator`, `sinew-node`) share. Both run in
//! the host network namespace, where every pod can reach their listeners.

pub mod admin;
