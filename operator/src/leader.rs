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
    /// How long a leader keeps leading without a successful renewal: well inside `duration`,
    /// so it has stopped before any follower can see the Lease expire.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
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

/// Waits until this replica holds the Lease, then keeps renewing it in the background (the
/// returned task; abort it before [`release`]). If renewal fails for longer than the renew
/// deadline, the process exits.
pub async fn lead(
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
) -> tokio::task::JoinHandle<()> {
    let mut observed = Observed::default();
    loop {
        match try_acquire(&api, &name, &identity, timing, &mut observed).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(timing.renew).await;
    }
    info!(lease = %name, identity = %identity, "became the leader");
    tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(timing.renew).await;
            match try_acquire(&api, &name, &identity, timing, &mut observed).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %name, "another replica took the lease; stopping");
                    std::process::exit(1);
                }
                Err(e) => {
                    warn!(error = %e, "renewing the lease failed");
                    if last_ok.elapsed() > timing.renew_deadline() {
                        warn!(
                            "no renewal within the renew deadline; stopping before the lease can expire"
                        );
                        std::process::exit(1);
                    }
                }
            }
        }
    })
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
