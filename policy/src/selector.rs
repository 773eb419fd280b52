//! Matching a standard `LabelSelector` (an `IPPool`'s node selector, a NetworkPolicy's pod and
//! namespace selectors) against labels, with the Kubernetes semantics.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. `None` (or an empty selector) selects everything;
/// an unknown operator selects nothing.
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("rack", "a")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["edge".into()]),
            }]),
        };
        assert!(matches(Some(&sel), &labels(&[("rack", "a")])));
        assert!(!matches(
            Some(&sel),
            &labels(&[("rack", "a"), ("tier", "edge")])
        ));
        assert!(!matches(Some(&sel), &labels(&[("rack", "b")])));
        assert!(matches(None, &labels(&[])));
        assert!(matches(Some(&LabelSelector::default()), &labels(&[])));
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn each_operator_with_the_kubernetes_meaning() {
        let db = labels(&[("app", "db")]);
        let web = labels(&[("app", "web")]);
        let none = labels(&[]);
        // (selector, labels, matches)
        let table = [
            (req("app", "In", &["db", "cache"]), &db, true),
            (req("app", "In", &["db", "cache"]), &web, false),
            (req("app", "In", &["db"]), &none, false),
            (req("app", "NotIn", &["db"]), &db, false),
            (req("app", "NotIn", &["db"]), &web, true),
            (req("app", "NotIn", &["db"]), &none, true),
            (req("app", "Exists", &[]), &db, true),
            (req("app", "Exists", &[]), &none, false),
            (req("app", "DoesNotExist", &[]), &db, false),
            (req("app", "DoesNotExist", &[]), &none, true),
            (req("app", "Gt", &["1"]), &db, false),
            (req("app", "in", &["db"]), &db, false),
        ];
        for (i, (sel, l, want)) in table.iter().enumerate() {
            assert_eq!(matches(Some(sel), l), *want, "row {i}: {sel:?} on {l:?}");
        }
    }
}
