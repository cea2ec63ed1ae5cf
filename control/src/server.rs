//! The `MeshConfig` service: workload certificates and the config stream.
//!
//! Every proxy is identified by the SPIFFE ID of its verified client certificate (or, for a
//! first certificate, by what it presents: in embedded mode a join credential bound to its one
//! workload; in Kubernetes mode, for now, the mesh's join secret). An anonymous caller that
//! proves nothing learns nothing, not even whether the workload exists. A proxy may obtain and subscribe only as the
//! workload whose service account that ID names. Each stream gets the current snapshot, then
//! every newer one; intermediate versions are skipped when a proxy is slow (snapshots are whole,
//! so the newest is all it needs). ACKs and NACKs are recorded per proxy for status.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_api::config::control_message::Msg as Out;
use meshfed_api::config::mesh_config_server::{MeshConfig, MeshConfigServer};
use meshfed_api::config::proxy_message::Msg as In;
use meshfed_api::config::{self as pb, ControlMessage, ProxyMessage};
use meshfed_core::federation::MeshFederation;
use meshfed_core::{SpiffeId, TrustDomain};
use meshfed_peering::reason::refusal;
use meshfed_peering::tls::{PeerConn, PeerInfo};
use meshfed_trust::join::JoinStore;
use meshfed_trust::svid::{Role, inspect};
use meshfed_trust::verify::{self, Expect, SharedBundles, SpiffeClientVerifier, SvidResolver};
use rustls_pki_types::CertificateSigningRequestDer;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::rotation::MeshCa;
use crate::{MAX_MESSAGE_BYTES, Snapshot};

/// Largest CSR accepted.
const MAX_CSR_BYTES: usize = 16 << 10;
/// How long a new stream may take to subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// A proxy that does not take a snapshot within this long is cut (it reconnects and gets the
/// newest one).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest NACK reason kept.
const MAX_REASON: usize = 2048;

/// What the control plane serves and how its proxies stand (`GET /status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlStatus {
    /// The version being served.
    pub version: u64,
    /// Why the newest mesh file was refused (the previous version stays served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    pub certificates_issued: u64,
    pub certificates_refused: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refusal: Option<String>,
    /// Per subscribed workload, `namespace/name`.
    pub proxies: BTreeMap<String, ProxyStatus>,
}

/// The control plane's status: updated in place by the tasks that own its parts (config
/// server, sources, import joiner), watched by its readers (the admin page, the CRD status
/// writer, the app's handle). Cloning shares it.
#[derive(Debug, Clone)]
pub struct StatusCell(Arc<watch::Sender<Arc<ControlStatus>>>);

impl Default for StatusCell {
    fn default() -> Self {
        Self(Arc::new(watch::channel(Arc::default()).0))
    }
}

impl StatusCell {
    /// Changes the status and tells its watchers.
    pub fn update(&self, f: impl FnOnce(&mut ControlStatus)) {
        self.0.send_modify(|st| f(Arc::make_mut(st)));
    }

    /// Changes the status when `f` says it changed something; only then are watchers told.
    pub fn update_if(&self, f: impl FnOnce(&mut ControlStatus) -> bool) {
        self.0.send_if_modified(|st| f(Arc::make_mut(st)));
    }

    /// The status now.
    pub fn get(&self) -> Arc<ControlStatus> {
        self.0.borrow().clone()
    }

    /// A receiver that sees every change from now on.
    pub fn watch(&self) -> watch::Receiver<Arc<ControlStatus>> {
        self.0.subscribe()
    }
}

/// What the control plane's admin endpoint serves at `/status`: its own status and, with
/// `--peering`, its peering node's under `peering`. The lab, the scenario checks and
/// `meshfed status` read it back as this type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminStatus {
    #[serde(flatten)]
    pub control: ControlStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peering: Option<meshfed_peering::status::NodeStatus>,
}

/// One proxy's standing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub identity: String,
    pub connected: bool,
    /// The newest version sent, ACKed, and the newest NACK with its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nacked: Option<Nacked>,
    /// A gateway's report: per peer, whether its ingress answered the last probe.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reachability: BTreeMap<String, Reachability>,
    /// A sidecar's report: whether its app accepts connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// One peer as a gateway last reported it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Reachability {
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Most peers one report may name.
const MAX_REPORTED_PEERS: usize = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Nacked {
    pub version: u64,
    pub reason: String,
}

