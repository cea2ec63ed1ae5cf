//! The mesh control plane (`meshfed control`) and the proxy side of its config stream.
//!
//! - [`source`]: the embedded-mode config source — the mesh file, re-read on change, validated
//!   whole; a file with any error keeps the previous snapshot.
//! - [`server`]: the `MeshConfig` service (`config.proto`): signs workload CSRs with the mesh CA
//!   and streams versioned snapshots to proxies, recording each proxy's ACK or NACK.
//! - [`client`]: what a proxy runs — first certificate with the bootstrap token, renewal over
//!   mTLS, the subscription with validation, ACK/NACK, and reconnection with backoff while it
//!   keeps serving its last good snapshot.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meshfed_core::federation::MeshFederation;
use meshfed_core::{SpiffeId, TrustDomain};

pub mod client;
pub mod server;
pub mod source;

/// Service account the control plane runs as, in the mesh's control-plane namespace.
pub const CONTROL_SERVICE_ACCOUNT: &str = "meshfed-control";

/// Where the control plane and the client report what they do (a line each).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

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
        self.mesh_json == other.mesh_json && self.bundles == other.bundles
    }
}
