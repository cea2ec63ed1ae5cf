//! The importing side: a task per peer, driven by the sans-IO [`Session`], that dials the
//! peer's peering endpoint over mTLS, exchanges hellos, applies snapshots and deltas to the last
//! good [`ImportState`] (ACK or NACK each version), persists every version, heartbeats, marks
//! the peer failing and its imports stale past the liveness timeout, and reconnects with
//! jittered backoff. On start it serves the imports restored from the store at once, flagged
//! stale (static stability). Results are published as whole values on watch channels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_api::PEERING_PROTOCOL_VERSION;
use meshfed_api::peering::exporter_message::Msg as In;
use meshfed_api::peering::importer_message::Msg as Out;
use meshfed_api::peering::peering_client::PeeringClient;
use meshfed_api::peering::{self as pb, ExporterMessage, ImporterMessage};
use meshfed_core::session::{Action, Event, PeerState, Session, SessionConfig};
use meshfed_core::stream::{Applied, ImportState, Limits, Nack};
use meshfed_core::{PeerName, TrustDomain};
use meshfed_store::{ImportRecord, Store};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Streaming;

use crate::convert::{delta_from_wire, snapshot_from_wire};
use crate::server::MAX_MESSAGE_BYTES;
use crate::status::{ConditionType, PeerStatus, unix_ms};

/// One peer to import from.
#[derive(Debug, Clone)]
pub struct ImporterConfig {
    /// Our mesh name and trust domain (sent in the hello).
    pub mesh: String,
    pub trust_domain: TrustDomain,
    /// Our name for the peer (`ServiceMeshPeer` name).
    pub peer: PeerName,
    pub peer_trust_domain: TrustDomain,
    /// The peer's peering endpoint (gateway address and discovery port).
    pub address: SocketAddr,
    pub session: SessionConfig,
    pub limits: Limits,
    pub connect_timeout: Duration,
    /// The verifiers' live bundle set: a bundle the peer sends for its own domain is applied
    /// here, so its root rotations take effect at the next handshake.
    pub bundles: Option<meshfed_trust::verify::SharedBundles>,
    /// Where accepted peer bundles are persisted (the CA folder, or the cluster).
    pub trust_store: Option<Arc<dyn meshfed_trust::store::TrustStore>>,
    /// This control-plane replica's name (its pod), sent as [`crate::server::REPLICA_METADATA`]
    /// so that each replica holds a stream of its own; empty for a single node.
    pub replica: String,
}

/// How long persisting a peer's bundle may hold up the stream.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(5);

/// A running importer.
#[derive(Debug)]
pub struct Importer {
    pub status: watch::Receiver<PeerStatus>,
    pub imports: watch::Receiver<Arc<ImportState>>,
    /// The peer's reported healthy/total endpoints per imported service.
    pub health: watch::Receiver<Arc<Health>>,
    stop: watch::Sender<Option<&'static str>>,
    task: tokio::task::JoinHandle<()>,
}

impl Importer {
    /// Ends the relationship because the node stops (`Stopped`): closes the stream and stops
    /// the task.
    pub async fn stop(self) {
        self.end("Stopped").await;
    }

    /// Ends the relationship with `reason` (`PeerDeleted`, `PeerChanged`…), the status's last
    /// transition.
    pub async fn end(self, reason: &'static str) {
        self.stop.send_replace(Some(reason));
        let _ = self.task.await;
    }