/// How a caller without a certificate proves which workload it is.
#[derive(Clone)]
pub enum Enrolment {
    /// Embedded mode: a join credential bound to the one workload it names
    /// (`meshfed join create`), recorded in the CA folder.
    Join(JoinStore),
    /// Kubernetes mode: the pod's projected ServiceAccount token, reviewed by the cluster; it
    /// yields the identity of that service account only (Istio's model).
    ServiceAccount(Arc<dyn TokenReviewer>),
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Join(s) => f.debug_tuple("Join").field(s).finish(),
            Self::ServiceAccount(_) => f.write_str("ServiceAccount(..)"),
        }
    }
}

/// A ServiceAccount token as the cluster vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedToken {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to (a projected token); `None` for a token bound to nothing.
    pub pod: Option<String>,
}

/// Why a ServiceAccount token proves nothing (told to the log, never to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the token review failed: {0}")]
    Call(String),
    #[error("the cluster does not accept the token: {0}")]
    NotAuthenticated(String),
    #[error("the token is not for audience {0}")]
    WrongAudience(String),
    #[error("{0:?} is not a ServiceAccount")]
    NotServiceAccount(String),
}

impl ReviewError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Call(_) => "TokenReviewFailed",
            Self::NotAuthenticated(_) => "TokenNotAuthenticated",
            Self::WrongAudience(_) => "TokenWrongAudience",
            Self::NotServiceAccount(_) => "TokenNotServiceAccount",
        }
    }
}

/// What a ServiceAccount token review answers.
pub type Review<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<ReviewedToken, ReviewError>> + Send + 'a>>;

/// Checks a ServiceAccount token (in Kubernetes mode: the TokenReview API, audience `meshfed`).
pub trait TokenReviewer: Send + Sync {
    /// What the token proves, or why it proves nothing.
    fn review<'a>(&'a self, token: &'a str) -> Review<'a>;
}

/// The one answer an anonymous caller gets when it does not prove a workload: it says nothing
/// about which workloads exist or why (the control plane logs that).
const NOT_ENROLLED: &str = "a first certificate needs a valid join credential for this workload";

/// Longest ServiceAccount token sent to the cluster for review.
const MAX_TOKEN_BYTES: usize = 16 << 10;

/// The control plane's gRPC service.
#[derive(Clone)]
pub struct ControlPlane {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    ca: Arc<MeshCa>,
    enrolment: Enrolment,
    svid_ttl: Duration,
    status: StatusCell,
    readiness: Arc<watch::Sender<Readiness>>,
}

