//! The mesh control plane (`meshfed control`) and the proxy side of its config stream.
//!
//! - [`source`]: the embedded-mode config source — the mesh file, re-read on change, validated
//!   whole; a file with any error keeps the previous snapshot.
//! - [`rotation`]: the mesh CA across root rotations — a new root is trusted everywhere
//!   before it signs.
//! - [`server`]: the `MeshConfig` service (`config.proto`): signs workload CSRs with the mesh CA
//!   and streams versioned snapshots to proxies, recording each proxy's ACK or NACK.
//! - [`imports`]: the served snapshot — the file's, joined with what peers export to us
//!   (through the peering importers), resolved to routes via our egress gateways.
//! - [`client`]: what a proxy runs — first certificate with the bootstrap token, renewal over
//!   mTLS, the subscription with validation, ACK/NACK, and reconnection with backoff while it
//!   keeps serving its last good snapshot.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meshfed_core::federation::MeshFederation;
use meshfed_core::{SpiffeId, TrustDomain};

pub mod client;
pub mod imports;
pub mod rotation;
pub mod server;
pub mod source;

/// Service account the control plane runs as, in the mesh's control-plane namespace.
pub const CONTROL_SERVICE_ACCOUNT: &str = "meshfed-control";

/// Largest config message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The identity the control plane of `mesh` presents.
pub fn control_plane_id(
    mesh: &MeshFederation,
) -> Result<SpiffeId, meshfed_core::id::SpiffeIdError> {
    SpiffeId::for_service_account(&mesh.trust_domain, &mesh.namespace, CONTROL_SERVICE_ACCOUNT)
}

/// One version of the configuration the control plane serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Rises with every change; starts at the control plane's start time in milliseconds, so
    /// a restarted control plane never reuses a version.
    pub version: u64,
    pub mesh: Arc<MeshFederation>,
    /// The mesh document as JSON (what proxies receive and validate).
    pub mesh_json: Arc<str>,
    /// SPIFFE bundle JSON per trust domain: the mesh's own and its peers'.
    pub bundles: Vec<(TrustDomain, String)>,
    /// Fingerprint of the root the mesh's certificates should come from (empty: any).
    pub signing_root: Arc<str>,
    /// Services imported from peers, resolved (empty without peering).
    pub imports: Arc<Vec<meshfed_core::import::ImportedRoute>>,
    /// Workloads (namespace, name) that are not ready.
    pub unready: Arc<std::collections::BTreeSet<(String, String)>>,
}

impl Snapshot {
    /// The first version of a control plane started now.
    pub fn first_version() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(1))
    }

    /// True when `other` carries the same configuration (whatever its version).
    pub fn same_content(&self, other: &Self) -> bool {
        self.mesh_json == other.mesh_json
            && self.bundles == other.bundles
            && self.signing_root == other.signing_root
            && self.imports == other.imports
            && self.unready == other.unready
            && self.mesh.peers == other.mesh.peers
    }
}

/// What a federation gateway receives (only gateways get it): per peer, who its egress is and
/// what it may reach through our ingress; per imported name, the peer ingress that carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayPlan {
    pub ingress: Vec<IngressGrant>,
    pub egress: Vec<EgressTarget>,
}

/// One peer at our ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressGrant {
    pub peer: meshfed_core::PeerName,
    /// The identity its egress gateway presents (`spec.security.clientID`).
    pub client_id: SpiffeId,
    /// Exported name → the local service's workload inbound addresses.
    pub exports: std::collections::BTreeMap<meshfed_core::Hostname, Vec<std::net::SocketAddr>>,
}

/// One name a peer exports to us, as our egress carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressTarget {
    pub exported_name: meshfed_core::Hostname,
    pub peer: meshfed_core::PeerName,
    /// The peer's ingress gateway, `host:port`.
    pub ingress: String,
    /// The trust domain its SVID must belong to.
    pub trust_domain: TrustDomain,
}