    /// Stops the task at once, as if the process died, and waits until it is gone.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Waits until the importer is told to end; the reason (`Stopped` if its handle is gone).
async fn stopped(stop: &mut watch::Receiver<Option<&'static str>>) -> &'static str {
    match stop.wait_for(Option::is_some).await {
        Ok(r) => r.unwrap_or("Stopped"),
        Err(_) => "Stopped",
    }
}

/// Healthy and total endpoints per exported name, as the peer reports them.
pub type Health = std::collections::BTreeMap<meshfed_core::Hostname, (u32, u32)>;

/// Most endpoints a peer may report for one service.
const MAX_ENDPOINTS: u32 = 100_000;

/// Starts importing from one peer. `tls` carries our SVID and a verifier expecting the peer.
pub fn spawn(
    config: ImporterConfig,
    tls: Arc<rustls::ClientConfig>,
    store: Option<Arc<Store>>,
) -> Importer {
    let mut status = PeerStatus::new(config.peer.as_str());
    let mut state = ImportState::default();
    if let Some(store) = &store {
        let (records, _dropped) = store.load_imports();
        if let Some(r) = records.get(&config.peer) {
            state = ImportState::restored(r.epoch, r.version, r.services.clone());
            status.stale = true;
            status.imported_services = state.services().len();
            status.imported_version = state.version();
            status.set_condition(
                ConditionType::Stale,
                true,
                "RestoredFromStore",
                "imports restored from the store; waiting for the peer",
                unix_ms(SystemTime::now()),
            );
        }
    }
    let (status_tx, status_rx) = watch::channel(status);
    let (imports_tx, imports_rx) = watch::channel(Arc::new(state.clone()));
    let (health_tx, health_rx) = watch::channel(Arc::new(Health::new()));
    let (stop, stop_rx) = watch::channel(None);
    let config_peer = config.peer.clone();
    let driver = Driver {
        config,
        tls,
        store,
        state,
        status_tx,
        imports_tx,
        health_tx,
        stop: stop_rx,
        start: Instant::now(),
        logged_down: None,
    };
    let span = tracing::info_span!("importer", peer = %config_peer);
    let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
    Importer {
        status: status_rx,
        imports: imports_rx,
        health: health_rx,
        stop,
        task,
    }
}

struct Conn {
    tx: mpsc::Sender<ImporterMessage>,
    inbound: Streaming<ExporterMessage>,
    hello_done: bool,
}

struct Driver {
    config: ImporterConfig,
    tls: Arc<rustls::ClientConfig>,
    store: Option<Arc<Store>>,
    state: ImportState,
    status_tx: watch::Sender<PeerStatus>,
    imports_tx: watch::Sender<Arc<ImportState>>,
    health_tx: watch::Sender<Arc<Health>>,
    /// Set once, with the reason the relationship ends.
    stop: watch::Receiver<Option<&'static str>>,
    start: Instant,
    /// The reason the stream was last logged down for: the same reason again (every
    /// reconnect attempt) is logged at debug, so a refused peer is one warning, not one per
    /// retry.
    logged_down: Option<String>,
}

fn msg(m: Out) -> ImporterMessage {
    ImporterMessage { msg: Some(m) }
}

/// The reason of an error from the exporter when opening the stream: the `meshfed-reason`
/// it carries, else (a transport failure before the service answered) one from the code. In
/// TLS 1.3 a server that refuses the client's certificate says so only after the client
/// finished its handshake, so the first call is where that refusal surfaces: `Unavailable`
/// or `Unknown` there is the peer not trusting us.
fn status_reason(s: &tonic::Status) -> String {
    match crate::reason::reason_of(s) {
        Some(r) => r.to_owned(),
        None => match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => "TrustBundleMismatch".to_owned(),
            c => format!("{c:?}"),
        },
    }
}

/// The reason an established stream broke: the `meshfed-reason` the exporter sent, else a
/// transport failure (`StreamBroken`: a reset, a cut link) — not a trust problem, which
/// would have stopped the stream from opening.
fn broken_reason(s: &tonic::Status) -> &'static str {
    match crate::reason::reason_of(s) {
        Some(r) => static_reason(r),
        None => "StreamBroken",
    }
}