/// Workloads' readiness as their sidecars report it, by (namespace, name); a workload whose
/// sidecar left is not ready, one never heard of counts as ready.
pub type Readiness = BTreeMap<(String, String), bool>;

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("version", &self.snapshot.borrow().version)
            .field("svid_ttl", &self.svid_ttl)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Serves `snapshot`, signs with `ca`'s signing CA, accepts first-certificate requests that
    /// prove their workload by `enrolment`, records into `status`.
    pub fn new(
        snapshot: watch::Receiver<Arc<Snapshot>>,
        ca: Arc<MeshCa>,
        enrolment: Enrolment,
        status: StatusCell,
    ) -> Self {
        let version = snapshot.borrow().version;
        status.update(|st| st.version = version);
        Self {
            snapshot,
            ca,
            enrolment,
            svid_ttl: meshfed_trust::ca::DEFAULT_SVID_TTL,
            status,
            readiness: Arc::new(watch::channel(Readiness::new()).0),
        }
    }

    /// The workloads' readiness, as it changes.
    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.subscribe()
    }

    fn set_ready(&self, namespace: &str, workload: &str, ready: bool) {
        set_ready(&self.readiness, namespace, workload, ready);
    }

    /// Lifetime of the workload SVIDs it signs.
    #[must_use]
    pub fn with_svid_ttl(mut self, ttl: Duration) -> Self {
        self.svid_ttl = ttl;
        self
    }

    /// Serves on authenticated connections until `shutdown` completes.
    pub async fn serve<S>(
        self,
        incoming: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error>
    where
        S: tokio_stream::Stream<Item = std::io::Result<PeerConn>> + Send + 'static,
    {
        let svc = MeshConfigServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }

    /// Checks an anonymous caller's proof of the workload it asks for; one answer for every
    /// failure.
    async fn enrol(&self, r: &pb::CertifyRequest, now: SystemTime) -> Result<Requester, Status> {
        match &self.enrolment {
            Enrolment::Join(store) => store
                .check(&r.token, &r.namespace, &r.workload, now)
                .map(|rec| Requester::Join {
                    workload: format!("{}/{}", r.namespace, r.workload),
                    once: rec.once,
                })
                .map_err(|e| self.not_enrolled(r, &e.to_string())),
            Enrolment::ServiceAccount(reviewer) => {
                if r.token.is_empty() || r.token.len() > MAX_TOKEN_BYTES {
                    return Err(self.not_enrolled(r, "no usable ServiceAccount token"));
                }
                let t = reviewer
                    .review(&r.token)
                    .await
                    .map_err(|e| self.not_enrolled(r, &format!("[{}] {e}", e.reason())))?;
                if t.pod.is_none() {
                    return Err(self.not_enrolled(r, "the token is bound to no pod"));
                }
                if t.namespace != r.namespace {
                    return Err(
                        self.not_enrolled(r, &format!("the token is of namespace {}", t.namespace))
                    );
                }
                Ok(Requester::ServiceAccount(t))
            }
        }
    }

    /// Refuses an anonymous caller: the log and status say why, the caller only that it is
    /// not enrolled.
    fn not_enrolled(&self, r: &pb::CertifyRequest, why: &str) -> Status {
        let asked = format!(
            "{}/{}",
            r.namespace.chars().take(64).collect::<String>(),
            r.workload.chars().take(64).collect::<String>()
        );
        self.status.update(|st| {
            st.certificates_refused += 1;
            st.last_refusal = Some(format!("NotEnrolled: {asked}: {why}"));
        });
        tracing::warn!(reason = "NotEnrolled", workload = %asked, "refused a first certificate: {why}");
        refusal(Code::Unauthenticated, "NotEnrolled", NOT_ENROLLED)
    }

    fn refuse(&self, status: Status) -> Status {
        self.status.update(|st| {
            st.certificates_refused += 1;
            st.last_refusal = Some(status.message().to_owned());
        });
        tracing::warn!(
            reason = meshfed_peering::reason::reason_of(&status).unwrap_or("Refused"),
            "refused a certificate: {}",
            meshfed_peering::reason::detail_of(&status)
        );
        status
    }

    /// Runs one subscription; returns why it ended.
    async fn run(
        &self,
        caller: SpiffeId,
        inbound: &mut Streaming<ProxyMessage>,
        tx: &mpsc::Sender<Result<ControlMessage, Status>>,
    ) -> String {
        let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, inbound.message()).await;
        let sub = match first {
            Ok(Ok(Some(ProxyMessage {
                msg: Some(In::Subscribe(s)),
            }))) => s,
            Ok(Ok(None) | Err(_)) => return "the proxy left before subscribing".into(),
            Err(_) => return close(tx, "SubscribeTimeout", "no Subscribe in time").await,
            Ok(Ok(Some(_))) => {
                return close(tx, "ProtocolError", "the first message must be Subscribe").await;
            }
        };
        let snap = self.snapshot.borrow().clone();
        let id = match workload_identity(&snap.mesh, &sub.namespace, &sub.workload) {
            Ok(id) => id,
            Err(e) => return close(tx, "UnknownWorkload", e.to_string()).await,
        };
        if id != caller {
            return close(
                tx,
                "IdentityMismatch",
                format!(
                    "{caller} cannot subscribe as {}/{}",
                    sub.namespace, sub.workload
                ),
            )
            .await;
        }
        let who = match snap
            .mesh
            .catalog
            .workloads()
            .find(|w| w.name == sub.workload && w.namespace.as_str() == sub.namespace)
        {
            Some(w) => Subscriber::Workload(w.service.clone()),
            None => Subscriber::Gateway,
        };
        let key = format!("{}/{}", sub.namespace, sub.workload);
        let mut _connected = Connected::new(self, &key, &caller);
        if matches!(who, Subscriber::Workload(_)) {
            _connected.workload = Some((sub.namespace.clone(), sub.workload.clone()));
        }
        let mut rx = self.snapshot.clone();
        let mut sent = sub.running_version;
        loop {
            let cur = rx.borrow_and_update().clone();
            if cur.version != sent {
                let msg = ControlMessage {
                    msg: Some(Out::Snapshot(to_wire(&cur, &who))),
                };
                match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(msg))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "the proxy left".into(),
                    Err(_) => {
                        return "SlowReader: the proxy did not take a snapshot in time".into();
                    }
                }
                sent = cur.version;
                self.with_proxy(&key, |p| p.sent = Some(sent));
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return close(tx, "ShuttingDown", "the control plane is stopping").await;
                },
                msg = inbound.message() => match msg {
                    Ok(Some(ProxyMessage { msg: Some(In::Ack(a)) })) => {
                        self.with_proxy(&key, |p| p.acked = Some(a.version));
                    }
                    Ok(Some(ProxyMessage { msg: Some(In::Nack(n)) })) => {
                        let reason: String = n.reason.chars().take(MAX_REASON).collect();
                        tracing::warn!("{key} refused version {}: {reason}", n.version);
                        self.with_proxy(&key, |p| {
                            p.nacked = Some(Nacked { version: n.version, reason });
                        });
                    }
                    Ok(Some(ProxyMessage { msg: Some(In::Report(r)) })) => {
                        if r.peers.len() > MAX_REPORTED_PEERS {
                            return close(tx, "ProtocolError", format!("a report names {} peers; the limit is {MAX_REPORTED_PEERS}", r.peers.len())).await;
                        }
                        let reach: BTreeMap<String, Reachability> = r
                            .peers
                            .into_iter()
                            .map(|p| {
                                let name: String = p.peer.chars().take(253).collect();
                                (name, Reachability {
                                    reachable: p.reachable,
                                    rtt_us: (p.rtt_us > 0).then_some(p.rtt_us),
                                    error: (!p.error.is_empty())
                                        .then(|| p.error.chars().take(MAX_REASON).collect()),
                                })
                            })
                            .collect();
                        self.with_proxy(&key, |p| p.reachability = reach);
                        if let Some(w) = r.workload {
                            self.with_proxy(&key, |p| p.ready = Some(w.ready));
                            self.set_ready(&sub.namespace, &sub.workload, w.ready);
                        }
                    }
                    Ok(Some(_)) => {
                        return close(tx, "ProtocolError", "Subscribe may be sent only once").await;
                    }
                    Ok(None) | Err(_) => return "the proxy left".into(),
                },
            }
        }
    }

    fn with_proxy(&self, key: &str, f: impl FnOnce(&mut ProxyStatus)) {
        self.status
            .update_if(|st| st.proxies.get_mut(key).map(f).is_some());
    }
}

