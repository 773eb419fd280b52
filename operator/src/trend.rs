//! How fast each pool fills: allocation samples over the last hour, and the forecast the
//! `Exhausted` condition carries once a pool is nearly full ("exhausted in ~3 h at the last
//! hour's rate").

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window the rate is measured over.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// A rate needs samples at least this far apart.
const MIN_SPAN: Duration = Duration::from_secs(60);

/// Allocation samples per pool.
#[derive(Debug, Default)]
pub struct UsageHistory(Mutex<BTreeMap<String, VecDeque<(Instant, u64)>>>);

impl UsageHistory {
    /// Records `allocated` for `pool` at `now`; returns the rate (addresses per hour) over the
    /// window, once samples span a minute.
    pub fn record(&self, pool: &str, now: Instant, allocated: u64) -> Option<f64> {
        let mut all = self.0.lock().ok()?;
        let samples = all.entry(pool.to_string()).or_default();
        samples.push_back((now, allocated));
        while samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            samples.pop_front();
        }
        let (first, before) = *samples.front()?;
        let span = now.duration_since(first);
        (span >= MIN_SPAN).then(|| (allocated as f64 - before as f64) / span.as_secs_f64() * 3600.0)
    }

    /// Forgets a deleted pool.
    pub fn forget(&self, pool: &str) {
        if let Ok(mut all) = self.0.lock() {
            all.remove(pool);
        }
    }
}

/// The forecast sentence for a pool with `free` addresses left at `rate` per hour.
pub fn forecast(free: u128, rate: Option<f64>) -> String {
    match rate {
        None => "allocation rate not known yet (measured over the last hour)".into(),
        Some(r) if r <= 0.0 => format!("{r:+.0}/h over the last hour: not filling up now"),
        Some(r) => {
            let hours = free as f64 / r;
            let when = if hours < 1.0 {
                format!("~{:.0} min", (hours * 60.0).max(1.0))
            } else if hours < 48.0 {
                format!("~{hours:.0} h")
            } else {
                format!("~{:.0} days", hours / 24.0)
            };
            format!("+{r:.0}/h over the last hour: exhausted in {when} at that rate")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_over_the_last_hour() {
        let h = UsageHistory::default();
        let t0 = Instant::now();
        assert_eq!(h.record("p", t0, 100), None, "one sample");
        assert_eq!(
            h.record("p", t0 + Duration::from_secs(30), 110),
            None,
            "too short"
        );
        let rate = h.record("p", t0 + Duration::from_secs(1800), 150).unwrap();
        assert!((rate - 100.0).abs() < 1e-9, "{rate}");
        // Samples older than the window drop out.
        let rate = h.record("p", t0 + Duration::from_secs(5400), 150).unwrap();
        assert!(rate.abs() < 1e-9, "{rate}");
        h.forget("p");
        assert_eq!(h.record("p", t0 + Duration::from_secs(5401), 150), None);
    }

    #[test]
    fn forecasts_read_well() {
        assert_eq!(
            forecast(300, Some(100.0)),
            "+100/h over the last hour: exhausted in ~3 h at that rate"
        );
        assert!(forecast(10, Some(100.0)).contains("~6 min"));
        assert!(forecast(10, Some(0.0)).contains("not filling up"));
        assert!(forecast(10, None).contains("not known yet"));
    }
}
