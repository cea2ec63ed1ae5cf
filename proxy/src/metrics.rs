//! The sidecar's counters and histograms, exported in the Prometheus text format on the admin
//! port. Labels are bounded: direction, the configured service names, status classes and
//! fixed outcome names — never addresses, paths or caller identities.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which listener handled a request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl EncodeLabelValue for Direction {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let name = match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// The called service's hostname (outbound) or this workload's service (inbound).
    pub service: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// A stable reason: `IdentityNotAllowed`, `UnknownTrustDomain`, `UnknownServerName`…
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: Direction,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    /// `forwarded`, `denied`, `no_endpoint`, `upstream_unavailable` or `app_unavailable`.
    pub result: &'static str,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

const CODES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "other"];

/// One service's request counters (by status class) and latency histogram.
#[derive(Debug)]
pub struct ServiceMetrics {
    direction: Direction,
    service: String,
    requests: Family<RequestLabels, Counter>,
    latency_family: LatencyFamily,
    codes: [std::sync::OnceLock<Counter>; 5],
    latency: std::sync::OnceLock<Histogram>,
}

impl ServiceMetrics {
    /// Counts one answered request and its latency.
    pub fn record(&self, status: u16, took: Duration) {
        let i = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            500..=599 => 3,
            _ => 4,
        };
        self.codes[i]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        direction: self.direction,
                        service: self.service.clone(),
                        code: CODES[i],
                    })
                    .clone()
            })
            .inc();
        self.latency
            .get_or_init(|| {
                self.latency_family
                    .get_or_create(&LatencyLabels {
                        direction: self.direction,
                        service: self.service.clone(),
                    })
                    .clone()
            })
            .observe(took.as_secs_f64());
    }
}

/// Every count the sidecar keeps. Counters are shared with the registry, so tests read them
/// directly and `/metrics` shows the same numbers.
#[derive(Debug)]
pub struct Stats {
    /// Inbound requests that passed authorization and were forwarded to the app.
    pub allowed: Counter,
    /// Inbound requests refused by an authorization policy (403).
    pub denied: Counter,
    /// Inbound requests refused before authorization because their path is unsafe (400).
    pub bad_requests: Counter,
    /// Outbound attempts made after the first one.
    pub retries: Counter,
    /// Retries not made because the retry budget was spent.
    pub retry_budget_exhausted: Counter,
    /// Outbound requests that ran past the route `timeout` (504).
    pub timeouts: Counter,
    /// Outbound requests answered by an injected abort.
    pub fault_aborts: Counter,
    /// Outbound requests held by an injected delay.
    pub fault_delays: Counter,
    /// Outbound requests refused because the connection pool and its queue were full (503).
    pub overflows: Counter,
    /// Endpoints ejected by outlier detection.
    pub ejections: Counter,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: LatencyFamily,
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// Inbound connections refused at the handshake, by reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// TCP streams by outcome.
    pub tcp_streams: Family<TcpLabels, Counter>,
    /// Outbound attempts in flight (waiting for a connection included).
    pub upstream_active: Gauge,
    registry: Registry,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshfed");
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let allowed = counter("authz_allowed", "Inbound requests allowed by authorization");
        let denied = counter(
            "authz_denied",
            "Inbound requests denied by authorization (403)",
        );
        let bad_requests = counter(
            "bad_path",
            "Inbound requests refused for an unsafe path before authorization (400)",
        );
        let retries = counter("retries", "Outbound attempts after the first");
        let retry_budget_exhausted = counter(
            "retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
        );
        let timeouts = counter("timeouts", "Outbound requests past the route timeout (504)");
        let fault_aborts = counter(
            "fault_aborts",
            "Outbound requests aborted by fault injection",
        );
        let fault_delays = counter(
            "fault_delays",
            "Outbound requests delayed by fault injection",
        );
        let overflows = counter(
            "overflows",
            "Outbound requests refused by the circuit breaker (503)",
        );
        let ejections = counter(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered", requests.clone());
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from request to response head",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register("tls_handshakes", "mTLS handshakes", handshakes.clone());
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "inbound_refusals",
            "Inbound connections refused at the handshake, by reason",
            refusals.clone(),
        );
        let tcp_streams = Family::<TcpLabels, Counter>::default();
        registry.register("tcp_streams", "TCP streams by outcome", tcp_streams.clone());
        let upstream_active = Gauge::default();
        registry.register(
            "upstream_requests_active",
            "Outbound attempts in flight",
            upstream_active.clone(),
        );
        Self {
            upstream_active,
            allowed,
            denied,
            bad_requests,
            retries,
            retry_budget_exhausted,
            timeouts,
            fault_aborts,
            fault_delays,
            overflows,
            ejections,
            requests,
            latency,
            handshakes,
            refusals,
            tcp_streams,
            registry,
        }
    }

    /// The request counters and latency histogram of one service, each resolved on first
    /// use and kept, so the request path neither allocates label values nor looks them up.
    pub fn service(&self, direction: Direction, service: &str) -> ServiceMetrics {
        ServiceMetrics {
            direction,
            service: service.to_owned(),
            requests: self.requests.clone(),
            latency_family: self.latency.clone(),
            codes: Default::default(),
            latency: std::sync::OnceLock::new(),
        }
    }

    /// Counts one TCP stream's outcome.
    pub fn tcp(&self, direction: Direction, result: &'static str) {
        self.tcp_streams
            .get_or_create(&TcpLabels { direction, result })
            .inc();
    }

    /// Counts one inbound connection refused at the handshake.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts one mTLS handshake.
    pub fn handshake(&self, direction: Direction, ok: bool) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                direction,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The Prometheus text exposition of everything above.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
