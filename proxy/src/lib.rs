//! meshfed's sidecar data path (first slice): an outbound HTTP/1.1 listener that routes by
//! `Host` to a service's endpoints (round robin) over mTLS, expecting the identities that
//! serve the service; an inbound mTLS listener that verifies the caller's SVID, removes any
//! identity header the caller sent, adds the verified SPIFFE ID, and forwards plaintext to the
//! local app; and `echo`, the test workload that reports who called it.
//!
//! Not yet (issue "Minimal mesh"): the control-plane config stream, HTTP/2 and TCP listeners,
//! connection pooling, least-request balancing, retries, timeouts, outlier detection, circuit
//! breaking, fault injection, route matching, authorization policy, metrics.

pub mod echo;
pub mod http;
pub mod metrics;
pub mod outlier;
pub mod pool;
pub mod sidecar;
pub mod tcp;

/// The header through which the inbound side tells the app who called. Any copy sent by a
/// client is removed before the verified value is added.
pub const CLIENT_ID_HEADER: &str = "x-meshfed-client-id";
