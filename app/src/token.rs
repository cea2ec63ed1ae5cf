//! Peering tokens (`meshfed peering token …`). Mesh A creates a signed one-time token and
//! records it in its store; mesh B accepts it: every check runs first, then B redeems it at A
//! (A receives B's bundle), stores A's bundle and gets A's `ServiceMeshPeer`. Nothing is
//! stored unless every step succeeds.
//!
//! The store is the CA folder or, with [`StoreAt::Kube`], the cluster (the Secret
//! `meshfed-peering-tokens` and the ConfigMap `meshfed-peer-bundles`, where `meshfed control
//! --kube` reads them).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_core::{Namespace, SpiffeId, TrustDomain};
use meshfed_crds::peer::{
    LocalObjectReference, ServiceMeshPeerGateways, ServiceMeshPeerRemote, ServiceMeshPeerSecurity,
};
use meshfed_crds::{ObjectMeta, ServiceMeshPeer, ServiceMeshPeerSpec};
use meshfed_trust::bundle::{BundleError, TrustBundleSet};
use meshfed_trust::ca::CertificateAuthority;
use meshfed_trust::store::{self, DirStore, StoreError, TrustStore};
pub use meshfed_trust::token::TokenRequest;
use meshfed_trust::token::{self, TokenError, Verified};

use crate::ca::CaDirError;

/// How long redeeming a token at its issuer may take.
pub const REDEEM_TIMEOUT: Duration = Duration::from_secs(10);

/// Where token records and peer bundles are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAt {
    /// The CA folder.
    Dir,
    /// The cluster, in the control plane's namespace.
    Kube { namespace: String },
}

/// Why a token could not be created or accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenFlowError {
    #[error(transparent)]
    Ca(#[from] CaDirError),
    #[error("connecting to the Kubernetes API (KUBECONFIG or the pod's service account): {0}")]
    Kube(#[from] meshfed_k8s::KubeError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{location}: {source}")]
    Store {
        location: String,
        source: StoreError,
    },
    #[error(
        "a namespace (--namespace) is needed to redeem the token: our egress identity lives there; or pass --no-redeem"
    )]
    NoNamespace,
    #[error("our egress identity: {0}")]
    Identity(#[from] meshfed_core::id::SpiffeIdError),
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("redeeming the token at {addr} failed: {source}; nothing was stored")]
    Redeem {
        addr: SocketAddr,
        source: meshfed_peering::redeem::RedeemError,
    },
}

impl TokenFlowError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Ca(e) => e.reason(),
            Self::Kube(e) => e.reason(),
            Self::Token(e) => e.reason(),
            Self::Bundle(e) => e.reason(),
            Self::Store { source, .. } => source.reason(),
            Self::NoNamespace => "NoNamespace",
            Self::Identity(e) => e.reason(),
            Self::Resolve { .. } | Self::NoAddress { .. } => "UnresolvedAddress",
            Self::Redeem { .. } => "RedeemFailed",
        }
    }
}

/// The store at `at` for the mesh `own`, whose CA folder is `dir`.
async fn open_store(
    at: &StoreAt,
    dir: &Path,
    own: &TrustDomain,
) -> Result<Arc<dyn TrustStore>, TokenFlowError> {
    Ok(match at {
        StoreAt::Dir => Arc::new(DirStore::new(dir, own.clone())),
        StoreAt::Kube { namespace } => {
            let client = meshfed_k8s::connect()
                .await
                .map_err(meshfed_k8s::KubeError::from)?;
            Arc::new(meshfed_k8s::trust_store::KubeTrustStore::new(
                client,
                namespace,
                own.clone(),
            ))
        }
    })
}

/// A created token and where it was recorded.
#[derive(Debug, Clone)]
pub struct Created {
    pub token: String,
    pub location: String,
}

/// Creates a token signed by the CA in `dir` and records it at `at`, where it can be
/// redeemed once. The request's `bundle_sequence` is set from the CA.
pub async fn create(
    dir: &Path,
    mut req: TokenRequest,
    at: &StoreAt,
) -> Result<Created, TokenFlowError> {
    let ca = crate::ca::load(dir)?;
    req.bundle_sequence = ca.sequence();
    let (token, pending) = token::create(&ca, &req, SystemTime::now())?;
    let store = open_store(at, dir, ca.trust_domain()).await?;
    let location = store.location();
    store::record_pending(&*store, pending)
        .await
        .map_err(|source| TokenFlowError::Store {
            location: location.clone(),
            source,
        })?;
    Ok(Created { token, location })
}

