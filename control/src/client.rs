//! The proxy side: certificates from the control plane and the config subscription.
//!
//! A received snapshot is validated exactly like a mesh file (every field, every reference)
//! and its bundles like imported bundles; only then is it handed to the proxy, whose answer
//! becomes the ACK or the NACK. Nothing about a refused snapshot is applied. When the control
//! plane cannot be reached the proxy keeps its last good configuration and certificate and
//! retries with jittered backoff (200 ms doubling to 5 s).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::task::AbortOnDropHandle;

use meshfed_api::config::control_message::Msg as Out;
use meshfed_api::config::mesh_config_client::MeshConfigClient;
use meshfed_api::config::proxy_message::Msg as In;
use meshfed_api::config::{self as pb, ProxyMessage};
use meshfed_core::import::ImportedRoute;
use meshfed_core::{SpiffeId, TrustDomain};
use meshfed_crds::validate::{self, LoadedMesh};
use meshfed_trust::bootstrap::Bootstrap;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::verify::{self, Expect, SharedBundles, SpiffeServerVerifier, SvidResolver};
use meshfed_trust::{Svid, TrustBundle};
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::MAX_MESSAGE_BYTES;

/// Longest wait for a connection or an answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a call to the control plane failed: a reason token and detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct ClientError {
    pub reason: String,
    pub detail: String,
}

impl ClientError {
    fn new(reason: &str, detail: impl std::fmt::Display) -> Self {
        Self {
            reason: reason.to_owned(),
            detail: detail.to_string(),
        }
    }

    /// A refusal from the control plane carries its reason in metadata
    /// (`meshfed_peering::reason`); anything else (a broken connection, an h2 error) is
    /// `StreamBroken`.
    fn from_status(s: &tonic::Status) -> Self {
        match meshfed_peering::reason::reason_of(s) {
            Some(reason) => Self::new(reason, meshfed_peering::reason::detail_of(s)),
            None => Self::new("StreamBroken", s.message()),
        }
    }
}

/// A validated snapshot, ready to apply.
#[derive(Debug, Clone)]
pub struct Received {
    pub version: u64,
    pub mesh: LoadedMesh,
    pub bundles: TrustBundleSet,
    /// Services imported from peers.
    pub imports: Vec<ImportedRoute>,
    /// A gateway's configuration (gateways only).
    pub gateway: Option<crate::GatewayPlan>,
    /// Names peers reach this workload's service by.
    pub exported_names: Vec<meshfed_core::Hostname>,
    /// The trust domains of the peers the workload's service is exported to.
    pub exported_to: std::collections::BTreeSet<meshfed_core::TrustDomain>,
    /// Workloads (namespace, name) that are not ready.
    pub unready: std::collections::BTreeSet<(String, String)>,
}

/// Most imported services one snapshot may carry, and identities per import.
const MAX_IMPORTS: usize = 100_000;
const MAX_IDENTITIES: usize = 64;
/// Most peers, names and endpoints a gateway configuration may carry.
const MAX_GATEWAY_ITEMS: usize = 100_000;

/// Why a proxy refused a snapshot: a stable reason and what was wrong (the NACK it sends
/// carries the detail, which names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct SnapshotRefused {
    /// `InvalidSnapshot` (it does not validate) or `ApplyFailed` (the proxy could not use it).
    pub reason: &'static str,
    pub detail: String,
}

impl SnapshotRefused {
    /// A snapshot that could not be used by the proxy.
    pub fn apply_failed(detail: impl std::fmt::Display) -> Self {
        Self {
            reason: "ApplyFailed",
            detail: detail.to_string(),
        }
    }
}

fn invalid(detail: String) -> SnapshotRefused {
    SnapshotRefused {
        reason: "InvalidSnapshot",
        detail,
    }
}

