//! Log set-up shared by the daemons: structured `tracing` events on stderr, filtered by
//! `SINEW_LOG` (an `EnvFilter` directive such as `info` or `sinew_node_agent=debug`).

/// Installs the global subscriber; a malformed `SINEW_LOG` falls back to `info` and says so.
pub fn init() {
    let (filter, bad) = match tracing_subscriber::EnvFilter::try_from_env("SINEW_LOG") {
        Ok(f) => (f, None),
        Err(e) => (
            tracing_subscriber::EnvFilter::new("info"),
            std::env::var("SINEW_LOG").ok().map(|v| (v, e)),
        ),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some((value, e)) = bad {
        tracing::warn!(value, error = %e, "SINEW_LOG is not a valid filter; logging at info");
    }
}
