//! How often a pool's status may change for its counts alone (decisions 95 and 101). Every
//! agent watches every `IPPool` (it reads the spec and the operator's judgement), so each
//! status write is an event to every node. A write that changes only counts (addresses and
//! blocks in use, and the condition messages that quote them) goes out at once when the
//! pool's last such write is [`COUNTS_INTERVAL`] old, else when it is; any other change (a
//! condition's status or reason, the mode plan, a spec edit's observed generation) goes out
//! at once, and holds back no count that follows it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sinew_crds::IPPoolStatus;

/// The least time between two writes of a pool's status that change only its counts.
pub const COUNTS_INTERVAL: Duration = Duration::from_secs(5);

/// Pure: whether `new` differs from `old` in its counts only.
pub fn only_counts_differ(old: &IPPoolStatus, new: &IPPoolStatus) -> bool {
    fn without_counts(st: &IPPoolStatus) -> IPPoolStatus {
        let mut st = st.clone();
        st.allocated = None;
        st.usage = None;
        st.blocks = None;
        for c in &mut st.conditions {
            // A condition keeps its transition time while its status stays.
            c.message.clear();
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        st
    }
    old != new && without_counts(old) == without_counts(new)
}

/// When each pool's status was last written for its counts alone.
#[derive(Debug, Default)]
pub struct StatusWrites(Mutex<BTreeMap<String, Instant>>);

impl StatusWrites {
    /// How long writing `new` over `old` must wait at `now` (`None`: it goes now). Only a
    /// write that changes counts alone waits, and only for the pool's last such write: a spec
    /// edit or a condition that turned is news, and holds back no count that follows it.
    pub fn wait(
        &self,
        pool: &str,
        old: Option<&IPPoolStatus>,
        new: &IPPoolStatus,
        now: Instant,
    ) -> Option<Duration> {
        if !old.is_some_and(|old| only_counts_differ(old, new)) {
            return None;
        }
        let last = *self.0.lock().ok()?.get(pool)?;
        COUNTS_INTERVAL
            .checked_sub(now.saturating_duration_since(last))
            .filter(|d| !d.is_zero())
    }

    /// Records that `new` was written over `old` at `now`.
    pub fn wrote(&self, pool: &str, old: Option<&IPPoolStatus>, new: &IPPoolStatus, now: Instant) {
        if old.is_some_and(|old| only_counts_differ(old, new))
            && let Ok(mut all) = self.0.lock()
        {
            all.insert(pool.to_string(), now);
        }
    }

    /// Forgets a deleted pool.
    pub fn forget(&self, pool: &str) {
        if let Ok(mut all) = self.0.lock() {
            all.remove(pool);
        }
    }
}

/// Which pools to reconcile because their usages changed: each pool at once after a quiet
/// spell, then at most once per [`COUNTS_INTERVAL`], the changes in between in one reconcile
/// at the end of the interval. At 100 pod starts and stops per second, reconciling a pool for
/// every usage write kept the operator busy for seconds after the churn, and a spec edit
/// queued behind that (pure: the caller's clock).
#[derive(Debug, Default)]
pub struct UsageTriggers {
    /// When each pool was last named.
    named: BTreeMap<String, Instant>,
    /// Pools whose usage changed since, and when they are due.
    pending: BTreeMap<String, Instant>,
}

impl UsageTriggers {
    /// A usage of `pool` changed at `now`: whether to reconcile it now (else it is due later).
    pub fn changed(&mut self, pool: &str, now: Instant) -> bool {
        if self.pending.contains_key(pool) {
            return false;
        }
        match self.named.get(pool) {
            Some(&last) if now.saturating_duration_since(last) < COUNTS_INTERVAL => {
                self.pending
                    .insert(pool.to_string(), last + COUNTS_INTERVAL);
                false
            }
            _ => {
                self.named.insert(pool.to_string(), now);
                true
            }
        }
    }

    /// When the next pending pool is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().min().copied()
    }

    /// The pools due at `now`, named now.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(pool, _)| pool.clone())
            .collect();
        for pool in &due {
            self.pending.remove(pool);
            self.named.insert(pool.clone(), now);
        }
        // Pools quiet for an interval need no memory.
        self.named
            .retain(|_, last| now.saturating_duration_since(*last) < COUNTS_INTERVAL);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions;

    fn status(allocated: u64, exhausted: bool, reason: &str) -> IPPoolStatus {
        let mut st = IPPoolStatus {
            observed_generation: Some(1),
            allocated: Some(allocated),
            usage: Some(format!("{allocated}/14")),
            blocks: Some(1),
            ..IPPoolStatus::default()
        };
        conditions::set(
            &mut st.conditions,
            "Exhausted",
            exhausted,
            reason,
            format!("{allocated} of 14 addresses in use"),
            Some(1),
        );
        st
    }

    #[test]
    fn counts_are_paced_and_everything_else_goes_at_once() {
        let before = status(3, false, "AddressesAvailable");
        assert!(only_counts_differ(
            &before,
            &status(4, false, "AddressesAvailable")
        ));
        assert!(!only_counts_differ(&before, &before), "nothing to write");
        // A condition that turns, or changes its reason, is news.
        assert!(!only_counts_differ(
            &before,
            &status(13, true, "NearlyExhausted")
        ));
        assert!(!only_counts_differ(
            &status(13, true, "NearlyExhausted"),
            &status(14, true, "Exhausted")
        ));
        let mut edited = status(3, false, "AddressesAvailable");
        edited.observed_generation = Some(2);
        assert!(
            !only_counts_differ(&before, &edited),
            "a spec edit is seen at once"
        );
    }

    #[test]
    fn a_counts_only_write_goes_at_once_after_a_quiet_spell_then_waits() {
        let writes = StatusWrites::default();
        let (three, four, five) = (
            status(3, false, "AddressesAvailable"),
            status(4, false, "AddressesAvailable"),
            status(5, false, "AddressesAvailable"),
        );
        let t0 = Instant::now();
        assert_eq!(
            writes.wait("p", Some(&three), &four, t0),
            None,
            "never written"
        );
        writes.wrote("p", Some(&three), &four, t0);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(
            writes.wait("p", Some(&four), &five, t2),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            writes.wait("p", Some(&four), &five, t0 + COUNTS_INTERVAL),
            None
        );
        assert_eq!(writes.wait("q", Some(&four), &five, t2), None, "per pool");
        let turned = status(13, true, "NearlyExhausted");
        assert_eq!(
            writes.wait("p", Some(&four), &turned, t2),
            None,
            "news waits for nothing"
        );
        assert_eq!(
            writes.wait("p", None, &four, t2),
            None,
            "a first status is news"
        );
    }

    #[test]
    fn a_spec_edit_holds_back_no_count_that_follows_it() {
        let writes = StatusWrites::default();
        let before = status(3, false, "AddressesAvailable");
        let mut edited = before.clone();
        edited.observed_generation = Some(2);
        let t0 = Instant::now();
        writes.wrote("p", Some(&before), &edited, t0);
        let mut counted = edited.clone();
        counted.allocated = Some(4);
        assert_eq!(
            writes.wait(
                "p",
                Some(&edited),
                &counted,
                t0 + Duration::from_millis(100)
            ),
            None
        );
    }

    #[test]
    fn usage_changes_name_a_pool_at_once_then_once_per_interval_and_none_is_lost() {
        let mut triggers = UsageTriggers::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(triggers.changed("p", t0), "after a quiet spell: at once");
        assert!(triggers.changed("q", at(10)), "per pool");
        assert!(!triggers.changed("p", at(100)));
        assert!(!triggers.changed("p", at(200)), "one reconcile for both");
        assert_eq!(triggers.next_due(), Some(t0 + COUNTS_INTERVAL));
        assert!(triggers.due(at(4_999)).is_empty());
        assert_eq!(triggers.due(t0 + COUNTS_INTERVAL), ["p"]);
        assert_eq!(triggers.next_due(), None);
        assert!(
            !triggers.changed("p", at(6_000)),
            "named at 5 s: the next waits"
        );
        assert_eq!(triggers.due(at(10_000)), ["p"]);
        assert!(triggers.changed("p", at(15_001)), "quiet again");
    }
}