/// Marks a proxy connected for as long as its stream runs.
struct Connected {
    status: StatusCell,
    key: String,
    /// A workload whose sidecar this is: not ready once it leaves.
    workload: Option<(String, String)>,
    readiness: Arc<watch::Sender<Readiness>>,
}

fn set_ready(r: &watch::Sender<Readiness>, namespace: &str, workload: &str, ready: bool) {
    r.send_if_modified(|m| {
        let k = (namespace.to_owned(), workload.to_owned());
        if m.get(&k) == Some(&ready) {
            return false;
        }
        m.insert(k, ready);
        true
    });
}

impl Connected {
    fn new(cp: &ControlPlane, key: &str, id: &SpiffeId) -> Self {
        cp.status.update(|st| {
            let p = st.proxies.entry(key.to_owned()).or_default();
            p.identity = id.to_string();
            p.connected = true;
        });
        Self {
            status: cp.status.clone(),
            key: key.to_owned(),
            workload: None,
            readiness: cp.readiness.clone(),
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.status.update_if(|st| {
            st.proxies
                .get_mut(&self.key)
                .map(|p| p.connected = false)
                .is_some()
        });
        if let Some((ns, name)) = &self.workload {
            set_ready(&self.readiness, ns, name, false);
        }
    }
}

async fn close(
    tx: &mpsc::Sender<Result<ControlMessage, Status>>,
    reason: &str,
    detail: impl Into<String>,
) -> String {
    let detail = detail.into();
    let msg = ControlMessage {
        msg: Some(Out::Close(pb::Close {
            reason: reason.to_owned(),
            detail: detail.clone(),
        })),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Ok(msg))).await;
    format!("{reason}: {detail}")
}

