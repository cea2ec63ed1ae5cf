//! meshfed's federation gateways. An egress gateway takes a client sidecar's mTLS connection,
//! reads the server name from its ClientHello without terminating it, and carries the bytes to
//! the peer's ingress gateway; the ingress accepts only names exported to that peer and splices
//! to a local endpoint, so workload identity survives end to end and a peer reaches only its
//! exports.
//!
//! - [`sni`]: the ClientHello reader, built for hostile input.
//! - [`tunnel`]: the gateway-to-gateway tunnel, TCP + rustls or QUIC (quinn), and probes.
//! - [`relay`]: the egress, the ingress (both transports on one port), the discovery-port
//!   forwarder, graceful drain.
//! - [`stats`]: per-peer counters for `/status` and Prometheus `/metrics`.

pub mod relay;
pub mod sni;
pub mod stats;
pub mod tunnel;
