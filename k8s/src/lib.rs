//! meshfed's Kubernetes mode (`meshfed control --kube`): the cluster as the control plane's
//! config source, and CRD status.
//!
//! - [`render`]: the cluster (Services, EndpointSlices, injected Pods, Nodes, federation
//!   resources) rendered as the mesh file embedded mode reads, each federation resource
//!   validated on its own so a bad one is left out without touching the others.
//! - [`source`]: kube-runtime reflectors that re-render on every change and publish snapshots
//!   through the same path as embedded mode's file watcher.
//! - [`status`]: CRD status by server-side apply under one field manager.
//! - [`finalizer`]: ServiceMeshPeers keep a finalizer until a deleted peer's state is gone.
//! - [`lease`]: leader election with a Lease; only the leader writes to the API.
//! - [`secrets`]: the bootstrap Secrets.
//! - [`token_review`]: pods' ServiceAccount tokens checked with the TokenReview API.
//! - [`trust_store`]: peer bundles and peering-token records in a ConfigMap and a Secret.
//! - [`inject`]: `meshfed inject`, the sidecar added to pod templates (idempotent).
//! - [`redirect`]: the iptables rules the injected init container installs.

pub mod finalizer;
pub mod inject;
pub mod lease;
pub mod redirect;
pub mod render;
pub mod secrets;
pub mod source;
pub mod status;
pub mod token_review;
pub mod trust_store;

/// The Kubernetes client type (so that callers need not depend on kube themselves).
pub use kube::Client;

/// A client from KUBECONFIG, or the pod's service account in a cluster.
pub async fn connect() -> Result<Client, kube::Error> {
    Client::try_default().await
}

/// A client for the API server at `url` with no credentials (tests' in-memory servers).
pub fn client_at(url: &str) -> Result<Client, KubeError> {
    let parsed = url.parse::<http::Uri>().map_err(|e| KubeError::BadUrl {
        url: url.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(Client::try_from(kube::Config::new(parsed))?)
}

/// Why talking to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the Kubernetes API did not list every watched resource within {0:?}")]
    ListTimeout(std::time::Duration),
    #[error("a watch stopped before its first list: {0}")]
    WatchStopped(#[from] kube::runtime::reflector::store::WriterDropped),
    #[error("{url}: {detail}")]
    BadUrl { url: String, detail: String },
    #[error(transparent)]
    Source(#[from] meshfed_control::source::SourceError),
}

impl KubeError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Api(_) => "KubernetesApiError",
            Self::ListTimeout(_) => "ListTimeout",
            Self::WatchStopped(_) => "WatchStopped",
            Self::BadUrl { .. } => "BadUrl",
            Self::Source(e) => e.reason(),
        }
    }
}
