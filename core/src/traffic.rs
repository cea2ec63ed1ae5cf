//! Client-side traffic policy for calls to one service, with Istio `VirtualService` HTTP route
//! names and meaning: `timeout`, `retries` (`attempts`, `perTryTimeout`, `retryOn`) and `fault`
//! (`delay`, `abort`, each for a percentage of requests).

use std::time::Duration;

use serde::Serialize;

/// A share of requests in parts per million (`percentage.value: 12.5` is 125,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Share(u32);

impl Share {
    pub const MILLION: u32 = 1_000_000;
    pub const ZERO: Self = Self(0);
    pub const ALL: Self = Self(Self::MILLION);

    /// From a percentage in `[0, 100]`; `None` for anything else (NaN included).
    pub fn from_percent(p: f64) -> Option<Self> {
        if !(0.0..=100.0).contains(&p) {
            return None;
        }
        // In range, so the product fits in u32.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(Self((p * 10_000.0).round() as u32))
    }

    pub fn parts_per_million(self) -> u32 {
        self.0
    }

    /// True for a draw `r` uniform in `[0, MILLION)` that falls in this share.
    pub fn hit(self, r: u32) -> bool {
        r < self.0
    }
}

/// Which outcomes of an attempt are retried (Envoy `retry_on` names, as Istio passes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    /// Any 5xx, or a per-try timeout.
    pub five_xx: bool,
    /// 502, 503 or 504, or a per-try timeout.
    pub gateway_error: bool,
    /// The connection or TLS handshake to the endpoint failed (the request was never sent).
    pub connect_failure: bool,
    /// The endpoint closed or reset the connection before answering.
    pub reset: bool,
    /// These exact status codes.
    pub statuses: Vec<u16>,
}

/// Why a `retryOn` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a retry condition (5xx, gateway-error, connect-failure, reset, or a status code 100-599)"
)]
pub struct UnknownRetryOn(pub String);

impl RetryOn {
    /// Parses Istio's comma-separated form, e.g. `5xx,connect-failure,429`.
    pub fn parse(s: &str) -> Result<Self, UnknownRetryOn> {
        let mut r = Self::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "connect-failure" => r.connect_failure = true,
                "reset" => r.reset = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => r.statuses.push(c),
                    _ => return Err(UnknownRetryOn(code.to_owned())),
                },
            }
        }
        Ok(r)
    }

    /// True when an answer with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        (self.five_xx && (500..=599).contains(&status))
            || (self.gateway_error && matches!(status, 502..=504))
            || self.statuses.contains(&status)
    }

    /// True when an attempt that hit its per-try timeout is retried.
    pub fn timeout(&self) -> bool {
        self.five_xx || self.gateway_error
    }
}

/// `retries`: how many times a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first attempt (Istio `attempts`); 0 disables retries.
    pub attempts: u32,
    /// Limit on each attempt; the route `timeout` still bounds the whole request.
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
}

impl Default for Retries {
    /// Without a `retries` block: two retries of connection failures only, which are always
    /// safe (the request never left). Istio also retries 503 by default; meshfed does not
    /// replay requests an app may have acted on unless told to.
    fn default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            },
        }
    }
}

/// `fault.delay`: wait before sending, for a share of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    pub share: Share,
    pub fixed_delay: Duration,
}

/// `fault.abort`: answer with a status without sending, for a share of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    pub share: Share,
    pub http_status: u16,
}

/// `fault`: injected by the caller's sidecar, before any attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

/// `connectionPool` (Istio `DestinationRule`): the circuit breaker. Requests beyond both
/// limits are refused at once with 503 instead of queueing without bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// HTTP/1.1 connections in use at once (`tcp.maxConnections`); each carries one request.
    /// An HTTP/2 service has one multiplexed connection per endpoint, bounded by
    /// `max_requests` instead.
    pub max_connections: u32,
    /// Requests waiting for a connection (`http.http1MaxPendingRequests`).
    pub max_pending_requests: u32,
    /// Requests in flight (`http.http2MaxRequests`; both HTTP versions, as in Envoy).
    pub max_requests: u32,
}

impl Default for ConnectionPool {
    /// Envoy's and Istio's defaults.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: u32::MAX,
        }
    }
}

