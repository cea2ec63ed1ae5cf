//! Joining a mesh's control plane: the bootstrap file a proxy joins with (where the control
//! plane listens, the identity it presents, the mesh's trust bundle, and what authorizes a
//! first certificate), and the constant-time check of a secret.
//!
//! In embedded mode the control plane writes the file without a secret, as a template;
//! `meshfed join create` adds a join credential bound to one workload ([`crate::join`]) and
//! writes that workload's file (mode 0600). In Kubernetes mode the bootstrap Secrets still
//! carry the mesh-wide join secret, which yields any workload's identity, until pods present
//! their ServiceAccount tokens. Either is used only for the first certificate; renewals
//! authenticate with the current SVID.

use std::net::SocketAddr;
use std::path::Path;

use meshfed_core::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

use crate::bundle::{BundleError, TrustBundle};

/// Largest bootstrap file read.
const MAX_BYTES: usize = 256 << 10;

/// The bootstrap file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bootstrap {
    /// The control plane's config and certificate endpoint (port 15012 by default).
    pub control_plane: SocketAddr,
    /// The identity the control plane must present.
    pub control_plane_id: SpiffeId,
    pub trust_domain: TrustDomain,
    /// The mesh's SPIFFE bundle, to verify the control plane before holding an SVID.
    pub bundle: serde_json::Value,
    /// What the workload presents for its first certificate: its join credential (embedded
    /// mode, `meshfed join create`), or the mesh's join secret (Kubernetes mode). Empty in the
    /// control plane's own file, a template to mint workloads' files from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Kubernetes mode: the file holding the pod's projected ServiceAccount token (audience
    /// `meshfed`, renewed by the kubelet), read afresh for each first certificate. Takes the
    /// place of `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
}

impl Bootstrap {
    /// The mesh's bundle, checked.
    pub fn trust_bundle(&self) -> Result<TrustBundle, BootstrapError> {
        let text = self.bundle.to_string();
        let (bundle, _) = TrustBundle::from_json(self.trust_domain.clone(), &text)
            .map_err(|e| BootstrapError::Bundle(self.trust_domain.to_string(), e))?;
        if self.control_plane_id.trust_domain() != &self.trust_domain {
            return Err(BootstrapError::Field(
                "controlPlaneId",
                format!(
                    "{} is not in trust domain {}",
                    self.control_plane_id, self.trust_domain
                ),
            ));
        }
        Ok(bundle)
    }

    /// Reads and checks a bootstrap file.
    pub fn read(path: &Path) -> Result<Self, BootstrapError> {
        let io = |e| BootstrapError::Io(path.display().to_string(), e);
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_BYTES as u64 {
            return Err(BootstrapError::Field(
                "(file)",
                format!("{} bytes; the limit is {MAX_BYTES}", meta.len()),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let b: Self = serde_json::from_str(&text)
            .map_err(|e| BootstrapError::Json(path.display().to_string(), e.to_string()))?;
        if !b.token.is_empty() && (b.token.len() < 16 || b.token.len() > 128) {
            return Err(BootstrapError::Field(
                "token",
                "must be 16 to 128 characters".into(),
            ));
        }
        b.trust_bundle()?;
        Ok(b)
    }

    /// Writes the file with mode 0600 (it holds the join secret).
    pub fn write(&self, path: &Path) -> Result<(), BootstrapError> {
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| BootstrapError::Json(path.display().to_string(), e.to_string()))?;
        crate::ca::write_file(path, &body, 0o600)
            .map_err(|e| BootstrapError::Write(path.display().to_string(), e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is not a bootstrap file: {1}")]
    Json(String, String),
    #[error("bootstrap field {0}: {1}")]
    Field(&'static str, String),
    #[error("bootstrap field bundle (trust domain {0}): {1}")]
    Bundle(String, BundleError),
    #[error("writing {0}: {1}")]
    Write(String, String),
}