/// Who a subscription is for.
enum Subscriber {
    Gateway,
    Workload(meshfed_core::ServiceKey),
}

/// The wire form of `s` for `who`: a gateway's carries its [`pb::GatewayConfig`], a
/// workload's the names its service is exported under.
fn to_wire(s: &Snapshot, who: &Subscriber) -> pb::Snapshot {
    let gateway = matches!(who, Subscriber::Gateway);
    // One pass over the peers' export views gives both the names and the peers' domains.
    let exports = match who {
        Subscriber::Workload(service) => s.mesh.exports_of(service),
        Subscriber::Gateway => Vec::new(),
    };
    let exported_names: std::collections::BTreeSet<String> =
        exports.iter().map(|(_, n)| n.to_string()).collect();
    let exported_to_domains: std::collections::BTreeSet<String> =
        exports.iter().map(|(td, _)| td.to_string()).collect();
    pb::Snapshot {
        version: s.version,
        mesh_json: s.mesh_json.to_string(),
        bundles: s
            .bundles
            .iter()
            .map(|(td, json)| pb::Bundle {
                trust_domain: td.to_string(),
                json: json.clone(),
            })
            .collect(),
        imports: s.imports.iter().map(import_to_wire).collect(),
        gateway: gateway.then(|| gateway_config(s)),
        exported_names: exported_names.into_iter().collect(),
        exported_to_domains: exported_to_domains.into_iter().collect(),
        unready_workloads: s
            .unready
            .iter()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect(),
        signing_root: s.signing_root.to_string(),
    }
}

fn import_to_wire(r: &meshfed_core::import::ImportedRoute) -> pb::ImportedService {
    let (healthy, total) = r.health.unwrap_or((0, 0));
    pb::ImportedService {
        hostname: r.hostname.to_string(),
        peer: r.peer.to_string(),
        exported_name: r.exported_name.to_string(),
        identities: r.identities.iter().map(ToString::to_string).collect(),
        egress: r.egress.to_string(),
        import_as_local: r.import_as_local,
        http2: r.http2,
        region: r
            .locality
            .as_ref()
            .map(|l| l.region().to_owned())
            .unwrap_or_default(),
        zone: r
            .locality
            .as_ref()
            .and_then(|l| l.zone().map(str::to_owned))
            .unwrap_or_default(),
        subzone: r
            .locality
            .as_ref()
            .and_then(|l| l.subzone().map(str::to_owned))
            .unwrap_or_default(),
        healthy,
        total,
    }
}

/// What the mesh's gateways serve: per peer, its egress identity and the local endpoints of
/// each name exported to it; per imported name, the peer ingress that carries it.
fn gateway_config(s: &Snapshot) -> pb::GatewayConfig {
    let ingress = s
        .mesh
        .peers
        .values()
        .map(|p| pb::GatewayIngressPeer {
            peer: p.name.to_string(),
            client_id: p.client_id.to_string(),
            exports: s
                .mesh
                .ingress_exports(p)
                .into_iter()
                .map(|(name, eps)| pb::GatewayExport {
                    exported_name: name.to_string(),
                    endpoints: eps.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        })
        .collect();
    let mut egress: Vec<pb::GatewayEgressRoute> = Vec::new();
    for r in s.imports.iter() {
        let Some(p) = s.mesh.peers.get(&r.peer) else {
            continue;
        };
        let Some(host) = p.addresses.first() else {
            continue;
        };
        // Two peers may export the same name (both call us by the same peer name); each
        // peer's egress carries its own.
        if egress
            .iter()
            .any(|e| e.exported_name == r.exported_name.as_str() && e.peer == r.peer.as_str())
        {
            continue;
        }
        let ingress = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, p.service_port).to_string(),
            Err(_) => format!("{host}:{}", p.service_port),
        };
        egress.push(pb::GatewayEgressRoute {
            exported_name: r.exported_name.to_string(),
            peer: p.name.to_string(),
            ingress,
            trust_domain: p.trust_domain.to_string(),
        });
    }
    pb::GatewayConfig { ingress, egress }
}