/// `outlierDetection` (Istio `DestinationRule`): endpoints that keep failing are ejected from
/// load balancing for `baseEjectionTime` × the times they were ejected (at most 300 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers, connection failures or timeouts that eject (0: off).
    pub consecutive_5xx_errors: u32,
    /// Consecutive 502/503/504, connection failures or timeouts that eject (0: off).
    pub consecutive_gateway_errors: u32,
    pub base_ejection_time: Duration,
    /// Share of a service's endpoints that may be ejected at once; at least one may be, and
    /// the last available endpoint never is.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    /// Istio's defaults.
    fn default() -> Self {
        Self {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

/// The longest ejection, whatever the count (Envoy's `max_ejection_time` default).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// `loadBalancer.simple` (Istio `DestinationRule`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum LoadBalancer {
    /// Istio's default: of two endpoints (the next in round robin order and a random other),
    /// the one with fewer requests in flight; on a tie, the round-robin one.
    #[default]
    #[serde(rename = "LEAST_REQUEST")]
    LeastRequest,
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    #[serde(rename = "RANDOM")]
    Random,
}

impl LoadBalancer {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "LEAST_REQUEST" => Some(Self::LeastRequest),
            "ROUND_ROBIN" => Some(Self::RoundRobin),
            "RANDOM" => Some(Self::Random),
            _ => None,
        }
    }

    /// Chooses among `n` endpoints; `rr` is the round-robin counter's value, `random` a
    /// uniform draw, `available` whether an endpoint may be used (not ejected) and `load` its
    /// requests in flight. When none is available, the round-robin choice is used anyway.
    pub fn pick(
        self,
        n: usize,
        rr: usize,
        random: usize,
        available: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> usize {
        if n == 0 {
            return 0;
        }
        // The first available endpoint from `from` on, in order.
        let from = |from: usize| {
            (0..n)
                .map(|k| (from + k) % n)
                .find(|&i| available(i))
                .unwrap_or(from % n)
        };
        match self {
            Self::RoundRobin => from(rr),
            Self::Random => from(random),
            Self::LeastRequest => {
                let a = from(rr);
                if n == 1 {
                    return a;
                }
                // A random endpoint other than `a`.
                let b = from((a + 1 + random % (n - 1)) % n);
                if b != a && load(b) < load(a) { b } else { a }
            }
        }
    }
}

/// The policy for calls to one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Limit on the whole request, retries included (Istio `timeout`); none by default.
    pub timeout: Option<Duration>,
    pub retries: Retries,
    pub fault: Fault,
    pub connection_pool: ConnectionPool,
    /// Off unless configured, as in Istio.
    pub outlier_detection: Option<OutlierDetection>,
    pub load_balancer: LoadBalancer,
    /// Subsets and HTTP routes (see [`crate::routing`]).
    pub routing: crate::routing::Routing,
}

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?}: expected a number and a unit (ms, s, m, h, d)")]
    Syntax(String),
    #[error("{0:?}: unit must be ms, s, m, h or d")]
    Unit(String),
    #[error("{0:?}: must be more than zero")]
    Zero(String),
}

/// Parses `250ms`, `1.5s`, `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && !num.starts_with('.') && !num.ends_with('.'))
        .ok_or_else(|| DurationError::Syntax(s.to_owned()))?;
    let unit_secs = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(DurationError::Unit(s.to_owned())),
    };
    let d = Duration::try_from_secs_f64(n * unit_secs)
        .map_err(|_| DurationError::Syntax(s.to_owned()))?;
    if d.is_zero() {
        return Err(DurationError::Zero(s.to_owned()));
    }
    Ok(d)
}

/// [`parse_duration`] where zero is allowed too (`0`, `0s`, `0ms`…): for settings where zero
/// turns something off. The one place that says so; everything else refuses zero.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, DurationError> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    match parse_duration(s) {
        Err(DurationError::Zero(_)) => Ok(Duration::ZERO),
        r => r,
    }
}

/// Wait before retry `n` (1-based): exponential from 25 ms, capped at 250 ms, with full jitter
/// from `r` uniform in `[0, 1)` (Envoy's defaults).
pub fn backoff(n: u32, r: f64) -> Duration {
    let cap = Duration::from_millis(25)
        .saturating_mul(1 << n.saturating_sub(1).min(10))
        .min(Duration::from_millis(250));
    cap.mul_f64(r.clamp(0.0, 1.0))
}

