//! meshfed's domain model and pure federation logic.
//!
//! This crate holds validated identifiers ([`id`]), the local service [`catalog`], the
//! [`export`] view a peer may see, the [`import`] mapping of a peer's exports to local names
//! (aliases, `domainSuffix`, `importAsLocal`, locality) with conflict detection, and
//! [`federation::explain`], which combines them for one mesh; and the sans-IO peering
//! protocol: the [`session`] state machine and the [`stream`] of snapshots and deltas.
//!
//! It does no I/O: no tokio, no sockets, no files, no clock. Wire formats (Kubernetes CRDs,
//! protobuf) live in other crates and convert into these types at their edge.

pub mod authz;
pub mod catalog;
pub mod cutoff;
pub mod export;
pub mod failover;
pub mod federation;
pub mod id;
pub mod import;
pub mod locality;
pub mod mapping;
pub mod name;
pub mod routing;
pub mod selector;
pub mod session;
pub mod stream;
pub mod traffic;

pub use catalog::{Catalog, Protocol, Service, ServicePort};
pub use id::{
    Hostname, MeshName, Namespace, PeerName, ServiceKey, ServiceName, SpiffeId, TrustDomain,
};
