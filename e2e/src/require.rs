//! Requirements of test tiers (root, the Go-built control plane): where one is missing, a
//! test skips loudly with the reason, except in CI (`CI` set), where nothing may skip.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this run must not skip anything.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

static SAID: AtomicBool = AtomicBool::new(false);

/// Reports a missing requirement. Returns normally (the caller skips) outside CI, panics in CI.
pub fn missing(tier: &str, reason: &str) {
    if in_ci() {
        panic!("CI requires the {tier} tests to run, but: {reason}");
    }
    if !SAID.swap(true, Ordering::SeqCst) {
        eprintln!(
            "\n*** SKIPPING {tier} tests: {reason}\n*** (set CI=true to make this a failure)\n"
        );
    }
}

/// Whether the process runs as root (needed for network namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
