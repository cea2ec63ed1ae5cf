//! The exporting side: a tonic service that authenticates each importer by its verified SPIFFE
//! ID (`spec.security.clientID`), then streams only *that peer's* export view: hello, a chunked
//! snapshot, versioned deltas on every change, heartbeats; a NACK gets a fresh snapshot.
//! One stream per peer; a slow reader is cut at its send timeout, never stalling the others.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshfed_api::PEERING_PROTOCOL_VERSION;
use meshfed_api::peering::importer_message::Msg as In;
use meshfed_api::peering::peering_server::{Peering, PeeringServer};
use meshfed_api::peering::{
    self as pb, ExporterMessage, ImporterMessage, exporter_message::Msg as Out,
};
use meshfed_core::import::RemoteService;
use meshfed_core::stream::ExportStream;
use meshfed_core::{Hostname, PeerName, SpiffeId, TrustDomain};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use meshfed_core::cutoff::{CutOff, StreamWatch};

use crate::convert::{delta_to_wire, snapshot_to_wire};
use crate::reason::refusal;
use crate::status::unix_ms;
use crate::tls::PeerInfo;

/// Largest message either side accepts (tonic's default, and the design's bound).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// One peer we export to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPeer {
    pub name: PeerName,
    /// The identity the peer's importer must present.
    pub client_id: SpiffeId,
    /// What it may see, by exported name.
    pub view: BTreeMap<Hostname, RemoteService>,
    /// Healthy and total endpoints per exported service (only services in `view` are sent).
    pub health: BTreeMap<Hostname, (u32, u32)>,
}

/// What the exporter serves; replaced whole on every change.
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterConfig {
    pub mesh: String,
    pub trust_domain: TrustDomain,
    pub peers: Vec<ExportPeer>,
    /// Our own trust bundle, sent to every peer so root rotations reach them.
    pub bundle: Option<meshfed_trust::TrustBundle>,
}

/// Timing and bounds of exporter streams.
#[derive(Debug, Clone, Copy)]
pub struct ExporterOptions {
    pub heartbeat: Duration,
    pub liveness: Duration,
    /// Services per snapshot chunk or delta.
    pub batch: usize,
    /// A reader that does not take a message within this long is cut.
    pub send_timeout: Duration,
    /// More NACKs than this within a minute close the stream (`NackStorm`).
    pub max_nacks_per_minute: u32,
    pub hello_timeout: Duration,
}

impl Default for ExporterOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            liveness: Duration::from_secs(15),
            batch: 500,
            send_timeout: Duration::from_secs(10),
            max_nacks_per_minute: 20,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// What happened on the exporter, for status, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExporterEvent {
    /// A stream of `peer`'s control-plane replica `replica` (`""` when it names none) is up.
    Connected {
        peer: PeerName,
        replica: String,
    },
    Refused {
        id: String,
        reason: &'static str,
    },
    Closed {
        peer: PeerName,
        replica: String,
        reason: String,
    },
    Acked {
        peer: PeerName,
        replica: String,
        version: u64,
    },
    Nacked {
        peer: PeerName,
        replica: String,
        version: u64,
        reason: String,
    },
}

/// The request metadata entry in which an importer names its control-plane replica (a pod
/// name). Each replica of a peer's control plane imports on a stream of its own, so every
/// replica's proxies get the imports whichever replica leads; one stream per replica.
pub const REPLICA_METADATA: &str = "meshfed-replica";

/// How many replicas of one peer may stream at once (more are refused: `TooManyStreams`).
pub const MAX_STREAMS_PER_PEER: usize = 16;

/// A replica name as a stream's metadata may carry it: empty, or a DNS subdomain (a pod name).
pub fn valid_replica(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        || name.is_empty()
}

/// How many exporter events may wait for their reader; a stream that produces more waits.
pub const EVENT_QUEUE: usize = 1024;