/// The control plane's TLS: it presents `svid`; clients with a certificate must be workloads
/// of its own trust domain (verified against `own`, its own bundle only, kept current); clients without one may
/// only ask for a first certificate, with the join secret.
pub fn tls_config(
    trust_domain: &TrustDomain,
    own: SharedBundles,
    svid: Arc<SvidResolver>,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let provider = verify::provider();
    let verifier =
        SpiffeClientVerifier::new(own, Expect::domain(trust_domain.clone()), provider.clone())
            .allow_anonymous();
    Ok(verify::server_config(svid, Arc::new(verifier), provider)?)
}

/// Why the control plane's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the mesh bundle: {0}")]
    Bundle(#[from] meshfed_trust::bundle::BundleError),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

/// The SPIFFE ID of workload `namespace/name` in `mesh`: one of its `workloads`, or one of its
/// federation `gateways` (in the control-plane namespace, as `<name>-service-account`).
pub fn workload_identity(
    mesh: &MeshFederation,
    namespace: &str,
    name: &str,
) -> Result<SpiffeId, UnknownWorkload> {
    let unknown = || UnknownWorkload {
        mesh: mesh.mesh.to_string(),
        namespace: namespace.chars().take(64).collect(),
        name: name.chars().take(64).collect(),
    };
    if mesh.namespace.as_str() == namespace && mesh.gateways.contains_key(name) {
        return SpiffeId::for_service_account(
            &mesh.trust_domain,
            &mesh.namespace,
            &format!("{name}-service-account"),
        )
        .map_err(|_| unknown());
    }
    let w = mesh
        .catalog
        .workloads()
        .find(|w| w.name == name && w.namespace.as_str() == namespace)
        .ok_or_else(unknown)?;
    SpiffeId::for_service_account(&mesh.trust_domain, &w.namespace, &w.service_account)
        .map_err(|_| unknown())
}

/// Who asked for a first certificate.
enum Requester {
    /// A join credential for this workload (`namespace/name`); `once`: used up by the
    /// certificate it yields.
    Join {
        workload: String,
        once: bool,
    },
    ServiceAccount(ReviewedToken),
}

impl std::fmt::Display for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Join { workload, .. } => write!(f, "join credential of {workload}"),
            Self::ServiceAccount(t) => write!(
                f,
                "ServiceAccount token of {}/{} (pod {})",
                t.namespace,
                t.service_account,
                t.pod.as_deref().unwrap_or("-")
            ),
        }
    }
}

/// Whether a pod running as `own` may hold `id`, the identity of `namespace/workload`: its own
/// account's, or — for a gateway process, which serves a peer's ingress and egress from one
/// pod — the identity of the other gateway of the same peer.
fn may_hold(
    mesh: &MeshFederation,
    own: &SpiffeId,
    namespace: &str,
    workload: &str,
    id: &SpiffeId,
) -> bool {
    if own == id {
        return true;
    }
    if mesh.namespace.as_str() != namespace {
        return false;
    }
    mesh.peers.values().any(|p| {
        let pair = [p.ingress_gateway.as_str(), p.egress_gateway.as_str()];
        pair.contains(&workload)
            && pair.iter().any(|g| {
                SpiffeId::for_service_account(
                    &mesh.trust_domain,
                    &mesh.namespace,
                    &format!("{g}-service-account"),
                )
                .is_ok_and(|gid| &gid == own)
            })
    })
}

/// A workload the mesh does not have (or whose identity is not a valid SPIFFE ID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mesh {mesh} has no workload {name:?} in namespace {namespace:?}")]
pub struct UnknownWorkload {
    pub mesh: String,
    pub namespace: String,
    pub name: String,
}

