//! meshfed's federation gateways. An egress gateway takes a client sidecar's mTLS connection,
//! reads the server name from its ClientHello without terminating it, and carries the bytes to
//! the peer's ingress gateway; the ingress accepts only names exported to that peer and splices
//! to a local endpoint, so workload identity survives end to end and a peer reaches only its
//! exports.
//!
//! This first slice holds the ClientHello reader ([`sni`]); the tunnel, egress and ingress
//! follow.

pub mod sni;