/// The exporter service.
#[derive(Clone)]
pub struct Exporter {
    config: watch::Receiver<Arc<ExporterConfig>>,
    options: ExporterOptions,
    active: Arc<Mutex<HashSet<(PeerName, String)>>>,
    epoch: u64,
    /// Numbers every stream's messages within the epoch (a reconnect continues above).
    versions: meshfed_core::stream::VersionClock,
    events: mpsc::Sender<ExporterEvent>,
    redeemer: Option<Redeemer>,
    /// Set when the server is told to shut down: every stream closes (`ServerShutdown`), so
    /// the graceful shutdown completes instead of waiting for streams that never end.
    stopping: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("epoch", &self.epoch)
            .field("redeems", &self.redeemer.is_some())
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Reports a refused stream and returns the refusal for the caller.
    async fn refuse(
        &self,
        id: &SpiffeId,
        code: tonic::Code,
        reason: &'static str,
        detail: String,
    ) -> Status {
        let _ = self
            .events
            .send(ExporterEvent::Refused {
                id: id.to_string(),
                reason,
            })
            .await;
        refusal(code, reason, detail)
    }

    /// An exporter serving `config`; events go to `events`. `epoch` must differ on every
    /// start (a random number).
    pub fn new(
        config: watch::Receiver<Arc<ExporterConfig>>,
        options: ExporterOptions,
        epoch: u64,
        events: mpsc::Sender<ExporterEvent>,
    ) -> Self {
        Self {
            config,
            options,
            active: Arc::default(),
            epoch,
            versions: meshfed_core::stream::VersionClock::default(),
            events,
            redeemer: None,
            stopping: Arc::new(watch::channel(false).0),
        }
    }

    /// Serves token redemptions with `redeemer`.
    #[must_use]
    pub fn with_redeemer(mut self, redeemer: Redeemer) -> Self {
        self.redeemer = Some(redeemer);
        self
    }

    /// Serves the peering endpoint on authenticated connections until `shutdown` completes.
    pub async fn serve<S>(
        self,
        incoming: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error>
    where
        S: tokio_stream::Stream<Item = std::io::Result<crate::tls::PeerConn>> + Send + 'static,
    {
        let stopping = self.stopping.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.send_replace(true);
        };
        let svc = PeeringServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }
}

struct PeerInfoId {
    id: SpiffeId,
}

/// A token redemption, validated, for the [`Redeemer`] to carry out.
#[derive(Debug, Clone)]
pub struct Redemption {
    pub secret: String,
    pub mesh: String,
    pub trust_domain: TrustDomain,
    pub bundle: meshfed_trust::TrustBundle,
    pub client_id: SpiffeId,
}

/// Why a redemption was refused: a stable reason and a detail, both sent to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refused {
    pub reason: &'static str,
    pub detail: String,
}

/// Carries out a redemption: checks the secret once and stores the caller's bundle.
pub type Redeemer = Arc<
    dyn Fn(Redemption) -> meshfed_trust::store::BoxFuture<'static, Result<(), Refused>>
        + Send
        + Sync,
>;

/// Removes a peer from the active set when its stream task ends.
struct ActiveGuard {
    active: Arc<Mutex<HashSet<(PeerName, String)>>>,
    key: (PeerName, String),
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(&self.key);
        }
    }
}

fn out(msg: Out) -> ExporterMessage {
    ExporterMessage { msg: Some(msg) }
}

fn close(reason: &str, detail: impl Into<String>) -> ExporterMessage {
    out(Out::Close(pb::Close {
        reason: reason.to_owned(),
        detail: detail.into(),
    }))
}

fn field_err(field: &str, e: impl std::fmt::Display) -> Status {
    refusal(
        tonic::Code::InvalidArgument,
        "InvalidRedemption",
        format!("{field}: {e}"),
    )
}

#[tonic::async_trait]
impl Peering for Exporter {
    type StreamStream = ReceiverStream<Result<ExporterMessage, Status>>;

