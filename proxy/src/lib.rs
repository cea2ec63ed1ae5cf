//! meshfed's data path in the mesh: the sidecar ([`sidecar`]) — outbound HTTP/1.1 and HTTP/2
//! routed by `Host`/authority to a service's endpoints over mTLS with SPIFFE verification,
//! inbound mTLS with authorization policy and the caller's verified identity passed to the
//! app, TCP forwarding ([`tcp`]), connection pools ([`pool`]), load balancing, retries,
//! timeouts, outlier detection ([`outlier`]), circuit breaking, fault injection and route
//! matching, with Prometheus metrics ([`metrics`]) — and `echo` ([`echo`]), the test workload
//! that reports who called it.

mod accept;
pub mod admin;
pub mod config;
pub mod dns;
pub mod echo;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod outlier;
pub mod pool;
pub mod sidecar;
pub mod tcp;

/// The header through which the inbound side tells the app who called. Any copy sent by a
/// client is removed before the verified value is added.
pub const CLIENT_ID_HEADER: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-meshfed-client-id");

/// Envoy's header naming the client certificate: meshfed sets no such header, and removes
/// every client-sent copy before a request reaches the app (an app ported from Istio may
/// trust it), as Envoy's `SANITIZE` does.
pub const FORWARDED_CLIENT_CERT: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-forwarded-client-cert");