/// A token to accept.
#[derive(Debug, Clone)]
pub struct Accept {
    /// Our CA folder.
    pub dir: PathBuf,
    pub token: String,
    /// Our control-plane namespace: for the returned ServiceMeshPeer and our egress
    /// identity sent to the issuer.
    pub namespace: Option<Namespace>,
    /// Our mesh name, sent to the issuer for its records.
    pub mesh_name: String,
    /// Redeem the token at its issuer (else the issuer must import our bundle by hand).
    pub redeem: bool,
    pub store: StoreAt,
}

/// An accepted token: the issuer's ServiceMeshPeer, and where its bundle was stored.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub peer: ServiceMeshPeer,
    pub trust_domain: TrustDomain,
    pub location: String,
    /// Where the token was redeemed, if it was.
    pub redeemed_at: Option<SocketAddr>,
}

/// Accepts a token: checks it, redeems it at its issuer, stores the issuer's bundle.
pub async fn accept(a: Accept) -> Result<Accepted, TokenFlowError> {
    let ca = crate::ca::load(&a.dir)?;
    let store = open_store(&a.store, &a.dir, ca.trust_domain()).await?;
    let location = store.location();
    let at_store = |source| TokenFlowError::Store {
        location: location.clone(),
        source,
    };
    // Every check runs before anything is sent or stored.
    let mut held = TrustBundleSet::new();
    held.insert(ca.current_bundle()?)?;
    for b in store.peer_bundles().await.map_err(at_store)? {
        held.insert(b)?;
    }
    let v = store::check_token(
        &*store,
        &held,
        ca.trust_domain(),
        &a.token,
        SystemTime::now(),
    )
    .await
    .map_err(at_store)?;
    let redeemed_at = if a.redeem {
        let ns = a.namespace.as_ref().ok_or(TokenFlowError::NoNamespace)?;
        Some(redeem_at_issuer(&ca, &v, ns, a.mesh_name).await?)
    } else {
        None
    };
    store::accept(&*store, &v).await.map_err(at_store)?;
    Ok(Accepted {
        peer: issuer_peer(&v, a.namespace.map(|n| n.to_string())),
        trust_domain: v.trust_domain.clone(),
        location,
        redeemed_at,
    })
}

/// The ServiceMeshPeer of the token's issuer, as the accepting mesh applies it.
fn issuer_peer(v: &Verified, namespace: Option<String>) -> ServiceMeshPeer {
    let gateway = |side: &str| LocalObjectReference {
        name: Some(format!("{side}-{}", v.peer_name)),
    };
    ServiceMeshPeer {
        metadata: ObjectMeta {
            name: Some(v.peer_name.to_string()),
            namespace,
            annotations: Some([("meshfed.io/peering-token".to_owned(), v.id.clone())].into()),
            ..Default::default()
        },
        spec: ServiceMeshPeerSpec {
            remote: Some(ServiceMeshPeerRemote {
                addresses: Some(v.addresses.clone()),
                discovery_port: Some(i32::from(v.discovery_port)),
                service_port: Some(i32::from(v.service_port)),
            }),
            gateways: Some(ServiceMeshPeerGateways {
                ingress: Some(gateway("ingress")),
                egress: Some(gateway("egress")),
            }),
            security: Some(ServiceMeshPeerSecurity {
                client_id: Some(v.client_id.to_client_id()),
                trust_domain: Some(v.trust_domain.to_string()),
                certificate_chain: None,
            }),
        },
        status: None,
    }
}

/// Redeems the token at its issuer, sending our bundle and our egress identity.
async fn redeem_at_issuer(
    ca: &CertificateAuthority,
    v: &Verified,
    namespace: &Namespace,
    mesh_name: String,
) -> Result<SocketAddr, TokenFlowError> {
    let client_id = SpiffeId::for_service_account(
        ca.trust_domain(),
        namespace,
        &format!("egress-{}-service-account", v.peer_name),
    )?;
    let request = meshfed_api::peering::RedeemRequest {
        secret: v.secret.clone(),
        mesh: mesh_name,
        trust_domain: ca.trust_domain().to_string(),
        spiffe_bundle_json: ca.current_bundle()?.to_json().to_string(),
        client_id: client_id.to_client_id(),
    };
    let host = v.addresses.first().cloned().unwrap_or_default();
    let found = tokio::net::lookup_host((host.as_str(), v.discovery_port))
        .await
        .map(|mut addrs| addrs.next());
    let addr = match found {
        Ok(Some(addr)) => addr,
        Ok(None) => return Err(TokenFlowError::NoAddress { host }),
        Err(source) => return Err(TokenFlowError::Resolve { host, source }),
    };
    meshfed_peering::redeem::redeem(
        addr,
        v.server_id.clone(),
        v.bundle.clone(),
        request,
        REDEEM_TIMEOUT,
    )
    .await
    .map_err(|source| TokenFlowError::Redeem { addr, source })?;
    Ok(addr)
}
