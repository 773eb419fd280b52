//! Status conditions with kstatus semantics: a condition's `lastTransitionTime` changes only
//! when its status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets (or replaces) condition `type_` in `conditions`.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let transition = match previous.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// Whether condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        set(&mut c, "Ready", false, "Waiting", "a", Some(1));
        let first = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(&mut c, "Ready", false, "StillWaiting", "b", Some(2));
        assert_eq!(c[0].last_transition_time, first);
        assert_eq!(c[0].reason, "StillWaiting");
        set(&mut c, "Ready", true, "Ready", "c", Some(2));
        assert_ne!(c[0].last_transition_time, first);
        assert!(is_true(&c, "Ready"));
        assert_eq!(c.len(), 1);
    }
}
