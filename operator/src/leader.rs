//! Leader election on a `coordination.k8s.io/v1` Lease: of the operator's replicas, only the
//! holder of the Lease reconciles. The holder renews it every `renew`; a replica takes over
//! once the Lease record has not changed for `duration`, timed on the replica's own monotonic
//! clock since it *observed* the last change (never by comparing the holder's `renewTime` with
//! the local wall clock, which clock skew between nodes would turn into two leaders or none).
//! Writes use the Lease's `resourceVersion`, so two replicas can never both win the same round.
//! A leader that cannot renew within the renew deadline (two thirds of `duration`) stops (the
//! process exits and restarts as a follower) before any follower may take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// Timing of the election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the leader renews, and followers retry.
    pub renew: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        }
    }
}

impl Timing {
    /// Checked timing: the leader must get at least one renewal attempt in before its renew
    /// deadline (`renew` shorter than two thirds of `duration`).
    pub fn new(duration: Duration, renew: Duration) -> Result<Timing, String> {
        let timing = Timing { duration, renew };
        if renew.is_zero() || renew >= timing.renew_deadline() {
            return Err(format!(
                "the renew interval ({} s) must be above 0 and below two thirds of the lease duration ({} s): a leader that cannot renew steps down at two thirds",
                renew.as_secs_f64(),
                duration.as_secs_f64()
            ));
        }
        Ok(timing)
    }

    /// How long a leader keeps leading without a successful renewal: well inside `duration`,
    /// so it has stopped before any follower can see the Lease expire.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How long one attempt may take: a third of the renew deadline at most, so a hung
    /// attempt leaves time for more before the deadline.
    pub fn attempt_timeout(&self) -> Duration {
        self.renew.min(self.renew_deadline() / 3)
    }

    /// The pause before another attempt after a failed one.
    pub fn retry(&self) -> Duration {
        self.renew / 5
    }
}

/// What a replica last saw of the Lease, and when (on its own monotonic clock).
#[derive(Debug, Default)]
pub struct Observed {
    record: Option<(Option<String>, Option<String>, Option<String>)>,
    since: Option<std::time::Instant>,
}

impl Observed {
    /// Records what `lease` says at `now`; returns for how long it has said the same.
    fn observe(&mut self, lease: &Lease, now: std::time::Instant) -> Duration {
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Some((
            spec.holder_identity,
            spec.renew_time.map(|t| t.0.to_string()),
            lease.metadata.resource_version.clone(),
        ));
        if self.record != record || self.since.is_none() {
            self.record = record;
            self.since = Some(now);
        }
        self.since.map_or(Duration::ZERO, |s| now.duration_since(s))
    }
}