/// What a `Connected=False` condition says: what went wrong in words, where, what the
/// transport or the peer said (`detail`), and what to check.
fn disconnect_message(reason: &str, detail: &str, address: SocketAddr) -> String {
    let what = match condition_reason(reason) {
        "GatewayUnreachable" => format!(
            "no peering endpoint answered at {address}; check the ServiceMeshPeer's \
             remote.addresses and discoveryPort, and that the peer's ingress gateway runs"
        ),
        "TrustBundleMismatch" => format!(
            "the mutual TLS handshake with {address} failed ({reason}); each side must trust \
             the other's roots: check security.trustDomain and certificateChain (or the \
             peering token) on both sides"
        ),
        "ServerIDRejected" => format!(
            "the endpoint at {address} presented an identity that is not the peer's peering \
             service"
        ),
        "ClientIDRejected" => "the peer does not accept our egress identity: its \
             ServiceMeshPeer for this mesh must name it in security.clientID"
            .to_owned(),
        "DuplicateStream" => {
            "the peer already holds a stream from this control-plane replica".to_owned()
        }
        "TooManyStreams" => "the peer holds its limit of streams from this mesh's \
             control-plane replicas"
            .to_owned(),
        "StreamStale" => "the peer stopped answering (no heartbeat within the liveness \
             timeout); imports are kept until it is back"
            .to_owned(),
        "StreamBroken" => format!("the connection to {address} broke"),
        "StreamClosed" => format!("the peer at {address} closed the stream"),
        "UnsupportedVersion" => {
            "the peer speaks a peering protocol version this mesh does not".to_owned()
        }
        "TrustDomainMismatch" => {
            "the peer's hello named another trust domain than security.trustDomain".to_owned()
        }
        "PeerDeleted" => "the ServiceMeshPeer was deleted".to_owned(),
        "ServerShutdown" => format!("the peering service at {address} is shutting down"),
        other => format!("the peering stream with {address} ended ({other})"),
    };
    if detail.is_empty() || detail == reason {
        what
    } else {
        format!("{what}: {detail}")
    }
}

/// Maps a low-level reason to the condition reason users see.
fn condition_reason(reason: &str) -> &str {
    match reason {
        "UnknownTrustDomain" | "UnknownIssuer" | "BadSignature" | "RootExpired"
        | "TlsHandshakeFailed" => "TrustBundleMismatch",
        "IdentityNotAllowed" => "ServerIDRejected",
        other => other,
    }
}

impl Driver {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn update_status(&self, f: impl FnOnce(&mut PeerStatus)) {
        self.status_tx.send_modify(f);
    }

    fn publish(&self) {
        let s = Arc::new(self.state.clone());
        let (n, v, stale) = (s.services().len(), s.version(), s.is_stale());
        // Status first, so whoever sees the new imports also sees matching status.
        self.update_status(|st| {
            st.imported_services = n;
            st.imported_version = v;
            st.stale = stale;
        });
        self.imports_tx.send_replace(s);
    }

    /// Records why the stream ended or could not start, whatever the state; `detail` is
    /// what the transport or the peer said, if anything.
    fn note_disconnect(&mut self, reason: &str, detail: &str) {
        let now = unix_ms(SystemTime::now());
        let r = condition_reason(reason).to_owned();
        let message = disconnect_message(reason, detail, self.config.address);
        if self.logged_down.as_deref() == Some(r.as_str()) {
            tracing::debug!(reason = %r, "peering stream still down: {reason}");
        } else {
            tracing::warn!(reason = %r, "peering stream down: {reason}");
            self.logged_down = Some(r.clone());
        }
        self.update_status(|s| {
            s.last_disconnect_ms = Some(now);
            s.last_disconnect_reason = Some(reason.to_owned());
            s.set_condition(ConditionType::Connected, false, &r, &message, now);
        });
    }

    fn persist(&self) {
        let (Some(store), Some(epoch), Some(version)) =
            (&self.store, self.state.epoch(), self.state.version())
        else {
            return;
        };
        let rec = ImportRecord {
            epoch,
            version,
            services: self.state.services().values().cloned().collect(),
            saved_at: unix_ms(SystemTime::now()) / 1000,
        };
        if let Err(e) = store.save_imports(&self.config.peer, &rec) {
            tracing::warn!(reason = e.reason(), "saving imports failed: {e}");
        }
    }

    /// Opens the stream; the error is the stable reason it could not be opened.
    async fn dial(&self) -> Result<Conn, (&'static str, String)> {
        let channel = crate::tls::connect(
            self.config.address,
            self.tls.clone(),
            self.config.connect_timeout,
        )
        .await
        .map_err(|e| (static_reason(&e.reason), e.detail))?;
        let mut client = PeeringClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello {
            mesh: self.config.mesh.clone(),
            trust_domain: self.config.trust_domain.to_string(),
            protocol_version: PEERING_PROTOCOL_VERSION,
        };
        tx.send(msg(Out::Hello(hello)))
            .await
            .map_err(|_| ("StreamClosed", String::new()))?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if !self.config.replica.is_empty() {
            let value = self
                .config
                .replica
                .parse()
                .map_err(|_| ("InvalidReplica", self.config.replica.clone()))?;
            request
                .metadata_mut()
                .insert(crate::server::REPLICA_METADATA, value);
        }
        let response = tokio::time::timeout(self.config.connect_timeout, client.stream(request))
            .await
            .map_err(|_| {
                (
                    "GatewayUnreachable",
                    format!("no answer within {:?}", self.config.connect_timeout),
                )
            })?
            .map_err(|s| {
                (
                    static_reason(&status_reason(&s)),
                    crate::reason::detail_of(&s).to_owned(),
                )
            })?;
        Ok(Conn {
            tx,
            inbound: response.into_inner(),
            hello_done: false,
        })
    }

