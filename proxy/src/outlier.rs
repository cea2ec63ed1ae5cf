//! Outlier detection: per-endpoint failure streaks, ejection with growing duration, and
//! readmission once the ejection ends. Time is passed in, so the rules are tested directly.

use std::sync::Mutex;
use tokio::time::Instant;

use meshfed_core::traffic::{MAX_EJECTION_TIME, OutlierDetection};

/// How one attempt ended, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// 502, 503, 504, a connection failure or a timeout.
    GatewayError,
    /// Any other 5xx.
    ServerError,
}

#[derive(Debug, Default, Clone)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    /// When the host last came back, or last had its ejection count lowered.
    since: Option<Instant>,
}

impl Host {
    fn ejected_at(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| t > now)
    }
}

/// The outlier state of one service's endpoints.
#[derive(Debug)]
pub struct Outliers {
    cfg: OutlierDetection,
    hosts: Mutex<Vec<Host>>,
}

impl Outliers {
    pub fn new(cfg: OutlierDetection, endpoints: usize) -> Self {
        Self {
            cfg,
            hosts: Mutex::new(vec![Host::default(); endpoints]),
        }
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, Vec<Host>> {
        // A panic elsewhere cannot leave these counters inconsistent enough to matter.
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True when endpoint `i` is not ejected at `now`.
    pub fn available(&self, i: usize, now: Instant) -> bool {
        self.hosts().get(i).is_none_or(|h| !h.ejected_at(now))
    }

    /// Records an attempt's result; true when it ejected the endpoint.
    pub fn record(&self, i: usize, result: Verdict, now: Instant) -> bool {
        let mut hosts = self.hosts();
        let n = hosts.len();
        let ejected_now = hosts.iter().filter(|h| h.ejected_at(now)).count();
        let Some(h) = hosts.get_mut(i) else {
            return false;
        };
        if h.ejected_until.is_some_and(|t| t <= now) {
            h.ejected_until = None;
            h.since = Some(now);
        }
        match result {
            Verdict::Success => {
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
                // A host that stays healthy for a base ejection time earns one ejection back.
                if h.times_ejected > 0
                    && h.since
                        .is_some_and(|s| now.duration_since(s) >= self.cfg.base_ejection_time)
                {
                    h.times_ejected -= 1;
                    h.since = Some(now);
                }
                return false;
            }
            Verdict::GatewayError => {
                h.consecutive_5xx += 1;
                h.consecutive_gateway += 1;
            }
            Verdict::ServerError => {
                h.consecutive_5xx += 1;
                h.consecutive_gateway = 0;
            }
        }
        let trip = |count: u32, limit: u32| limit > 0 && count >= limit;
        if h.ejected_until.is_some()
            || !(trip(h.consecutive_5xx, self.cfg.consecutive_5xx_errors)
                || trip(h.consecutive_gateway, self.cfg.consecutive_gateway_errors))
        {
            return false;
        }
        let pct = usize::try_from(self.cfg.max_ejection_percent).unwrap_or(100);
        let allowed = (n * pct / 100).max(1);
        if ejected_now >= allowed || ejected_now + 1 >= n {
            return false;
        }
        h.times_ejected += 1;
        let time = self
            .cfg
            .base_ejection_time
            .saturating_mul(h.times_ejected)
            .min(MAX_EJECTION_TIME);
        h.ejected_until = Some(now + time);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        true
    }

    /// Ends endpoint `i`'s ejection now (an active check found it healthy); its ejection
    /// count stays, so a flapping endpoint still earns longer ejections.
    pub fn readmit(&self, i: usize, now: Instant) {
        if let Some(h) = self.hosts().get_mut(i) {
            h.ejected_until = None;
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            h.since = Some(now);
        }
    }

    /// Endpoints ejected at `now`.
    pub fn ejected(&self, now: Instant) -> usize {
        self.hosts().iter().filter(|h| h.ejected_at(now)).count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(n5xx: u32, gw: u32, pct: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: n5xx,
            consecutive_gateway_errors: gw,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: pct,
        }
    }

    #[test]
    fn a_failure_streak_ejects_and_time_readmits_with_backoff() {
        let o = Outliers::new(cfg(3, 0, 50), 3);
        let t0 = Instant::now();
        assert!(!o.record(0, Verdict::ServerError, t0));
        assert!(!o.record(0, Verdict::ServerError, t0));
        // A success breaks the streak.
        assert!(!o.record(0, Verdict::Success, t0));
        assert!(!o.record(0, Verdict::ServerError, t0));
        assert!(!o.record(0, Verdict::GatewayError, t0));
        assert!(o.record(0, Verdict::ServerError, t0));
        assert!(!o.available(0, t0) && o.available(1, t0));
        assert_eq!(o.ejected(t0 + Duration::from_secs(9)), 1);
        // Back after the base time; the next ejection lasts twice as long.
        let t1 = t0 + Duration::from_secs(10);
        assert!(o.available(0, t1));
        for _ in 0..3 {
            o.record(0, Verdict::ServerError, t1);
        }
        assert_eq!(o.ejected(t1 + Duration::from_secs(19)), 1);
        assert_eq!(o.ejected(t1 + Duration::from_secs(20)), 0);
    }

    #[test]
    fn gateway_errors_alone_can_eject() {
        let o = Outliers::new(cfg(0, 2, 100), 2);
        let t = Instant::now();
        assert!(!o.record(1, Verdict::ServerError, t));
        assert!(!o.record(1, Verdict::GatewayError, t));
        assert!(o.record(1, Verdict::GatewayError, t));
    }

    #[test]
    fn the_last_endpoint_and_the_percentage_are_respected() {
        let t = Instant::now();
        let o = Outliers::new(cfg(1, 0, 100), 2);
        assert!(o.record(0, Verdict::ServerError, t));
        assert!(
            !o.record(1, Verdict::ServerError, t),
            "the last endpoint stays"
        );
        // 10% of 4 endpoints still allows one ejection.
        let o = Outliers::new(cfg(1, 0, 10), 4);
        assert!(o.record(0, Verdict::ServerError, t));
        assert!(!o.record(1, Verdict::ServerError, t));
        assert_eq!(o.ejected(t), 1);
    }
}