    async fn redeem(
        &self,
        request: Request<pb::RedeemRequest>,
    ) -> Result<Response<pb::RedeemResponse>, Status> {
        let Some(redeemer) = &self.redeemer else {
            return Err(refusal(
                tonic::Code::Unimplemented,
                "RedemptionDisabled",
                "this mesh does not redeem peering tokens",
            ));
        };
        let r = request.into_inner();
        if r.secret.is_empty() || r.secret.len() > 128 {
            return Err(field_err("secret", "not a token secret"));
        }
        let trust_domain: TrustDomain = r
            .trust_domain
            .parse()
            .map_err(|e| field_err("trustDomain", e))?;
        let own = self.config.borrow().trust_domain.clone();
        if trust_domain == own {
            return Err(field_err(
                "trustDomain",
                "the caller claims our own trust domain",
            ));
        }
        let (bundle, _) =
            meshfed_trust::TrustBundle::from_json(trust_domain.clone(), &r.spiffe_bundle_json)
                .map_err(|e| field_err("spiffeBundleJson", e))?;
        if bundle.roots().is_empty() {
            return Err(field_err("spiffeBundleJson", "no usable root"));
        }
        let client_id =
            SpiffeId::from_client_id(&r.client_id).map_err(|e| field_err("clientId", e))?;
        if client_id.trust_domain() != &trust_domain || !client_id.is_workload() {
            return Err(field_err(
                "clientId",
                format!("{client_id} is not a workload of {trust_domain}"),
            ));
        }
        let mesh = r.mesh.chars().take(63).collect();
        redeemer(Redemption {
            secret: r.secret,
            mesh,
            trust_domain,
            bundle,
            client_id,
        })
        .await
        .map_err(|e| refusal(tonic::Code::PermissionDenied, e.reason, e.detail))?;
        Ok(Response::new(pb::RedeemResponse {
            mesh: self.config.borrow().mesh.clone(),
        }))
    }