    /// Handles one exporter message; returns events for the session.
    async fn on_message(&mut self, conn: &mut Conn, m: ExporterMessage) -> Vec<Event> {
        let mut events = vec![Event::Received];
        match m.msg {
            Some(In::Hello(h)) => {
                if conn.hello_done {
                    return vec![Event::Disconnected {
                        reason: "UnexpectedHello",
                    }];
                }
                if h.protocol_version != PEERING_PROTOCOL_VERSION {
                    return vec![Event::Disconnected {
                        reason: "UnsupportedVersion",
                    }];
                }
                if h.trust_domain != self.config.peer_trust_domain.as_str() {
                    return vec![Event::Disconnected {
                        reason: "TrustDomainMismatch",
                    }];
                }
                conn.hello_done = true;
                events.push(Event::HelloAccepted);
            }
            Some(_) if !conn.hello_done => {
                return vec![Event::Disconnected {
                    reason: "HelloExpected",
                }];
            }
            Some(In::Snapshot(s)) => {
                let r = snapshot_from_wire(s, &self.config.peer_trust_domain, &self.config.limits)
                    .and_then(|c| self.state.apply_snapshot(c, &self.config.limits));
                self.answer(conn, r, true).await;
            }
            Some(In::Delta(d)) => {
                let r = delta_from_wire(d, &self.config.peer_trust_domain, &self.config.limits)
                    .and_then(|d| self.state.apply_delta(d, &self.config.limits));
                self.answer(conn, r, false).await;
            }
            Some(In::Heartbeat(_)) => {
                let now = unix_ms(SystemTime::now());
                self.update_status(|s| s.last_heartbeat_ms = Some(now));
            }
            Some(In::Bundle(b)) => self.on_bundle(b).await,
            Some(In::Health(h)) => self.on_health(h),
            Some(In::Close(c)) => {
                let reason: &'static str = match c.reason.as_str() {
                    "ClientIDRejected" => "ClientIDRejected",
                    "PeerDeleted" => "PeerDeleted",
                    "NackStorm" => "NackStorm",
                    "StreamStale" => "StreamStale",
                    "UnsupportedVersion" => "UnsupportedVersion",
                    "TrustDomainMismatch" => "TrustDomainMismatch",
                    _ => "ClosedByPeer",
                };
                return vec![Event::Disconnected { reason }];
            }
            None => {
                return vec![Event::Disconnected {
                    reason: "EmptyMessage",
                }];
            }
        }
        events
    }

    async fn answer(&mut self, conn: &mut Conn, r: Result<Applied, Nack>, snapshot: bool) {
        let now = unix_ms(SystemTime::now());
        match r {
            Ok(Applied::Buffered) => {}
            Ok(Applied::Version(v)) => {
                self.persist();
                self.publish();
                self.update_status(|s| {
                    s.last_event_ms = Some(now);
                    if snapshot {
                        s.last_full_sync_ms = Some(now);
                    }
                    s.set_condition(
                        ConditionType::Stale,
                        false,
                        "Synced",
                        "imports are current",
                        now,
                    );
                    s.set_condition(ConditionType::ImportRejected, false, "Accepted", "", now);
                });
                let _ = conn.tx.send(msg(Out::Ack(pb::Ack { version: v }))).await;
            }
            Err(n) => {
                tracing::warn!(reason = %n.reason, version = n.version, "refused the peer's exports (NACK): {}", n.detail);
                self.update_status(|s| {
                    s.set_condition(
                        ConditionType::ImportRejected,
                        true,
                        n.reason,
                        &n.detail,
                        now,
                    )
                });
                let _ = conn
                    .tx
                    .send(msg(Out::Nack(pb::Nack {
                        version: n.version,
                        reason: n.reason.to_owned(),
                        detail: n.detail,
                    })))
                    .await;
            }
        }
    }

    /// A health summary: only for services we import from this peer, with sane counts; a bad
    /// summary is ignored whole.
    fn on_health(&self, h: pb::HealthSummary) {
        let mut out = Health::new();
        for s in &h.services {
            let Ok(name) = s.exported_name.parse::<meshfed_core::Hostname>() else {
                return;
            };
            if !self.state.services().contains_key(&name)
                || s.healthy > s.total
                || s.total > MAX_ENDPOINTS
            {
                let now = unix_ms(SystemTime::now());
                self.update_status(|st| {
                    st.set_condition(
                        ConditionType::HealthRejected,
                        true,
                        "InvalidHealthSummary",
                        &format!("{name}: {}/{}", s.healthy, s.total),
                        now,
                    )
                });
                return;
            }
            out.insert(name, (s.healthy, s.total));
        }
        self.health_tx.send_replace(Arc::new(out));
    }

    /// A peer's bundle: only for its own trust domain, with a rising sequence, roots not shared
    /// with any other domain. Refusals leave the current bundle in force.
    async fn on_bundle(&self, b: pb::TrustBundle) {
        let now = unix_ms(SystemTime::now());
        let refuse = |reason: &str, detail: String| {
            tracing::warn!(reason, "trust bundle refused: {detail}");
            self.update_status(|s| {
                s.set_condition(
                    ConditionType::TrustBundleRejected,
                    true,
                    reason,
                    &detail,
                    now,
                )
            });
        };
        let Some(shared) = &self.config.bundles else {
            return;
        };
        if b.trust_domain != self.config.peer_trust_domain.as_str() {
            return refuse(
                "BundleForeignDomain",
                format!(
                    "the peer sent a bundle for {:?}",
                    b.trust_domain.chars().take(64).collect::<String>()
                ),
            );
        }
        let bundle = match meshfed_trust::TrustBundle::from_json(
            self.config.peer_trust_domain.clone(),
            &b.spiffe_bundle_json,
        ) {
            Ok((bundle, _)) if bundle.sequence == b.sequence => bundle,
            Ok(_) => {
                return refuse(
                    "BundleSequenceMismatch",
                    "message and document sequences differ".into(),
                );
            }
            Err(e) => return refuse(e.reason(), e.to_string()),
        };
        let mut next = (**shared.load()).clone();
        match next.insert(bundle.clone()) {
            Ok(meshfed_trust::bundle::Applied::Unchanged) => {}
            Ok(_) => {
                shared.store(Arc::new(next));
                if let Some(store) = &self.config.trust_store {
                    let saved =
                        tokio::time::timeout(PERSIST_TIMEOUT, store.save_peer_bundle(&bundle))
                            .await;
                    match saved {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(
                            "persisting the peer bundle in {} failed: {e}",
                            store.location()
                        ),
                        Err(_) => tracing::warn!(
                            "persisting the peer bundle in {} took over {PERSIST_TIMEOUT:?}; it is in force but not stored",
                            store.location()
                        ),
                    }
                }
                self.update_status(|s| {
                    s.peer_bundle_sequence = Some(bundle.sequence);
                    s.set_condition(
                        ConditionType::TrustBundleRejected,
                        false,
                        "Accepted",
                        "",
                        now,
                    );
                });
            }
            Err(e) => refuse(e.reason(), e.to_string()),
        }
    }

    fn on_transition(&mut self, to: PeerState, reason: &str) {
        let now = unix_ms(SystemTime::now());
        match to {
            PeerState::Active => {
                self.logged_down = None;
                tracing::info!(state = ?to, "peering stream established");
            }
            PeerState::Failing | PeerState::Terminated => {
                tracing::info!(state = ?to, reason = condition_reason(reason), "peering state");
            }
            PeerState::Establishing | PeerState::Pending => {
                tracing::debug!(state = ?to, reason, "peering state");
            }
        }
        match to {
            PeerState::Active => {
                self.update_status(|s| {
                    s.state = to;
                    s.connected = true;
                    s.last_connected_ms = Some(now);
                    s.set_condition(
                        ConditionType::Connected,
                        true,
                        "Connected",
                        "peering stream established",
                        now,
                    );
                });
            }
            PeerState::Failing
            | PeerState::Terminated
            | PeerState::Establishing
            | PeerState::Pending => {
                if to == PeerState::Failing {
                    self.note_disconnect(reason, "");
                }
                let stale = matches!(to, PeerState::Failing) && self.state.version().is_some();
                if stale {
                    self.state.set_stale(true);
                    self.publish();
                }
                let r = condition_reason(reason).to_owned();
                self.update_status(|s| {
                    s.state = to;
                    s.connected = false;
                    if to == PeerState::Failing || to == PeerState::Terminated {
                        s.set_condition(ConditionType::Connected, false, &r, reason, now);
                    }
                    if stale {
                        s.set_condition(
                            ConditionType::Stale,
                            true,
                            "StreamStale",
                            "the peer is not answering; imports kept",
                            now,
                        );
                    }
                });
            }
        }
    }

    async fn run(mut self) {
        let mut stop = self.stop.clone();
        let mut session = Session::new(self.config.session);
        let mut conn: Option<Conn> = None;
        let mut pending = session.handle(self.now(), Event::Start);
        loop {
            while !pending.is_empty() {
                let actions = std::mem::take(&mut pending);
                for a in actions {
                    match a {
                        Action::Dial => match self.dial().await {
                            Ok(c) => {
                                conn = Some(c);
                                pending.extend(session.handle(self.now(), Event::Connected));
                            }
                            Err((reason, detail)) => {
                                self.note_disconnect(reason, &detail);
                                pending.extend(
                                    session.handle(self.now(), Event::Disconnected { reason }),
                                );
                            }
                        },
                        Action::SendHello => {} // sent with the request
                        Action::SendHeartbeat => {
                            if let Some(c) = &conn {
                                let hb = pb::Heartbeat {
                                    sent_unix_ms: unix_ms(SystemTime::now()),
                                };
                                let _ = c.tx.try_send(msg(Out::Heartbeat(hb)));
                            }
                        }
                        Action::Close { .. } => conn = None,
                        Action::Transition { to, reason, .. } => self.on_transition(to, reason),
                    }
                }
            }
            let deadline = session.next_deadline().map(|d| self.start + d);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                m = async {
                    match conn.as_mut() {
                        Some(c) => c.inbound.message().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let events = match m {
                        Ok(Some(m)) => {
                            let Some(mut c) = conn.take() else { continue };
                            let ev = self.on_message(&mut c, m).await;
                            conn = Some(c);
                            ev
                        }
                        Ok(None) => vec![Event::Disconnected { reason: "StreamClosed" }],
                        Err(s) => vec![Event::Disconnected { reason: broken_reason(&s) }],
                    };
                    for ev in events {
                        if let Event::Disconnected { reason } = ev {
                            conn = None;
                            self.note_disconnect(reason, "");
                        }
                        pending.extend(session.handle(self.now(), ev));
                    }
                }
                () = sleep => pending.extend(session.poll(self.now())),
                reason = stopped(&mut stop) => {
                    let actions = session.handle(self.now(), Event::Terminate { reason });
                    for a in actions {
                        if let Action::Transition { to, reason, .. } = a {
                            self.on_transition(to, reason);
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// Reason tokens are `&'static str` in the session; map known ones, lump the rest.
fn static_reason(r: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "GatewayUnreachable",
        "TlsHandshakeFailed",
        "TrustBundleMismatch",
        "ClientIDRejected",
        "DuplicateStream",
        "TooManyStreams",
        "InvalidReplica",
        "UnknownTrustDomain",
        "UnknownIssuer",
        "IdentityNotAllowed",
        "StreamClosed",
        "StreamBroken",
        "StreamStale",
        "NoPeerIdentity",
        "BadAddress",
        "UnsupportedVersion",
        "TrustDomainMismatch",
        "HelloExpected",
        "UnexpectedHello",
        "EmptyMessage",
        "PeerDeleted",
        "NackStorm",
        "ClosedByPeer",
    ];
    KNOWN
        .iter()
        .find(|k| **k == r)
        .copied()
        .unwrap_or("StreamError")
}