fn import_from_wire(w: &pb::ImportedService) -> Result<ImportedRoute, SnapshotRefused> {
    let field = |name: &str, e: &dyn std::fmt::Display| invalid(format!("{name}: {e}"));
    if w.identities.len() > MAX_IDENTITIES {
        return Err(invalid(format!(
            "identities: {} entries; the limit is {MAX_IDENTITIES}",
            w.identities.len()
        )));
    }
    let identities = w
        .identities
        .iter()
        .enumerate()
        .map(|(i, id)| {
            id.parse::<SpiffeId>()
                .map_err(|e| field(&format!("identities[{i}]"), &e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if identities.is_empty() {
        return Err(invalid(
            "identities: none; a service nobody may serve cannot be called".into(),
        ));
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (region, zone, subzone) = (opt(&w.region), opt(&w.zone), opt(&w.subzone));
    let locality = meshfed_core::locality::Locality::new(
        region.as_deref(),
        zone.as_deref(),
        subzone.as_deref(),
    )
    .map_err(|e| field("locality", &e))?;
    if w.healthy > w.total {
        return Err(invalid(format!(
            "healthy: {} of {} endpoints is more than all of them",
            w.healthy, w.total
        )));
    }
    Ok(ImportedRoute {
        hostname: w.hostname.parse().map_err(|e| field("hostname", &e))?,
        peer: w.peer.parse().map_err(|e| field("peer", &e))?,
        exported_name: w
            .exported_name
            .parse()
            .map_err(|e| field("exportedName", &e))?,
        identities,
        egress: w
            .egress
            .parse()
            .map_err(|_| invalid(format!("egress: {:?} is not an ip:port address", w.egress)))?,
        import_as_local: w.import_as_local,
        http2: w.http2,
        locality,
        health: (w.total > 0).then_some((w.healthy, w.total)),
    })
}

fn gateway_from_wire(w: &pb::GatewayConfig) -> Result<crate::GatewayPlan, SnapshotRefused> {
    let items = w.ingress.iter().map(|p| 1 + p.exports.len()).sum::<usize>() + w.egress.len();
    if items > MAX_GATEWAY_ITEMS {
        return Err(invalid(format!(
            "gateway: {items} entries; the limit is {MAX_GATEWAY_ITEMS}"
        )));
    }
    let mut plan = crate::GatewayPlan::default();
    for (i, p) in w.ingress.iter().enumerate() {
        let at =
            |f: &str, e: &dyn std::fmt::Display| invalid(format!("gateway.ingress[{i}].{f}: {e}"));
        let mut exports = std::collections::BTreeMap::new();
        for (j, x) in p.exports.iter().enumerate() {
            let name: meshfed_core::Hostname = x
                .exported_name
                .parse()
                .map_err(|e| at(&format!("exports[{j}].exportedName"), &e))?;
            let eps = x
                .endpoints
                .iter()
                .map(|a| {
                    a.parse::<std::net::SocketAddr>().map_err(|_| {
                        at(
                            &format!("exports[{j}].endpoints"),
                            &format!("{a:?} is not an ip:port address"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            exports.insert(name, eps);
        }
        plan.ingress.push(crate::IngressGrant {
            peer: p.peer.parse().map_err(|e| at("peer", &e))?,
            client_id: p.client_id.parse().map_err(|e| at("clientId", &e))?,
            exports,
        });
    }
    for (i, r) in w.egress.iter().enumerate() {
        let at =
            |f: &str, e: &dyn std::fmt::Display| invalid(format!("gateway.egress[{i}].{f}: {e}"));
        if r.ingress.len() > 300 || !r.ingress.contains(':') {
            return Err(at(
                "ingress",
                &format!("{:?} is not a host:port address", r.ingress),
            ));
        }
        plan.egress.push(crate::EgressTarget {
            exported_name: r
                .exported_name
                .parse()
                .map_err(|e| at("exportedName", &e))?,
            peer: r.peer.parse().map_err(|e| at("peer", &e))?,
            ingress: r.ingress.clone(),
            trust_domain: r.trust_domain.parse().map_err(|e| at("trustDomain", &e))?,
        });
    }
    Ok(plan)
}

/// One snapshot for the proxy to apply; it answers on `done` (`Err` = NACK with the reason).
#[derive(Debug)]
pub struct Update {
    pub received: Received,
    pub done: oneshot::Sender<Result<(), SnapshotRefused>>,
}

/// Where the subscription stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientState {
    pub connected: bool,
    /// The version the proxy runs.
    pub running: Option<u64>,
    /// The newest refused version and why.
    pub nacked: Option<(u64, String)>,
    pub last_error: Option<String>,
}

/// What a proxy reports (see `config.proto`'s `Report`).
pub type Reports = watch::Receiver<pb::Report>;

/// A proxy's connection to its control plane.
#[derive(Clone)]
pub struct Client {
    boot: Arc<Bootstrap>,
    namespace: String,
    workload: String,
    bundles: SharedBundles,
    reports: Option<Reports>,
    roots: Roots,
}

/// Which root the proxy's certificate came from, and which one the control plane names
/// (shared with sibling clients).
#[derive(Debug, Clone)]
struct Roots {
    held: Arc<std::sync::Mutex<String>>,
    wanted: Arc<watch::Sender<String>>,
}

impl Roots {
    fn held(&self) -> String {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The control plane names a root our certificate does not come from.
    fn stale(&self) -> bool {
        let wanted = self.wanted.borrow().clone();
        !wanted.is_empty() && wanted != self.held()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("control_plane", &self.boot.control_plane)
            .field("workload", &format!("{}/{}", self.namespace, self.workload))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for workload `namespace/workload`, trusting the bootstrap bundle until the
    /// first snapshot brings the full set.
    pub fn new(boot: Bootstrap, namespace: &str, workload: &str) -> Result<Self, ClientError> {
        let own = boot
            .trust_bundle()
            .map_err(|e| ClientError::new("BadBootstrap", e))?;
        let mut set = TrustBundleSet::new();
        set.insert(own)
            .map_err(|e| ClientError::new("BadBootstrap", e))?;
        Ok(Self {
            boot: Arc::new(boot),
            namespace: namespace.to_owned(),
            workload: workload.to_owned(),
            bundles: verify::shared(set),
            reports: None,
            roots: Roots {
                held: Arc::default(),
                wanted: Arc::new(watch::channel(String::new()).0),
            },
        })
    }

    /// A client for another identity of the same proxy (a gateway's egress beside its
    /// ingress) that follows this one's subscription — the bundles it verifies with and the
    /// signing root it is told about — instead of subscribing itself.
    #[must_use]
    pub fn sibling(&self, workload: &str) -> Self {
        Self {
            workload: workload.to_owned(),
            reports: None,
            roots: Roots {
                held: Arc::default(),
                wanted: self.roots.wanted.clone(),
            },
            ..self.clone()
        }
    }

    /// Sends each new value of `reports` on the config stream (a gateway's peer reachability,
    /// a sidecar's readiness), and the current one whenever the stream (re)opens.
    #[must_use]
    pub fn with_reports(mut self, reports: Reports) -> Self {
        self.reports = Some(reports);
        self
    }

    /// The trust bundles the proxy verifies with; each applied snapshot replaces them.
    pub fn bundles(&self) -> SharedBundles {
        self.bundles.clone()
    }

    /// Fingerprint of the root the current certificate came from (empty before the first).
    pub fn certificate_root(&self) -> String {
        self.roots.held()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.boot.trust_domain
    }

    /// A gRPC client on a new connection: mutual TLS with `svid`, or server-authenticated
    /// only (for a first certificate) without.
    pub async fn raw(
        &self,
        svid: Option<&Arc<SvidResolver>>,
    ) -> Result<MeshConfigClient<tonic::transport::Channel>, ClientError> {
        Ok(MeshConfigClient::new(self.channel(svid).await?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    async fn channel(
        &self,
        svid: Option<&Arc<SvidResolver>>,
    ) -> Result<tonic::transport::Channel, ClientError> {
        let provider = verify::provider();
        let verifier = Arc::new(SpiffeServerVerifier::new(
            self.bundles.clone(),
            Expect::id(self.boot.control_plane_id.clone()),
            provider.clone(),
        ));
        let config = match svid {
            Some(r) => verify::client_config(r.clone(), verifier, provider),
            None => rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth()
                }),
        }
        .map_err(|e| ClientError::new("Tls", e))?;
        meshfed_peering::tls::connect(self.boot.control_plane, Arc::new(config), CALL_TIMEOUT)
            .await
            .map_err(|e| {
                let reason = if e.reason == "GatewayUnreachable" {
                    "ControlPlaneUnreachable"
                } else {
                    e.reason.as_str()
                };
                ClientError::new(reason, e.detail)
            })
    }

    /// Obtains an SVID: with the bootstrap token when `current` is `None`, else renewing over
    /// mTLS as the current identity. The key is generated here and never sent.
    pub async fn certify(&self, current: Option<&Arc<SvidResolver>>) -> Result<Svid, ClientError> {
        let channel = self.channel(current).await?;
        let mut client = MeshConfigClient::new(channel).max_decoding_message_size(1 << 20);
        let token = if current.is_some() {
            String::new()
        } else if let Some(file) = &self.boot.token_file {
            // A projected token is renewed in place by the kubelet: read it afresh.
            std::fs::read_to_string(file)
                .map(|t| t.trim().to_owned())
                .map_err(|e| {
                    ClientError::new(
                        "NotEnrolled",
                        format!("reading the ServiceAccount token {}: {e}", file.display()),
                    )
                })?
        } else if self.boot.token.is_empty() {
            return Err(ClientError::new(
                "NotEnrolled",
                "the bootstrap file carries no join credential: mint this workload's file with `meshfed join create`",
            ));
        } else {
            self.boot.token.clone()
        };
        let mut request = pb::CertifyRequest {
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            csr_der: Vec::new(),
            token,
        };
        let call = |client: &mut MeshConfigClient<_>, r: pb::CertifyRequest| {
            let mut client = client.clone();
            async move {
                tokio::time::timeout(CALL_TIMEOUT, client.certify(r))
                    .await
                    .map_err(|_| ClientError::new("ControlPlaneUnreachable", "no answer in time"))?
                    .map(tonic::Response::into_inner)
                    .map_err(|s| ClientError::from_status(&s))
            }
        };
        let who = call(&mut client, request.clone()).await?;
        let id: SpiffeId = who
            .spiffe_id
            .parse()
            .map_err(|e| ClientError::new("BadResponse", format!("spiffeId: {e}")))?;
        if id.trust_domain() != &self.boot.trust_domain {
            return Err(ClientError::new(
                "BadResponse",
                format!("{id} is not in {}", self.boot.trust_domain),
            ));
        }
        let (key, csr) =
            meshfed_trust::ca::workload_csr(&id).map_err(|e| ClientError::new("Csr", e))?;
        request.csr_der = csr.to_vec();
        let signed = call(&mut client, request).await?;
        let chain: Vec<CertificateDer<'static>> = signed
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let leaf = chain
            .first()
            .ok_or_else(|| ClientError::new("BadResponse", "no certificate"))?;
        let got = meshfed_trust::svid::check_leaf(leaf, SystemTime::now())
            .map_err(|e| ClientError::new("BadResponse", e))?;
        if got != id {
            return Err(ClientError::new(
                "BadResponse",
                format!("the certificate names {got}, not {id}"),
            ));
        }
        *self
            .roots
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = signed.signing_root;
        let at = |s: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0));
        Ok(Svid::new(
            id,
            chain,
            key.serialize_der(),
            at(signed.not_before),
            at(signed.not_after),
        ))
    }

    /// Renews `svid` at half its life, and at once when the control plane names a signing
    /// root it does not come from (after a root rotation; spread over half a second so a
    /// mesh's proxies do not all ask in the same instant), for as long as the proxy runs; a
    /// failed renewal is retried every few seconds while the current certificate stays in use.
    pub async fn renew_forever(&self, resolver: Arc<SvidResolver>, mut svid: Svid) {
        let mut wanted = self.roots.wanted.subscribe();
        // A root we renewed for already (a control plane that still signs with another one
        // is not asked again until it names a different root).
        let mut renewed_for = String::new();
        loop {
            if self.roots.stale() && *wanted.borrow() != renewed_for {
                tracing::info!("the mesh signs with a new root; renewing the certificate");
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..500))).await;
            } else {
                let half = svid
                    .not_after
                    .duration_since(svid.not_before)
                    .unwrap_or_default()
                    / 2;
                let due = svid.not_before + half;
                let wait = due
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = wanted.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            match self.certify(Some(&resolver)).await {
                Ok(next) => match resolver.set(&next) {
                    Ok(()) => {
                        renewed_for = wanted.borrow().clone();
                        tracing::info!("renewed the SVID of {}", next.id);
                        svid = next;
                    }
                    Err(e) => tracing::warn!("renewed SVID unusable: {e}"),
                },
                Err(e) => {
                    tracing::warn!("renewing the SVID failed (retrying): {e}");
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            }
        }
    }

    /// Subscribes for as long as the proxy runs: each snapshot is validated, handed to
    /// `apply`, and ACKed or NACKed; on any failure it reconnects with backoff. `state` shows
    /// where it stands.
    pub async fn subscribe(
        &self,
        svid: Arc<SvidResolver>,
        apply: mpsc::Sender<Update>,
        state: watch::Sender<ClientState>,
    ) {
        let mut running: Option<(u64, pb::Snapshot)> = None;
        let mut backoff = BACKOFF_MIN;
        let mut last_error = String::new();
        loop {
            let result = self.session(&svid, &apply, &state, &mut running).await;
            state.send_modify(|s| s.connected = false);
            let error = match result {
                Ok(got_any) => {
                    if got_any {
                        backoff = BACKOFF_MIN;
                    }
                    "StreamEnded: the control plane closed the stream".to_owned()
                }
                Err(e) => e.to_string(),
            };
            if error != last_error {
                tracing::warn!(
                    "config stream: {error}; keeping version {} and retrying",
                    running.as_ref().map_or(0, |r| r.0)
                );
                last_error.clone_from(&error);
            }
            state.send_modify(|s| s.last_error = Some(error));
            if apply.is_closed() {
                return;
            }
            let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
            tokio::time::sleep(backoff / 2 + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One stream; `Ok(true)` if it delivered at least one snapshot before ending.
    async fn session(
        &self,
        svid: &Arc<SvidResolver>,
        apply: &mpsc::Sender<Update>,
        state: &watch::Sender<ClientState>,
        running: &mut Option<(u64, pb::Snapshot)>,
    ) -> Result<bool, ClientError> {
        let channel = self.channel(Some(svid)).await?;
        let mut client = MeshConfigClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (out, out_rx) = mpsc::channel(4);
        let send = |m: In| ProxyMessage { msg: Some(m) };
        let _ = out
            .send(send(In::Subscribe(pb::Subscribe {
                namespace: self.namespace.clone(),
                workload: self.workload.clone(),
                running_version: running.as_ref().map_or(0, |r| r.0),
            })))
            .await;
        // Reports go out beside the ACKs for as long as this stream lives.
        let _reporter = self.reports.clone().map(|mut rx| {
            let out = out.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    let report = rx.borrow_and_update().clone();
                    let msg = send(In::Report(report));
                    if out.send(msg).await.is_err() || rx.changed().await.is_err() {
                        return;
                    }
                }
            }))
        });
        let mut inbound =
            tokio::time::timeout(CALL_TIMEOUT, client.stream(ReceiverStream::new(out_rx)))
                .await
                .map_err(|_| ClientError::new("ControlPlaneUnreachable", "no answer in time"))?
                .map_err(|s| ClientError::from_status(&s))?
                .into_inner();
        state.send_modify(|s| {
            s.connected = true;
            s.last_error = None;
        });
        let mut got_any = false;
        while let Some(msg) = inbound
            .message()
            .await
            .map_err(|s| ClientError::from_status(&s))?
        {
            let snap = match msg.msg {
                Some(Out::Snapshot(s)) => s,
                Some(Out::Close(c)) => return Err(ClientError::new(&c.reason, c.detail)),
                None => continue,
            };
            got_any = true;
            let version = snap.version;
            // The content without its version: a reconnect to a restarted control plane that
            // serves the same configuration under a new version is not applied again.
            let content = pb::Snapshot {
                version: 0,
                ..snap.clone()
            };
            let unchanged = running.as_ref().is_some_and(|(_, c)| *c == content);
            let verdict = if unchanged {
                Ok(())
            } else {
                match self.check(snap) {
                    Ok(received) => {
                        let (done, answer) = oneshot::channel();
                        if apply.send(Update { received, done }).await.is_err() {
                            return Ok(got_any);
                        }
                        let r = answer.await.unwrap_or_else(|_| {
                            Err(SnapshotRefused::apply_failed("the proxy stopped"))
                        });
                        if r.is_ok() {
                            *running = Some((version, content));
                        }
                        r
                    }
                    Err(e) => Err(e),
                }
            };
            let reply = match verdict {
                Ok(()) => {
                    if let Some(r) = running.as_mut() {
                        r.0 = version;
                        // Applied first: the new root is trusted before we present it.
                        self.roots.wanted.send_if_modified(|w| {
                            let changed = *w != r.1.signing_root;
                            w.clone_from(&r.1.signing_root);
                            changed
                        });
                    }
                    state.send_modify(|s| s.running = Some(version));
                    In::Ack(pb::Ack { version })
                }
                Err(refused) => {
                    tracing::warn!(
                        reason = refused.reason,
                        version,
                        "refused config version {version} (NACK): {}",
                        refused.detail
                    );
                    state.send_modify(|s| s.nacked = Some((version, refused.detail.clone())));
                    In::Nack(pb::Nack {
                        version,
                        reason: refused.detail,
                    })
                }
            };
            if out.send(send(reply)).await.is_err() {
                return Ok(got_any);
            }
        }
        Ok(got_any)
    }

    fn check(&self, snap: pb::Snapshot) -> Result<Received, SnapshotRefused> {
        check_snapshot(&self.boot.trust_domain, snap)
    }
}

/// Validates a snapshot for a proxy of the trust domain `own`: the mesh like a mesh file, its
/// bundles like imported ones, every other field like a peer's input (hostile, bounded). A
/// refusal names the field; nothing of a refused snapshot is applied.
pub fn check_snapshot(own: &TrustDomain, snap: pb::Snapshot) -> Result<Received, SnapshotRefused> {
    let file = format!("config version {}", snap.version);
    let mesh = validate::load_mesh(&file, &snap.mesh_json).map_err(|e| invalid(e.to_string()))?;
    if &mesh.mesh.trust_domain != own {
        return Err(invalid(format!(
            "{file}: spec.trustDomain is {}, this proxy belongs to {own}",
            mesh.mesh.trust_domain
        )));
    }
    let mut bundles = TrustBundleSet::new();
    for b in &snap.bundles {
        let td: TrustDomain = b
            .trust_domain
            .parse()
            .map_err(|e| invalid(format!("{file}: bundles[{}]: {e}", b.trust_domain)))?;
        let (bundle, _) = TrustBundle::from_json(td.clone(), &b.json)
            .map_err(|e| invalid(format!("{file}: bundle of {td}: {e}")))?;
        bundles
            .insert(bundle)
            .map_err(|e| invalid(format!("{file}: bundle of {td}: {e}")))?;
    }
    if bundles.get(own).is_none() {
        return Err(invalid(format!(
            "{file}: no bundle for the mesh's own domain {own}"
        )));
    }
    if snap.imports.len() > MAX_IMPORTS {
        return Err(invalid(format!(
            "{file}: imports: {} entries; the limit is {MAX_IMPORTS}",
            snap.imports.len()
        )));
    }
    let imports = snap
        .imports
        .iter()
        .enumerate()
        .map(|(i, w)| import_from_wire(w).map_err(|e| invalid(format!("{file}: imports[{i}].{e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let gateway = snap
        .gateway
        .as_ref()
        .map(gateway_from_wire)
        .transpose()
        .map_err(|e| invalid(format!("{file}: {e}")))?;
    if snap.exported_names.len() > MAX_IMPORTS {
        return Err(invalid(format!(
            "{file}: exportedNames: {} entries; the limit is {MAX_IMPORTS}",
            snap.exported_names.len()
        )));
    }
    let exported_names = snap
        .exported_names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            n.parse()
                .map_err(|e| invalid(format!("{file}: exportedNames[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if snap.exported_to_domains.len() > MAX_IMPORTS {
        return Err(invalid(format!(
            "{file}: exportedToDomains: {} entries; the limit is {MAX_IMPORTS}",
            snap.exported_to_domains.len()
        )));
    }
    let exported_to = snap
        .exported_to_domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.parse()
                .map_err(|e| invalid(format!("{file}: exportedToDomains[{i}]: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if snap.unready_workloads.len() > MAX_IMPORTS {
        return Err(invalid(format!(
            "{file}: unreadyWorkloads: {} entries; the limit is {MAX_IMPORTS}",
            snap.unready_workloads.len()
        )));
    }
    let unready = snap
        .unready_workloads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            w.split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && w.len() <= 253)
                .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
                .ok_or_else(|| {
                    invalid(format!(
                        "{file}: unreadyWorkloads[{i}]: {w:?} is not namespace/name"
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Received {
        version: snap.version,
        mesh,
        bundles,
        imports,
        gateway,
        exported_names,
        exported_to,
        unready,
    })
}
