//! What sinew's two long-running daemons (`sinew-operator`, `sinew-node`) share: the admin
//! HTTP listener (both run in the host network namespace, where every pod can reach it),
//! metrics on the Prometheus client library, log set-up, the command-line parser, the
//! reflector helper and the Node as both keep it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod watch;

/// The command-line parser both daemons use (`clap`, derive API, every flag with an
/// environment fallback; unknown flags are an error).
pub use clap;