#[tonic::async_trait]
impl MeshConfig for ControlPlane {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let caller = PeerInfo::caller_of(&request);
        let r = request.into_inner();
        if r.csr_der.len() > MAX_CSR_BYTES {
            return Err(self.refuse(refusal(
                Code::InvalidArgument,
                "InvalidCsr",
                format!(
                    "csrDer is {} bytes; the limit is {MAX_CSR_BYTES}",
                    r.csr_der.len()
                ),
            )));
        }
        let now = SystemTime::now();
        // An anonymous caller proves which workload it is before it learns anything.
        let joined = match &caller {
            Some(_) => None,
            None => Some(self.enrol(&r, now).await?),
        };
        let mesh = self.snapshot.borrow().mesh.clone();
        let id = workload_identity(&mesh, &r.namespace, &r.workload)
            .map_err(|e| self.refuse(refusal(Code::NotFound, "UnknownWorkload", e)))?;
        // A ServiceAccount token yields its own account's identity, nothing else.
        if let Some(Requester::ServiceAccount(t)) = &joined {
            let own = SpiffeId::for_service_account(
                &mesh.trust_domain,
                &t.namespace
                    .parse()
                    .map_err(|_| self.not_enrolled(&r, "the token's namespace is not a name"))?,
                &t.service_account,
            )
            .map_err(|e| self.not_enrolled(&r, &e.to_string()))?;
            if !may_hold(&mesh, &own, &r.namespace, &r.workload, &id) {
                return Err(self.not_enrolled(
                    &r,
                    &format!("the token is of {own}; the workload runs as {id}"),
                ));
            }
        }
        if let Some(c) = &caller
            && c != &id
        {
            return Err(self.refuse(refusal(
                Code::PermissionDenied,
                "IdentityMismatch",
                format!("{c} may renew only its own certificate, not {id}'s"),
            )));
        }
        if r.csr_der.is_empty() {
            return Ok(Response::new(pb::CertifyResponse {
                spiffe_id: id.to_string(),
                ..Default::default()
            }));
        }
        // A once-only join credential is used up by the certificate it yields.
        if let (Some(Requester::Join { once: true, .. }), Enrolment::Join(store)) =
            (&joined, &self.enrolment)
        {
            store
                .redeem(&r.token, &r.namespace, &r.workload, now)
                .map_err(|e| self.not_enrolled(&r, &e.to_string()))?;
        }
        let signer = self.ca.signing();
        let chain = signer
            .sign_csr(
                &CertificateSigningRequestDer::from(r.csr_der),
                &id,
                self.svid_ttl,
                now,
            )
            .map_err(|e| self.refuse(refusal(Code::InvalidArgument, "InvalidCsr", e)))?;
        let leaf = chain
            .first()
            .and_then(|leaf| inspect(leaf, Role::Leaf, now).ok());
        let (not_before, not_after) = leaf
            .as_ref()
            .map(|i| (i.not_before.0, i.not_after.0))
            .unwrap_or_default();
        let requester = match (&caller, &joined) {
            (Some(c), _) => format!("renewal by {c}"),
            (None, Some(j)) => j.to_string(),
            (None, None) => "unknown".to_owned(),
        };
        tracing::info!(
            identity = %id,
            requester = %requester,
            serial = leaf.as_ref().map_or("", |i| i.serial.as_str()),
            not_after,
            "issued a certificate"
        );
        self.status.update(|st| st.certificates_issued += 1);
        Ok(Response::new(pb::CertifyResponse {
            chain_der: chain.into_iter().map(|c| c.to_vec()).collect(),
            not_before,
            not_after,
            spiffe_id: id.to_string(),
            signing_root: signer.signing_root_fingerprint(),
        }))
    }

    type StreamStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let Some(caller) = PeerInfo::caller_of(&request) else {
            return Err(Status::unauthenticated(
                "NoIdentity: the config stream needs the workload's SVID",
            ));
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let this = self.clone();
        tokio::spawn(async move {
            let why = this.run(caller.clone(), &mut inbound, &tx).await;
            tracing::info!("config stream of {caller} ended: {why}");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
