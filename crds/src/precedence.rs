//! Which of two overlapping pools or blocks wins, read from their metadata: the rule is
//! [`sinew_core::precedence`]'s, applied to the typed `creationTimestamp` the API server
//! recorded and the object's name. The operator (which pool it refuses) and every node agent
//! (which pool it treats as conflicted, which block it ignores) both call [`creation_order`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

pub use sinew_core::precedence::CreationOrder;

/// Where the object of `meta` stands in creation order (the lower wins an overlap).
pub fn creation_order(meta: &ObjectMeta) -> CreationOrder<Timestamp> {
    CreationOrder::new(
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IPPool;

    /// A pool as a watch delivers it: JSON, with `creationTimestamp` as the server wrote it.
    fn pool(name: &str, created: &str) -> IPPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"cidr": "10.244.0.0/16"},
        }))
        .unwrap()
    }

    #[test]
    fn creation_times_compare_as_instants_not_as_text() {
        // The API server writes whole seconds; a timestamp with a fraction (which the type
        // accepts) is later than the whole second, though its text sorts first.
        let whole = pool("b", "2026-01-01T00:00:00Z");
        let quarter = pool("a", "2026-01-01T00:00:00.25Z");
        let half = pool("a", "2026-01-01T00:00:00.5Z");
        let order = |p: &IPPool| creation_order(&p.metadata);
        assert!(order(&whole).precedes(&order(&quarter)));
        assert!(order(&quarter).precedes(&order(&half)));
        assert!(order(&pool("z", "2025-12-31T23:59:59.999Z")).precedes(&order(&whole)));
        // Same instant, two spellings: the name decides.
        assert!(order(&pool("a", "2026-01-01T00:00:00.000Z")).precedes(&order(&whole)));
        assert!(!order(&whole).precedes(&order(&pool("a", "2026-01-01T00:00:00.000Z"))));
    }
}