    async fn stream(
        &self,
        request: Request<Streaming<ImporterMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let Some(id) = PeerInfo::caller_of(&request) else {
            return Err(refusal(
                tonic::Code::Unauthenticated,
                "NoPeerIdentity",
                "the peering stream needs a client certificate",
            ));
        };
        let info = PeerInfoId { id };
        let config = self.config.borrow().clone();
        let Some(peer) = config
            .peers
            .iter()
            .find(|p| p.client_id == info.id)
            .cloned()
        else {
            return Err(self
                .refuse(
                    &info.id,
                    tonic::Code::PermissionDenied,
                    "ClientIDRejected",
                    format!(
                        "{} is not the clientID of any peer of mesh {}",
                        info.id, config.mesh
                    ),
                )
                .await);
        };
        let replica = match request.metadata().get(REPLICA_METADATA) {
            None => String::new(),
            Some(v) => {
                match v.to_str() {
                    Ok(r) if valid_replica(r) => r.to_owned(),
                    _ => {
                        return Err(self
                        .refuse(
                            &info.id,
                            tonic::Code::InvalidArgument,
                            "InvalidReplica",
                            format!("{REPLICA_METADATA} must be empty or a DNS subdomain (a pod name)"),
                        )
                        .await);
                    }
                }
            }
        };
        let key = (peer.name.clone(), replica.clone());
        let refused = {
            let mut active = self
                .active
                .lock()
                .map_err(|_| refusal(tonic::Code::Internal, "Internal", "lock poisoned"))?;
            if active.contains(&key) {
                Some((tonic::Code::AlreadyExists, "DuplicateStream"))
            } else if active.iter().filter(|(p, _)| p == &peer.name).count() >= MAX_STREAMS_PER_PEER
            {
                Some((tonic::Code::ResourceExhausted, "TooManyStreams"))
            } else {
                active.insert(key.clone());
                None
            }
        };
        if let Some((code, reason)) = refused {
            let detail = if reason == "DuplicateStream" {
                format!(
                    "peer {} already has a stream from replica {replica:?}",
                    peer.name
                )
            } else {
                format!(
                    "peer {} already has {MAX_STREAMS_PER_PEER} streams (one per control-plane replica)",
                    peer.name
                )
            };
            return Err(self.refuse(&info.id, code, reason, detail).await);
        }
        let guard = ActiveGuard {
            active: self.active.clone(),
            key,
        };
        let (tx, rx) = mpsc::channel(16);
        let task = StreamTask {
            peer: peer.name.clone(),
            replica,
            client_td: info.id.trust_domain().clone(),
            config: self.config.clone(),
            options: self.options,
            epoch: self.epoch,
            versions: self.versions.clone(),
            tx,
            events: self.events.clone(),
        };
        let inbound = request.into_inner();
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let _guard = guard;
            let reason = tokio::select! {
                r = task.run(inbound) => r,
                () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                    task.close("ServerShutdown", "the peering service is stopping").await
                }
            };
            let _ = task
                .events
                .send(ExporterEvent::Closed {
                    peer: task.peer.clone(),
                    replica: task.replica.clone(),
                    reason,
                })
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct StreamTask {
    peer: PeerName,
    replica: String,
    client_td: TrustDomain,
    config: watch::Receiver<Arc<ExporterConfig>>,
    options: ExporterOptions,
    epoch: u64,
    versions: meshfed_core::stream::VersionClock,
    tx: mpsc::Sender<Result<ExporterMessage, Status>>,
    events: mpsc::Sender<ExporterEvent>,
}

enum Flow {
    Continue,
    End(String),
}

impl StreamTask {
    async fn send(&self, m: ExporterMessage) -> Flow {
        match self.tx.send_timeout(Ok(m), self.options.send_timeout).await {
            Ok(()) => Flow::Continue,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Flow::End("SlowReader".into()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Flow::End("StreamClosed".into()),
        }
    }

    async fn close(&self, reason: &str, detail: impl Into<String>) -> String {
        let _ = self.send(close(reason, detail)).await;
        reason.to_owned()
    }

    fn bundle(&self) -> Option<(u64, ExporterMessage)> {
        let c = self.config.borrow();
        let b = c.bundle.as_ref()?;
        Some((
            b.sequence,
            out(Out::Bundle(pb::TrustBundle {
                trust_domain: b.trust_domain().to_string(),
                sequence: b.sequence,
                spiffe_bundle_json: b.to_json().to_string(),
            })),
        ))
    }

    /// The health summary for this peer's view, if any health is known.
    fn health(&self) -> Option<pb::HealthSummary> {
        let c = self.config.borrow();
        let p = c.peers.iter().find(|p| p.name == self.peer)?;
        let services: Vec<pb::ServiceHealth> = p
            .health
            .iter()
            .filter(|(h, _)| p.view.contains_key(*h))
            .map(|(h, (healthy, total))| pb::ServiceHealth {
                exported_name: h.to_string(),
                healthy: *healthy,
                total: *total,
            })
            .collect();
        (!services.is_empty()).then_some(pb::HealthSummary { services })
    }

    fn view(&self) -> Option<BTreeMap<Hostname, RemoteService>> {
        self.config
            .borrow()
            .peers
            .iter()
            .find(|p| p.name == self.peer)
            .map(|p| p.view.clone())
    }

    async fn snapshot(
        &self,
        stream: &mut ExportStream,
        view: &BTreeMap<Hostname, RemoteService>,
    ) -> Flow {
        for c in stream.snapshot(view) {
            if let Flow::End(r) = self.send(out(Out::Snapshot(snapshot_to_wire(&c)))).await {
                return Flow::End(r);
            }
        }
        Flow::Continue
    }

    /// Runs the stream; returns why it ended.
    async fn run(&self, mut inbound: Streaming<ImporterMessage>) -> String {
        let hello = match tokio::time::timeout(self.options.hello_timeout, inbound.message()).await
        {
            Ok(Ok(Some(ImporterMessage {
                msg: Some(In::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                return self
                    .close("HelloExpected", "the first message must be a hello")
                    .await;
            }
            Ok(Ok(None)) => return "StreamClosed".into(),
            Ok(Err(s)) => return format!("StreamError: {}", s.message()),
            Err(_) => return self.close("HelloTimeout", "no hello in time").await,
        };
        if hello.protocol_version != PEERING_PROTOCOL_VERSION {
            return self
                .close(
                    "UnsupportedVersion",
                    format!(
                        "protocol {} is not {PEERING_PROTOCOL_VERSION}",
                        hello.protocol_version
                    ),
                )
                .await;
        }
        if hello.trust_domain != self.client_td.as_str() {
            return self
                .close(
                    "TrustDomainMismatch",
                    format!(
                        "hello says {:?}, certificate says {}",
                        hello.trust_domain, self.client_td
                    ),
                )
                .await;
        }
        let (mesh, td) = {
            let c = self.config.borrow();
            (c.mesh.clone(), c.trust_domain.to_string())
        };
        let mut config = self.config.clone();
        let Some(view) = self.view() else {
            return self.close("PeerDeleted", "").await;
        };
        let my_hello = pb::Hello {
            mesh,
            trust_domain: td,
            protocol_version: PEERING_PROTOCOL_VERSION,
        };
        if let Flow::End(r) = self.send(out(Out::Hello(my_hello))).await {
            return r;
        }
        let _ = self
            .events
            .send(ExporterEvent::Connected {
                peer: self.peer.clone(),
                replica: self.replica.clone(),
            })
            .await;
        let mut sent_bundle = None;
        if let Some((seq, m)) = self.bundle() {
            if let Flow::End(r) = self.send(m).await {
                return r;
            }
            sent_bundle = Some(seq);
        }
        let mut stream =
            ExportStream::with_clock(self.epoch, self.options.batch, self.versions.clone());
        if let Flow::End(r) = self.snapshot(&mut stream, &view).await {
            return r;
        }
        let mut sent_health = self.health();
        if let Some(h) = sent_health.clone()
            && let Flow::End(r) = self.send(out(Out::Health(h))).await
        {
            return r;
        }
        let started = tokio::time::Instant::now();
        let mut watch = StreamWatch::new(
            self.options.liveness,
            self.options.max_nacks_per_minute,
            Duration::ZERO,
        );
        let mut heartbeat = tokio::time::interval(self.options.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = config.changed() => {
                    if changed.is_err() {
                        return self.close("ServerShutdown", "").await;
                    }
                    let Some(view) = self.view() else {
                        return self.close("PeerDeleted", "the peer was removed").await;
                    };
                    if let Some((seq, m)) = self.bundle()
                        && sent_bundle != Some(seq)
                    {
                        if let Flow::End(r) = self.send(m).await {
                            return r;
                        }
                        sent_bundle = Some(seq);
                    }
                    for d in stream.deltas(&view) {
                        if let Flow::End(r) = self.send(out(Out::Delta(delta_to_wire(&d)))).await {
                            return r;
                        }
                    }
                    let health = self.health();
                    if health != sent_health {
                        if let Some(h) = health.clone()
                            && let Flow::End(r) = self.send(out(Out::Health(h))).await
                        {
                            return r;
                        }
                        sent_health = health;
                    }
                }
                msg = inbound.message() => {
                    let m = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return "StreamClosed".into(),
                        Err(s) => return format!("StreamError: {}", s.message()),
                    };
                    watch.received(started.elapsed());
                    match m.msg {
                        Some(In::Ack(a)) => {
                            let _ = self.events.send(ExporterEvent::Acked { peer: self.peer.clone(), replica: self.replica.clone(), version: a.version }).await;
                        }
                        Some(In::Nack(n)) => {
                            let _ = self.events.send(ExporterEvent::Nacked { peer: self.peer.clone(), replica: self.replica.clone(), version: n.version, reason: n.reason.clone() }).await;
                            if let Err(CutOff::NackStorm(n)) = watch.nacked(started.elapsed()) {
                                return self.close("NackStorm", format!("{n} NACKs in a minute")).await;
                            }
                            let Some(view) = self.view() else {
                                return self.close("PeerDeleted", "").await;
                            };
                            if let Flow::End(r) = self.snapshot(&mut stream, &view).await {
                                return r;
                            }
                        }
                        Some(In::Heartbeat(_)) => {}
                        Some(In::Hello(_)) => return self.close("UnexpectedHello", "hello after the handshake").await,
                        None => return self.close("EmptyMessage", "a message without content").await,
                    }
                }
                _ = heartbeat.tick() => {
                    if let Err(cut) = watch.check(started.elapsed()) {
                        return self.close(cut.reason(), "no message from the importer within the liveness timeout").await;
                    }
                    let hb = pb::Heartbeat { sent_unix_ms: unix_ms(SystemTime::now()) };
                    if let Flow::End(r) = self.send(out(Out::Heartbeat(hb))).await {
                        return r;
                    }
                }
            }
        }
    }
}
