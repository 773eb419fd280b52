//! How many addresses a pool holds and how full it is (pure): its capacity, the `Exhausted`
//! condition, the status integers, and the forecast of a pool nearing exhaustion.

use sinew_crds::{Cidr, Family, IPPool, IPPoolStatus};

/// Share of the capacity in use from which `Exhausted` is raised, before allocations fail.
pub const EXHAUSTION_THRESHOLD: f64 = 0.9;

/// Addresses the pool can hand out, and its reserved addresses: its size, minus reserved
/// addresses, minus (IPv4) its network and broadcast addresses, which the plugin never hands
/// out. Exact (a /48 IPv6 pool holds 2^80); see [`api_integer`] for the status fields.
pub fn capacity(pool: &IPPool) -> (u128, u128) {
    let Ok(cidr) = pool.spec.cidr.parse::<Cidr>() else {
        return (0, 0);
    };
    let size = cidr.size();
    let reserved: u128 = pool
        .spec
        .reserved
        .iter()
        .filter_map(|r| sinew_crds::cidr::parse_ip_or_cidr(r).ok())
        .map(|r| r.size())
        .sum();
    let edges = if cidr.family() == Family::V4 && size > 2 {
        2
    } else {
        0
    };
    (
        size.saturating_sub(reserved).saturating_sub(edges),
        reserved,
    )
}

/// A count as a status integer: the API server stores int64, so larger counts (IPv6 pools of
/// /64 and wider) saturate at `i64::MAX`; the exact figure is in `usage`. Anything above would
/// be refused and leave the pool without status, and agents use no pool without status.
pub fn api_integer(n: u128) -> u64 {
    u64::try_from(n.min(i64::MAX as u128)).unwrap_or(i64::MAX as u64)
}

/// The `Exhausted` condition of a pool with `allocated` of `capacity` addresses in use: its
/// status, reason and message.
pub fn exhaustion(allocated: u64, capacity: u128) -> (bool, &'static str, String) {
    let usage = if capacity == 0 {
        0.0
    } else {
        allocated as f64 / capacity as f64
    };
    let reason = if u128::from(allocated) >= capacity && capacity > 0 {
        "Exhausted"
    } else if usage >= EXHAUSTION_THRESHOLD {
        "NearlyExhausted"
    } else {
        "AddressesAvailable"
    };
    (
        usage >= EXHAUSTION_THRESHOLD,
        reason,
        format!(
            "{allocated} of {capacity} addresses in use ({:.0}%)",
            usage * 100.0
        ),
    )
}

/// The pool is at or above [`EXHAUSTION_THRESHOLD`] (its `Exhausted` condition is True).
pub fn nearly_exhausted(status: &IPPoolStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Exhausted" && c.status == "True")
}

/// Adds the forecast at `rate` (addresses per hour) to the `Exhausted` message of pool `name`
/// when `status` says it is nearly exhausted; returns the note of the Warning Event to record
/// when it was not before (`was_nearly_exhausted`).
pub fn forecast_exhaustion(
    name: &str,
    status: &mut IPPoolStatus,
    rate: Option<f64>,
    was_nearly_exhausted: bool,
) -> Option<String> {
    if !nearly_exhausted(status) {
        return None;
    }
    let free = u128::from(status.capacity.unwrap_or(0))
        .saturating_sub(u128::from(status.allocated.unwrap_or(0)));
    let trend = crate::trend::forecast(free, rate);
    if let Some(c) = status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == "Exhausted")
    {
        c.message = format!("{}; {trend}", c.message);
    }
    (!was_nearly_exhausted).then(|| format!("{name}: {free} addresses left; {trend}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions;
    use crate::pool::fixtures::pool;

    #[test]
    fn capacity_excludes_reserved_and_ipv4_edges() {
        assert_eq!(capacity(&pool("a", "10.0.0.0/24", &[])), (254, 0));
        assert_eq!(
            capacity(&pool("a", "10.0.0.0/24", &["10.0.0.0/28", "10.0.0.100"])),
            (237, 17)
        );
        assert_eq!(capacity(&pool("a", "fd00::/120", &[])), (256, 0));
        assert_eq!(capacity(&pool("a", "fd00:48::/48", &[])), (1 << 80, 0));
        assert_eq!(
            api_integer(1 << 80),
            i64::MAX as u64,
            "an int64 the API server stores"
        );
        assert_eq!(api_integer(254), 254);
    }

    #[test]
    fn exhausted_is_raised_at_the_threshold_and_named_when_full() {
        assert_eq!(
            exhaustion(10, 100),
            (
                false,
                "AddressesAvailable",
                "10 of 100 addresses in use (10%)".into()
            )
        );
        assert_eq!(exhaustion(89, 100).1, "AddressesAvailable");
        assert_eq!(
            exhaustion(90, 100),
            (
                true,
                "NearlyExhausted",
                "90 of 100 addresses in use (90%)".into()
            )
        );
        assert_eq!(exhaustion(100, 100).1, "Exhausted");
        assert!(exhaustion(100, 100).0);
        // A pool without capacity (an unparsable CIDR) is not exhausted.
        assert!(!exhaustion(0, 0).0);
        assert_eq!(exhaustion(0, 0).1, "AddressesAvailable");
    }

    fn with_exhausted(status: bool) -> IPPoolStatus {
        let mut st = IPPoolStatus {
            capacity: Some(100),
            allocated: Some(95),
            ..IPPoolStatus::default()
        };
        conditions::set(
            &mut st.conditions,
            "Exhausted",
            status,
            "NearlyExhausted",
            "95 of 100 addresses in use (95%)",
            Some(1),
        );
        st
    }

    #[test]
    fn a_pool_that_becomes_nearly_exhausted_gets_a_forecast_and_one_event() {
        let mut st = with_exhausted(true);
        assert!(nearly_exhausted(&st));
        let note = forecast_exhaustion("p", &mut st, Some(10.0), false);
        assert_eq!(
            note.as_deref(),
            Some(
                "p: 5 addresses left; +10/h over the last hour: exhausted in ~30 min at that rate"
            )
        );
        assert_eq!(
            st.conditions[0].message,
            "95 of 100 addresses in use (95%); +10/h over the last hour: exhausted in ~30 min at that rate"
        );
        // Still nearly exhausted: the forecast again, no second Event.
        let mut again = with_exhausted(true);
        assert_eq!(forecast_exhaustion("p", &mut again, None, true), None);
        assert!(again.conditions[0].message.contains("not known yet"));
        // Not exhausted: nothing.
        let mut fine = with_exhausted(false);
        assert!(!nearly_exhausted(&fine));
        assert_eq!(forecast_exhaustion("p", &mut fine, Some(10.0), false), None);
        assert_eq!(
            fine.conditions[0].message,
            "95 of 100 addresses in use (95%)"
        );
    }
}