/// Whether `lease` may be taken by `identity` when its record has stood unchanged for
/// `unchanged` (as this replica observed it).
pub fn can_take(lease: &LeaseSpec, identity: &str, unchanged: Duration, timing: Timing) -> bool {
    if lease
        .holder_identity
        .as_deref()
        .is_none_or(|h| h.is_empty() || h == identity)
    {
        return true;
    }
    let duration = lease.lease_duration_seconds.map_or(timing.duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    unchanged > duration
}

fn spec(
    identity: &str,
    timing: Timing,
    acquired: Option<MicroTime>,
    transitions: i32,
) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(i32::try_from(timing.duration.as_secs()).unwrap_or(15)),
        acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// One attempt to become (or stay) the holder. `Ok(true)` when this replica holds the Lease.
pub async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    timing: Timing,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(spec(identity, timing, None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let unchanged = observed.observe(&lease, std::time::Instant::now());
    let current = lease.spec.clone().unwrap_or_default();
    if !can_take(&current, identity, unchanged, timing) {
        return Ok(false);
    }
    let ours = current.holder_identity.as_deref() == Some(identity);
    let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquired = if ours {
        current.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(spec(identity, timing, acquired, transitions));
    // replace() carries the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDown {
    /// Another replica holds the Lease.
    Taken,
    /// No renewal succeeded within the renew deadline (failed, or hung past its timeout).
    NoRenewal,
}

/// Renews with `renew` (one attempt; `Ok(false)`: another replica holds the Lease) every
/// `timing.renew` until leadership is lost; after a failed attempt it retries every
/// [`Timing::retry`]. Each attempt is bounded by [`Timing::attempt_timeout`], and never runs
/// past the renew deadline, so an API server that accepts a request and never answers cannot
/// keep a leader leading. The deadline runs from the *start* of the last successful attempt
/// (its write cannot be older), so the leader stops before any follower, which waits the whole
/// lease duration from when it saw that write, can take over. `last_ok` is when the attempt
/// that won the Lease started.
pub async fn keep_renewing<F, Fut>(
    mut renew: F,
    timing: Timing,
    mut last_ok: tokio::time::Instant,
) -> StepDown
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, kube::Error>>,
{
    let mut next = last_ok + timing.renew;
    loop {
        let deadline = last_ok + timing.renew_deadline();
        tokio::time::sleep_until(next.min(deadline)).await;
        let started = tokio::time::Instant::now();
        if started >= deadline {
            return StepDown::NoRenewal;
        }
        let give_up = (started + timing.attempt_timeout()).min(deadline);
        match tokio::time::timeout_at(give_up, renew()).await {
            Ok(Ok(true)) => {
                last_ok = started;
                next = started + timing.renew;
                continue;
            }
            Ok(Ok(false)) => return StepDown::Taken,
            Ok(Err(e)) => warn!(error = %e, "renewing the lease failed; retrying"),
            Err(_) => warn!(
                timeout_ms = (give_up - started).as_millis() as u64,
                "renewing the lease timed out; retrying"
            ),
        }
        next = tokio::time::Instant::now() + timing.retry();
    }
}

/// The Lease held by this replica, renewed in the background until [`Leader::lost`] says why
/// it no longer is (or [`Leader::stop`]).
pub struct Leader {
    renewing: tokio::task::JoinHandle<StepDown>,
}

impl Leader {
    /// Resolves when this replica must stop acting as the leader: at once, before the
    /// Lease can expire for the others.
    pub async fn lost(&mut self) -> StepDown {
        match (&mut self.renewing).await {
            Ok(why) => why,
            // Aborted (stop) or panicked: either way, no longer renewing.
            Err(_) => StepDown::NoRenewal,
        }
    }

    /// Stops renewing (before [`release`]).
    pub fn stop(&self) {
        self.renewing.abort();
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

/// Waits until this replica holds the Lease, then keeps renewing it in the background (see
/// [`keep_renewing`]). Every attempt, the winning one too, is bounded by
/// [`Timing::attempt_timeout`].
pub async fn lead(api: Api<Lease>, name: String, identity: String, timing: Timing) -> Leader {
    let mut observed = Observed::default();
    let won_at = loop {
        let started = tokio::time::Instant::now();
        let attempt = try_acquire(&api, &name, &identity, timing, &mut observed);
        match tokio::time::timeout(timing.attempt_timeout(), attempt).await {
            Ok(Ok(true)) => break started,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "leader election attempt failed"),
            Err(_) => warn!(lease = %name, "leader election attempt timed out"),
        }
        tokio::time::sleep_until(started + timing.renew).await;
    };
    info!(lease = %name, identity = %identity, "became the leader");
    let observed = std::sync::Arc::new(tokio::sync::Mutex::new(observed));
    let renewing = tokio::spawn(async move {
        keep_renewing(
            || {
                let (api, name, identity, observed) = (
                    api.clone(),
                    name.clone(),
                    identity.clone(),
                    observed.clone(),
                );
                async move {
                    let mut observed = observed.lock().await;
                    try_acquire(&api, &name, &identity, timing, &mut observed).await
                }
            },
            timing,
            won_at,
        )
        .await
    });
    Leader { renewing }
}

/// Graceful hand-over: gives the Lease up (no holder) if this replica holds it, so a standby
/// takes over at its next attempt instead of waiting for the Lease to expire.
pub async fn release(api: &Api<Lease>, name: &str, identity: &str) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(false);
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    spec.acquire_time = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(name, &PostParams::default(), &lease).await?;
    info!(lease = %name, identity = %identity, "lease released");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_steps_down_before_the_lease_expires() {
        let t = Timing::default();
        let start = tokio::time::Instant::now();
        // The first renewal passes; the second never returns (the API server accepted the
        // connection and hangs).
        let mut attempts = 0;
        let renew = || {
            attempts += 1;
            let hang = attempts > 1;
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(true)
            }
        };
        let why = tokio::time::timeout(t.duration * 3, keep_renewing(renew, t, start))
            .await
            .expect("a leader whose renewal hangs steps down");
        assert_eq!(why, StepDown::NoRenewal);
        // Stepped down before a follower, which waits `duration` after the last renewal it
        // saw (at `start + renew`), may take over.
        let last_renewal_started = start + t.renew;
        assert!(
            tokio::time::Instant::now() < last_renewal_started + t.duration,
            "stepped down {:?} after the last renewal",
            tokio::time::Instant::now() - last_renewal_started
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_keeps_leading_through_one_hung_or_failed_renewal() {
        let t = Timing::default();
        let start = tokio::time::Instant::now();
        // Attempt 2 hangs (its timeout ends it), attempt 4 fails, the rest pass; attempt 20
        // finds another holder.
        let mut attempts = 0;
        let renew = || {
            attempts += 1;
            let n = attempts;
            async move {
                match n {
                    2 => std::future::pending().await,
                    4 => Err(kube::Error::Api(Box::new(kube::core::Status::failure(
                        "unavailable",
                        "ServiceUnavailable",
                    )))),
                    20 => Ok(false),
                    _ => Ok(true),
                }
            }
        };
        let why = keep_renewing(renew, t, start).await;
        assert_eq!(why, StepDown::Taken, "stepped down after one bad attempt");
        // Each bad attempt cost its timeout (or nothing) and one retry pause.
        let expected = t.renew * 18 + t.attempt_timeout() + t.retry() * 2;
        let took = tokio::time::Instant::now() - start;
        // (The timer rounds to milliseconds.)
        assert!(
            took.abs_diff(expected) < Duration::from_millis(5),
            "{took:?}"
        );
    }

    #[test]
    fn a_renew_interval_past_the_renew_deadline_is_refused() {
        let secs = Duration::from_secs;
        assert!(Timing::new(secs(15), secs(5)).is_ok());
        assert!(Timing::new(secs(3), secs(1)).is_ok());
        assert!(Timing::new(secs(15), secs(10)).is_err());
        assert!(Timing::new(secs(15), secs(0)).is_err());
    }

    fn held_by(who: &str, renew_time: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(renew_time.to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(who.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renew_time)),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_live_lease_is_not_taken_an_expired_one_is() {
        let t = Timing::default();
        let spec = |l: &Lease| l.spec.clone().unwrap();
        let a = held_by("a", Timestamp::now());
        let secs = Duration::from_secs;
        assert!(!can_take(&spec(&a), "b", secs(5), t));
        assert!(can_take(&spec(&a), "b", secs(20), t));
        assert!(can_take(&spec(&a), "a", secs(5), t), "the holder renews");
        assert!(can_take(&LeaseSpec::default(), "b", secs(0), t));
        assert!(t.renew_deadline() < t.duration);
    }

    #[test]
    fn expiry_is_timed_from_the_observed_change_not_the_holders_clock() {
        let t = Timing::default();
        let mut seen = Observed::default();
        let start = std::time::Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        // The holder's clock runs an hour behind ours: its renewTime looks long expired, yet
        // it renews (the record changes), so the lease is live.
        let skewed = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(3600);
        let first = held_by("a", skewed);
        assert_eq!(seen.observe(&first, at(0)), Duration::ZERO);
        assert!(!can_take(
            &first.spec.clone().unwrap(),
            "b",
            seen.observe(&first, at(1)),
            t
        ));
        let renewed = held_by(
            "a",
            skewed + k8s_openapi::jiff::SignedDuration::from_secs(10),
        );
        assert_eq!(
            seen.observe(&renewed, at(10)),
            Duration::ZERO,
            "a renewal restarts the clock"
        );
        // And a holder whose clock runs ahead cannot keep a dead lease alive: no change for
        // longer than the duration is expiry.
        let unchanged = seen.observe(&renewed, at(26));
        assert!(can_take(&renewed.spec.clone().unwrap(), "b", unchanged, t));
    }
}