/// Envoy's default retry budget: retries in flight may be 20% of requests in flight, and at
/// least 3, so retries cannot multiply load when an upstream is failing.
pub fn retry_allowed(active_requests: usize, active_retries: usize) -> bool {
    active_retries < (active_requests / 5).max(3)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn zero_is_allowed_only_by_the_zero_allowed_parser() {
        for z in ["0", "0s", "0ms", "0.0s", "00m"] {
            assert_eq!(parse_duration_or_zero(z), Ok(Duration::ZERO), "{z}");
            assert!(parse_duration(z).is_err(), "{z}");
        }
        assert_eq!(
            parse_duration_or_zero("250ms"),
            Ok(Duration::from_millis(250))
        );
        for bad in ["0x", "0parsecs", "-1s", "s", ""] {
            assert!(parse_duration_or_zero(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "5", "5x", ".5s", "5.s", "-1s", "1e3s", "NaNs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(matches!(parse_duration("0s"), Err(DurationError::Zero(_))));
    }

    #[test]
    fn shares() {
        assert_eq!(
            Share::from_percent(12.5).unwrap().parts_per_million(),
            125_000
        );
        assert_eq!(
            Share::from_percent(100.0).unwrap().parts_per_million(),
            Share::MILLION
        );
        assert!(Share::from_percent(100.1).is_none());
        assert!(Share::from_percent(-0.1).is_none());
        assert!(Share::from_percent(f64::NAN).is_none());
        let s = Share::from_percent(0.0).unwrap();
        assert!(!s.hit(0));
        assert!(Share::from_percent(100.0).unwrap().hit(Share::MILLION - 1));
    }

    #[test]
    fn retry_conditions() {
        let r = RetryOn::parse("gateway-error, 429").unwrap();
        assert!(r.status(503) && r.status(429) && !r.status(500) && r.timeout());
        let r = RetryOn::parse("5xx").unwrap();
        assert!(r.status(500) && r.status(599) && !r.status(404));
        assert!(!RetryOn::parse("connect-failure").unwrap().timeout());
        assert_eq!(
            RetryOn::parse("5xx,bogus").unwrap_err(),
            UnknownRetryOn("bogus".into())
        );
        assert!(RetryOn::parse("600").is_err());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(25));
        assert_eq!(backoff(2, 1.0), Duration::from_millis(50));
        assert_eq!(backoff(9, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(40, 0.5), Duration::from_millis(125));
        assert_eq!(backoff(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn load_balancers() {
        let all = |_| true;
        let idle = |_| 0;
        // Round robin and random skip unavailable endpoints.
        assert_eq!(LoadBalancer::RoundRobin.pick(3, 4, 0, all, idle), 1);
        assert_eq!(LoadBalancer::RoundRobin.pick(3, 1, 0, |i| i != 1, idle), 2);
        assert_eq!(LoadBalancer::Random.pick(3, 0, 2, all, idle), 2);
        // Nothing available: the round-robin choice.
        assert_eq!(LoadBalancer::RoundRobin.pick(3, 2, 0, |_| false, idle), 2);
        // Least request: the less loaded of two; ties go to the round-robin one.
        let load = |i: usize| [5, 0, 3][i];
        assert_eq!(LoadBalancer::LeastRequest.pick(3, 0, 0, all, load), 1);
        assert_eq!(LoadBalancer::LeastRequest.pick(3, 0, 1, all, load), 2);
        assert_eq!(LoadBalancer::LeastRequest.pick(3, 1, 0, all, load), 1);
        assert_eq!(LoadBalancer::LeastRequest.pick(2, 0, 7, all, idle), 0);
        assert_eq!(LoadBalancer::LeastRequest.pick(1, 5, 7, all, idle), 0);
        // The busy one is skipped only for a less loaded one that is available.
        assert_eq!(
            LoadBalancer::LeastRequest.pick(2, 0, 0, |i| i == 0, load),
            0
        );
        for rr in 0..20 {
            for r in 0..20 {
                let i = LoadBalancer::LeastRequest.pick(4, rr, r, |i| i != 2, |i| i);
                assert!(i < 4 && i != 2);
            }
        }
    }

    #[test]
    fn budget() {
        assert!(retry_allowed(1, 2));
        assert!(!retry_allowed(1, 3));
        assert!(retry_allowed(100, 19));
        assert!(!retry_allowed(100, 20));
    }
}
