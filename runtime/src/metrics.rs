//! Metrics on the Prometheus client library (`prometheus-client`, maintained by the
//! Prometheus project): the daemons register typed counters, gauges and histograms in a
//! [`Registry`] and `/metrics` serves its OpenMetrics text.

pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;

/// The `content-type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's metrics in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        controller: String,
    }

    #[test]
    fn histograms_have_count_and_sum_and_counters_total() {
        let mut registry = Registry::with_prefix("sinew_test");
        let seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 6))
        });
        let runs = Family::<Labels, Counter>::default();
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            seconds.clone(),
        );
        registry.register("reconciles", "Reconciles run", runs.clone());
        let l = Labels {
            controller: "ippool".into(),
        };
        seconds.get_or_create(&l).observe(0.02);
        runs.get_or_create(&l).inc();
        let text = encode(&registry);
        assert!(
            text.contains("sinew_test_reconcile_duration_seconds_count{controller=\"ippool\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sinew_test_reconcile_duration_seconds_sum{controller=\"ippool\"} 0.02"),
            "{text}"
        );
        assert!(
            text.contains("sinew_test_reconciles_total{controller=\"ippool\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
