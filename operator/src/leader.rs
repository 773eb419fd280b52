//! Leader election on a `coordination.k8s.io/v1` Lease: of the operator's replicas, only the
//! holder of the Lease reconciles. The holder renews it every `renew`; a replica takes over
//! once the Lease has not been renewed for `duration`. Writes use the Lease's
//! `resourceVersion`, so two replicas can never both win the same round. A leader that fails
//! to renew stops (the process exits and restarts as a follower) rather than risk two active
//! reconcilers.

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

/// Whether `lease` may be taken by `identity` at `now`.
pub fn can_take(lease: &LeaseSpec, identity: &str, now: Timestamp, timing: Timing) -> bool {
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
    let renewed = lease.renew_time.as_ref().map(|t| t.0);
    match renewed {
        None => true,
        Some(t) => t
            .checked_add(duration)
            .map(|expiry| expiry < now)
            .unwrap_or(true),
    }
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
    let current = lease.spec.clone().unwrap_or_default();
    if !can_take(&current, identity, Timestamp::now(), timing) {
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
/// returned task; abort it before [`release`]). If renewal fails for longer than the Lease
/// duration, the process exits.
pub async fn lead(
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
) -> tokio::task::JoinHandle<()> {
    loop {
        match try_acquire(&api, &name, &identity, timing).await {
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
            match try_acquire(&api, &name, &identity, timing).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %name, "another replica took the lease; stopping");
                    std::process::exit(1);
                }
                Err(e) => {
                    warn!(error = %e, "renewing the lease failed");
                    if last_ok.elapsed() > timing.duration {
                        warn!("lease expired without renewal; stopping");
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

    fn held_by(who: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_lease_is_not_taken_an_expired_one_is() {
        let t = Timing::default();
        assert!(!can_take(&held_by("a", 5), "b", Timestamp::now(), t));
        assert!(can_take(&held_by("a", 20), "b", Timestamp::now(), t));
        assert!(
            can_take(&held_by("b", 5), "b", Timestamp::now(), t),
            "the holder renews"
        );
        assert!(can_take(&LeaseSpec::default(), "b", Timestamp::now(), t));
    }
}
