//! meshfed's federation gateways. An egress gateway takes a client sidecar's mTLS connection,
//! reads the server name from its ClientHello without terminating it, and carries the bytes to
//! the peer's ingress gateway; the ingress accepts only names exported to that peer and splices
//! to a local endpoint, so workload identity survives end to end and a peer reaches only its
//! exports.
//!
//! Built so far: the ClientHello reader ([`sni`]) and the egress and ingress over a TCP + rustls
//! tunnel ([`relay`]). To come: the QUIC transport, configuration from the control plane,
//! discovery-port forwarding, per-peer metrics, probing and graceful drain.

pub mod relay;
pub mod sni;
